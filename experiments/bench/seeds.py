"""Row `seeds`: N seeds vmapped vs one seed (N = 1, 4, 8, 16), aggregate steady env steps per second of the host
loop, DQN (sbx's settings) and PPO (SB3's) on CartPole."""

from __future__ import annotations

from sparserl.experiments.bench import training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.experiments.bench.workloads import DQN_SBX_SETTINGS, PPO_SB3_SETTINGS

SEED_COUNTS = (1, 4, 8, 16)


def rows(settings: Settings) -> list[Row]:
    """Aggregate steady env steps/s of N vmapped seeds vs one seed (host loop, CartPole)."""
    rows = []
    for name, agent, overrides, steps in (
        ("DQN CartPole (sbx settings)", "dqn", {**DQN_SBX_SETTINGS, "checkpoint_replay": False},
         settings.pick(8_000, 2_500)),
        ("PPO CartPole (SB3 settings)", "ppo", PPO_SB3_SETTINGS, settings.pick(5 * 2048, 3 * 2048)),
    ):
        rates = {num_seeds: training.steady_rate_in_process(agent, "CartPole-v1", {
            **overrides, **training.quiet_run(steps), "num_seeds": num_seeds},
            from_fraction=0.4) for num_seeds in SEED_COUNTS}
        for num_seeds, rate in rates.items():
            seeds = f"{num_seeds} seed{'s' if num_seeds > 1 else ''}"
            rows.append(Row("seeds vmapped", f"{name}, {seeds} vs 1", rate, rates[1], "env steps/s",
                            rate / rates[1], f"{seeds} / 1 seed (aggregate)"))
    return rows
