"""Tests for sparserl.envs: family detection, specs, vector stepping, truncation vs termination, seeding."""

import importlib

import numpy as np
import pytest

from sparserl import envs


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


requires_gymnasium_mujoco = pytest.mark.skipif(
    not _importable("gymnasium.envs.mujoco"),
    reason="gymnasium[mujoco] not installed (gymnasium.envs.mujoco needs mujoco and imageio)",
)


def _run_steps(seed_envs: envs.SeedEnvs, num_steps: int) -> list[envs.StepResult]:
    seed_envs.reset()
    return [seed_envs.step(seed_envs.sample_actions()) for _ in range(num_steps)]


@pytest.mark.parametrize(
    "env_id, family",
    [
        ("CartPole-v1", "classic"),
        ("Pendulum-v1", "classic"),
        ("ALE/Pong-v5", "atari"),
        ("MinAtar/Breakout-v1", "minatar"),
        ("dmc:cheetah-run", "dmc"),
        ("dmc:ball_in_cup-catch", "dmc"),
        pytest.param("HalfCheetah-v5", "mujoco", marks=requires_gymnasium_mujoco),
    ],
)
def test_env_family(env_id, family):
    assert envs.env_family(env_id) == family


@pytest.mark.parametrize(
    "env_id",
    ["NoSuchEnv-v0", "dmc:nosuch-task", "dmc:cheetah", "FrozenLake-v1", "ALE/Pong-ram-v5", "HalfCheetah-v4"],
)
def test_unknown_env_is_one_line_naming_the_field(env_id):
    with pytest.raises(envs.UnknownEnvError) as error:
        envs.env_family(env_id)
    assert error.value.field == "env" and "\n" not in error.value.reason and repr(env_id) in error.value.reason


@pytest.mark.parametrize(
    "env_id, shape, dtype, discrete, num_actions, bound, max_steps",
    [
        ("CartPole-v1", (4,), np.float32, True, 2, None, 500),
        ("ALE/Pong-v5", (84, 84, 4), np.uint8, True, 6, None, 27_000),
        ("MinAtar/Breakout-v1", (10, 10, 4), np.float32, True, 3, None, None),
        pytest.param(
            "HalfCheetah-v5", (17,), np.float32, False, 6, 1.0, 1000, marks=requires_gymnasium_mujoco
        ),
        ("dmc:cheetah-run", (17,), np.float32, False, 6, 1.0, 1000),
    ],
)
def test_env_spec(env_id, shape, dtype, discrete, num_actions, bound, max_steps):
    spec = envs.env_spec(env_id)
    assert spec.env_id == env_id
    assert spec.observation_shape == shape
    assert spec.observation_dtype == np.dtype(dtype)
    assert spec.discrete == discrete
    assert spec.num_actions == num_actions
    assert spec.max_episode_steps == max_steps
    if discrete:
        assert spec.action_low is None and spec.action_high is None
    else:
        assert spec.action_low.dtype == np.float32 and spec.action_high.dtype == np.float32
        np.testing.assert_array_equal(spec.action_low, np.full(num_actions, -bound, np.float32))
        np.testing.assert_array_equal(spec.action_high, np.full(num_actions, bound, np.float32))


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "Pendulum-v1", "ALE/Pong-v5", "MinAtar/Breakout-v1", "dmc:walker-walk"]
)
def test_seed_envs_shapes_and_dtypes(env_id):
    seed_envs = envs.SeedEnvs(env_id, seeds=[0, 1, 2], envs_per_seed=2)
    spec = seed_envs.spec
    observation = seed_envs.reset()
    assert observation.shape == (3, 2, *spec.observation_shape)
    assert observation.dtype == spec.observation_dtype
    actions = seed_envs.sample_actions()
    assert actions.shape == ((3, 2) if spec.discrete else (3, 2, spec.num_actions))
    result = seed_envs.step(actions)
    for name in ("observation", "next_observation"):
        array = getattr(result, name)
        assert array.shape == (3, 2, *spec.observation_shape) and array.dtype == spec.observation_dtype
    assert result.reward.shape == (3, 2) and result.reward.dtype == np.float32
    assert result.terminated.dtype == bool and result.truncated.dtype == bool
    assert result.episode_return.dtype == np.float32 and result.episode_length.dtype == np.int32
    seed_envs.close()


def test_atari_frames_are_stacked_on_the_last_axis():
    seed_envs = envs.SeedEnvs("ALE/Pong-v5", seeds=[0])
    observation = seed_envs.reset()[0, 0]
    for frame in range(1, 4):  # after a reset the stack is padded with the reset frame
        np.testing.assert_array_equal(observation[..., frame], observation[..., 0])
    seed_envs.close()


