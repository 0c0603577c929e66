"""sbx (stable-baselines-jax) on a bench workload, in a child process of the bench:
`python -m sparserl.experiments.bench.sbx_peer WORKLOAD STEPS [--exit_at_first_step]`.

It trains sbx's algorithm on our wrapped env (`sparserl.envs.make_env`) with the workload's settings, timing every
env step through a `gymnasium.Wrapper`, and prints one line, `workloads.CHILD_RESULT_PREFIX` and its figures as JSON:
`first_step_wall_time` (`time.time()` at the first env step) and `steady_rate` (env steps per second over the second
half of the steps). With `--exit_at_first_step` it prints at the first env step and exits there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import gymnasium
import sbx

from sparserl import envs
from sparserl.experiments.bench.workloads import CHILD_RESULT_PREFIX, WORKLOADS


class TimedSteps(gymnasium.Wrapper):
    """Records the time of every env step; with `exit_at_first_step`, prints the result at the first and exits."""

    def __init__(self, env: gymnasium.Env, exit_at_first_step: bool):
        super().__init__(env)
        self.exit_at_first_step = exit_at_first_step
        self.first_step_wall_time: float | None = None
        self.times: list[float] = []

    def step(self, action):
        result = self.env.step(action)
        if self.first_step_wall_time is None:
            self.first_step_wall_time = time.time()
        self.times.append(time.perf_counter())
        if self.exit_at_first_step:
            print_result({"first_step_wall_time": self.first_step_wall_time})
            os._exit(0)
        return result

    def steady_rate(self) -> float:
        """Env steps per second from half of the steps to the last one."""
        start = len(self.times) // 2
        return (len(self.times) - 1 - start) / (self.times[-1] - self.times[start])


def print_result(result: dict) -> None:
    print(CHILD_RESULT_PREFIX + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("steps", type=int)
    parser.add_argument("--exit_at_first_step", action="store_true")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    env = TimedSteps(envs.make_env(workload.env_id), args.exit_at_first_step)
    kwargs = dict(workload.peer_kwargs)
    policy = kwargs.pop("policy", "MlpPolicy")
    model = getattr(sbx, workload.peer_algorithm)(policy, env, seed=0, verbose=0, **kwargs)
    model.learn(total_timesteps=args.steps)
    print_result({"first_step_wall_time": env.first_step_wall_time, "steady_rate": env.steady_rate()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
