"""Row `envs_per_seed`: PPO's rollout collected by 4 or 8 envs per seed (one `gymnasium.vector.SyncVectorEnv`, one
jitted `act` call per vector step) vs one env, same rollout size, steady env steps per second."""

from __future__ import annotations

from sparserl.experiments.bench import training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.experiments.bench.workloads import PPO_SB3_SETTINGS

ROLLOUT = 2048  # env steps per rollout, whatever the envs per seed


def rows(settings: Settings) -> list[Row]:
    """PPO CartPole with the 2048-transition rollout collected by E envs per seed vs one env."""
    rates = {num_envs: training.steady_rate_in_process("ppo", "CartPole-v1", {
        **PPO_SB3_SETTINGS, **training.quiet_run(settings.pick(6 * ROLLOUT, 3 * ROLLOUT)), "num_envs": num_envs,
        "rollout_steps": ROLLOUT // num_envs}, from_fraction=0.34) for num_envs in (1, 4, 8)}
    return [Row("envs per seed", f"PPO CartPole, {num_envs} envs x {ROLLOUT // num_envs} steps vs 1 x {ROLLOUT}", rate,
                rates[1], "env steps/s", rate / rates[1], f"{num_envs} envs / 1 env") for num_envs, rate in rates.items()]