def test_time_limit_is_a_truncation_with_the_final_observation():
    seed_envs = envs.SeedEnvs("Pendulum-v1", seeds=[0])  # Pendulum never terminates; 200-step limit
    results = _run_steps(seed_envs, 200)
    assert not any(result.truncated.any() or result.terminated.any() for result in results[:-1])
    last = results[-1]
    assert last.truncated[0, 0] and not last.terminated[0, 0]
    assert not np.array_equal(last.next_observation, last.observation)
    assert last.episode_length[0, 0] == 200
    seed_envs.close()


def test_pole_falling_is_a_termination():
    seed_envs = envs.SeedEnvs("CartPole-v1", seeds=[0])
    seed_envs.reset()
    for step in range(1, 100):
        result = seed_envs.step(np.zeros((1, 1), np.int64))  # always push left: the pole falls
        if result.terminated[0, 0] or result.truncated[0, 0]:
            break
    assert result.terminated[0, 0] and not result.truncated[0, 0]
    assert result.episode_length[0, 0] == step
    assert not np.array_equal(result.next_observation, result.observation)
    # CartPole terminates once |x| > 2.4 or |theta| > 12 degrees: only the final observation shows it.
    x, theta = result.next_observation[0, 0, 0], result.next_observation[0, 0, 2]
    assert abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
    seed_envs.close()


def test_episode_return_is_the_sum_of_the_episode_rewards():
    seed_envs = envs.SeedEnvs("Acrobot-v1", seeds=[0, 1], envs_per_seed=2)
    returns = np.zeros((2, 2))
    lengths = np.zeros((2, 2), int)
    checked = 0
    for result in _run_steps(seed_envs, 1500):
        returns += result.reward
        lengths += 1
        ended = result.terminated | result.truncated
        assert np.isnan(result.episode_return[~ended]).all()
        assert (result.episode_length[~ended] == 0).all()
        np.testing.assert_allclose(result.episode_return[ended], returns[ended], rtol=1e-6)
        np.testing.assert_array_equal(result.episode_length[ended], lengths[ended])
        np.testing.assert_array_equal(result.next_observation[~ended], result.observation[~ended])
        checked += int(ended.sum())
        returns[ended] = 0.0
        lengths[ended] = 0
    assert checked >= 4
    seed_envs.close()


@pytest.mark.parametrize(
    "env_id, num_steps", [("CartPole-v1", 300), ("MinAtar/Breakout-v1", 300), ("dmc:cheetah-run", 20)]
)
def test_slot_of_a_seed_batch_equals_a_single_seed_run(env_id, num_steps):
    batch = envs.SeedEnvs(env_id, seeds=[5, 6, 7], envs_per_seed=2)
    single = envs.SeedEnvs(env_id, seeds=[6], envs_per_seed=2)
    np.testing.assert_array_equal(batch.reset()[1], single.reset()[0])
    assert not np.array_equal(batch.reset()[0], batch.reset()[1])  # different seeds differ
    for batch_result, single_result in zip(_run_steps(batch, num_steps), _run_steps(single, num_steps)):
        for batch_field, single_field in zip(batch_result, single_result):
            np.testing.assert_array_equal(batch_field[1], single_field[0])
    batch.close()
    single.close()


def test_dmc_time_limit_is_a_truncation():
    seed_envs = envs.SeedEnvs("dmc:cheetah-run", seeds=[0])
    assert seed_envs.spec.max_episode_steps == 1000
    results = _run_steps(seed_envs, 1000)
    assert not any(result.truncated.any() or result.terminated.any() for result in results[:-1])
    last = results[-1]
    assert last.truncated[0, 0] and not last.terminated[0, 0]
    assert last.episode_length[0, 0] == 1000
    np.testing.assert_allclose(
        last.episode_return[0, 0], sum(result.reward[0, 0] for result in results), rtol=1e-5
    )
    assert not np.array_equal(last.next_observation, last.observation)
    seed_envs.close()


def test_dmc_reset_seed_determines_the_initial_state():
    first, second, other = (envs.make_env("dmc:walker-walk") for _ in range(3))
    np.testing.assert_array_equal(first.reset(seed=3)[0], second.reset(seed=3)[0])
    assert not np.array_equal(first.reset(seed=3)[0], other.reset(seed=4)[0])


