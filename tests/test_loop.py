"""sparserl.loop: the schedule of rows, evaluations and checkpoints both loops keep, and the off-policy step's
envs per seed (the loops run end to end in test_runner, test_compiled_runner, test_train and test_resume)."""

import ml_collections
import pytest

from sparserl import loop
from sparserl.configs.base import off_policy_updates
from sparserl.errors import ConfigError


def _config(**fields):
    config = ml_collections.ConfigDict(dict(steps=1000, log_every=300, eval_every=500, checkpoint_every=1000,
                                            num_envs=1, train_every=1, gradient_steps=1))
    config.update(fields)
    return config


def test_rows_end_where_the_run_logs_evaluates_or_checkpoints():
    """Log every 300, eval every 500, checkpoint at the end: rows at 300, 500, 600, 900, 1000 (steps of one env)."""
    schedule = loop.Schedule(_config(), granularity=1)
    rows = list(schedule.rows(0))
    assert rows == [(0, 300), (300, 500), (500, 600), (600, 900), (900, 1000)]
    assert [schedule.evaluates(*row) for row in rows] == [False, True, False, False, True]
    assert [schedule.checkpoints(*row) for row in rows] == [False, False, False, False, True]
    assert list(schedule.rows(500)) == rows[2:]  # a resume at a row's end


def test_rows_end_on_whole_iterations_and_the_last_may_pass_the_end():
    """Rollouts of 128 steps: the first rollout end that reaches 300 is 384, 500 -> 512, 600 -> 640, 900 -> 1024,
    which also passes `steps` (1000): the last row, which evaluates and checkpoints."""
    schedule = loop.Schedule(_config(), granularity=128)
    rows = list(schedule.rows(0))
    assert rows == [(0, 384), (384, 512), (512, 640), (640, 1024)]
    assert [schedule.evaluates(*row) for row in rows] == [False, True, False, True]
    assert schedule.is_final(1024) and not schedule.is_final(640)


@pytest.mark.parametrize("num_envs, train_every, gradient_steps, updates, learning_env_steps", [
    (1, 4, 1, 1, [0, 4, 8, 12]),    # one env: a learning step every 4 env steps
    (2, 4, 1, 1, [0, 4, 8, 12]),    # 2 envs, every 4 env steps: every other step of the envs
    (4, 1, 2, 8, [0, 4, 8, 12]),    # 4 envs, every env step, 2 updates each: 8 updates per step of the envs
    (10, 10, 1, 1, list(range(0, 20, 10))),  # PureJaxRL's DQN: 10 envs, an update every 10 env steps
])
def test_envs_per_seed_keep_the_replay_ratio_in_env_steps(num_envs, train_every, gradient_steps, updates,
                                                         learning_env_steps):
    config = _config(num_envs=num_envs, train_every=train_every, gradient_steps=gradient_steps)
    assert loop.updates_per_learning_step(config) == updates
    steps = range(0, 16 if num_envs < 10 else 20, num_envs)  # the first env step of every step of the envs
    assert [step for step in steps if loop.is_learning_step(step, 0, config)] == learning_env_steps
    assert not loop.is_learning_step(learning_env_steps[-1], learning_env_steps[-1] + 1, config)  # before learn_from
    # Updates per env step (the replay ratio) = gradient_steps / train_every, whatever num_envs is.
    learning_steps = sum(loop.is_learning_step(step, 0, config) for step in range(0, 40, num_envs))
    assert learning_steps * updates == 40 * gradient_steps // train_every


@pytest.mark.parametrize("num_envs, train_every", [(3, 4), (4, 6), (0, 1)])
def test_envs_per_seed_that_split_the_replay_ratio_unevenly_are_refused(num_envs, train_every):
    with pytest.raises(ConfigError) as error:
        off_policy_updates(_config(num_envs=num_envs, train_every=train_every, learning_starts=0))
    assert error.value.field == "num_envs"