def test_atari_protocol_live():
    """Machado et al. 2018 / Dopamine (rigl's dqn_atari_*.gin include Dopamine's dqn.gin): sticky actions 0.25,
    at most 108,000 frames per episode, 4 frames per agent step, and losing a life does not end the episode."""
    env = envs.make_env("ALE/Breakout-v5")
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert ale.getInt("max_num_frames_per_episode") == 108_000
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lives = ale.lives()
    assert lives == 5
    for _ in range(3000):
        frame = ale.getEpisodeFrameNumber()
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        assert ale.getEpisodeFrameNumber() - frame == 4
        if ale.lives() < lives:
            break
    assert ale.lives() == lives - 1, "no life lost in 3000 random steps"
    assert not terminated and not truncated
    env.close()


# --- gymnax: JAX-native envs for the compiled loop -----------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, preset", [("gymnax:CartPole-v1", "classic"), ("gymnax:Pendulum-v1", "classic"),
                       ("gymnax:Breakout-MinAtar", "minatar"), ("gymnax:Seaquest-MinAtar", "minatar")]
)
def test_gymnax_family_and_the_preset_it_takes(env_id, preset):
    assert envs.env_family(env_id) == "gymnax"
    assert envs.preset_family(env_id) == preset


@pytest.mark.parametrize("env_id", ["gymnax:NoSuchEnv-v0", "gymnax:", "gymnax:Catch-bsuite", "gymnax:MinAtar/Breakout-v1"])
def test_unknown_gymnax_env_is_one_line_naming_the_field(env_id):
    with pytest.raises(envs.UnknownEnvError) as error:
        envs.env_family(env_id)
    assert error.value.field == "env" and "\n" not in error.value.reason and "gymnax:<id>" in error.value.reason


@pytest.mark.parametrize(
    "env_id, shape, discrete, num_actions, bound, max_steps",
    [
        ("gymnax:CartPole-v1", (4,), True, 2, None, 500),
        ("gymnax:Acrobot-v1", (6,), True, 3, None, 500),
        ("gymnax:MountainCar-v0", (2,), True, 3, None, 200),
        ("gymnax:Pendulum-v1", (3,), False, 1, 2.0, 200),
        ("gymnax:Breakout-MinAtar", (10, 10, 4), True, 3, None, 1000),
        ("gymnax:Freeway-MinAtar", (10, 10, 7), True, 3, None, 2500),
    ],
)
def test_gymnax_env_spec(env_id, shape, discrete, num_actions, bound, max_steps):
    spec = envs.env_spec(env_id)
    assert (spec.env_id, spec.family, spec.observation_shape, spec.observation_dtype) == (env_id, "gymnax", shape, np.float32)
    assert (spec.discrete, spec.num_actions, spec.max_episode_steps) == (discrete, num_actions, max_steps)
    if discrete:
        assert spec.action_low is None and spec.action_high is None
    else:
        np.testing.assert_array_equal(spec.action_low, np.full(num_actions, -bound, np.float32))
        np.testing.assert_array_equal(spec.action_high, np.full(num_actions, bound, np.float32))


def _gymnax_episode(env_id: str, action, max_steps: int):
    """Steps one gymnax env from a reset with a fixed action until its episode ends; the per-step results."""
    import jax

    env = envs.GymnaxEnv(env_id)
    step = jax.jit(env.step)
    observation, state = env.reset(jax.random.key(0))
    results = []
    for index in range(max_steps):
        state, result = step(jax.random.key(index + 1), state, action)
        results.append(jax.tree.map(np.asarray, result))
        if result.terminated or result.truncated:
            return observation, results
        np.testing.assert_array_equal(result.next_observation, result.observation)
        observation = result.observation
    raise AssertionError(f"no episode end within {max_steps} steps")


def test_gymnax_time_limit_is_a_truncation_with_the_final_observation_and_the_true_return():
    _, results = _gymnax_episode("gymnax:Pendulum-v1", np.zeros(1, np.float32), 250)  # never terminates
    last = results[-1]
    assert len(results) == 200 and last.truncated and not last.terminated
    assert not np.array_equal(last.next_observation, last.observation)  # s' is the final one; the env is reset
    assert all(np.isnan(result.episode_return) and result.episode_length == 0 for result in results[:-1])
    assert last.episode_length == 200
    np.testing.assert_allclose(last.episode_return, sum(float(result.reward) for result in results), rtol=1e-5)


def test_gymnax_pole_falling_is_a_termination():
    _, results = _gymnax_episode("gymnax:CartPole-v1", np.int32(0), 100)  # always push left
    last = results[-1]
    assert last.terminated and not last.truncated
    assert last.episode_length == len(results) and last.episode_return == len(results)  # reward 1 per step
    x, theta = last.next_observation[0], last.next_observation[2]
    assert abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
    assert not np.array_equal(last.next_observation, last.observation)
