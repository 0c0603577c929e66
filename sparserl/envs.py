"""Environment factory: one id in, one fully wrapped Gymnasium env out.

Families (docs/design.md section 5):

- ``classic``: Gymnasium classic control (``CartPole-v1``, ``Acrobot-v1``, ``Pendulum-v1`` ...), as
  registered; ``TimeLimit`` reports truncation.
- ``atari``: ``ALE/<Game>-v5`` under the protocol of Machado et al. (2018), "Revisiting the Arcade
  Learning Environment", as used by Dopamine (Castro et al., 2018): sticky actions with probability
  0.25, no no-op starts, the whole game is one episode (no termination on life loss), at most 108,000
  frames (27,000 agent steps) per episode, frame skip 4 with max-pooling of the last two frames,
  84x84 grayscale, 4 stacked frames, the minimal action set. Frames stay ``uint8``, HWC.
- ``minatar``: ``MinAtar/<Game>-v1`` from the ``minatar`` package (Young & Tian, 2019), minimal
  action set, sticky actions 0.1 as in the package; boolean 10x10xC frames become ``float32``
  (not ``uint8``: the shared CNN divides ``uint8`` input by 255, which is meant for Atari pixels).
- ``mujoco``: Gymnasium MuJoCo v5 tasks (``HalfCheetah-v5`` ...), ``float32`` observations.
- ``dmc``: ``dmc:<domain>-<task>`` from the DeepMind Control Suite (Tassa et al., 2018) through
  :class:`DmControlEnv`, an adapter over its ``dm_env`` interface.
- ``gymnax``: ``gymnax:<id>``, JAX-native ports (Lange, 2022) of classic control (``CartPole-v1``,
  ``Acrobot-v1``, ``MountainCar-v0``, ``Pendulum-v1``) and MinAtar (``Breakout-MinAtar`` ...), stepped
  inside the compiled training loop (``sparserl.compiled_runner``) through :class:`GymnaxEnv`, not
  as Gymnasium envs. gymnax's time limit is a truncation, apart from termination.

Every env's outermost wrapper is ``RecordEpisodeStatistics``, so the episode returns reported by
:class:`SeedEnvs` are the true undiscounted returns (for Atari: the whole game, raw rewards).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pickle
import warnings
from typing import Any, NamedTuple, Sequence

import gymnasium
import numpy as np
from gymnasium.wrappers import (
    AtariPreprocessing,
    FrameStackObservation,
    RecordEpisodeStatistics,
)

from sparserl.errors import ConfigError

FAMILIES = ("classic", "atari", "minatar", "mujoco", "dmc", "gymnax")

_DMC_PREFIX = "dmc:"
_DMC_DEFAULT_STEP_LIMIT = 1000

GYMNAX_PREFIX = "gymnax:"
# gymnax id -> the family of its Gymnasium counterpart, whose config preset it takes.
GYMNAX_IDS = {
    "CartPole-v1": "classic",
    "Acrobot-v1": "classic",
    "MountainCar-v0": "classic",
    "Pendulum-v1": "classic",
    "Breakout-MinAtar": "minatar",
    "Asterix-MinAtar": "minatar",
    "Freeway-MinAtar": "minatar",
    "SpaceInvaders-MinAtar": "minatar",
    "Seaquest-MinAtar": "minatar",
}

# Machado et al. (2018) / Dopamine Atari protocol.
ATARI_STICKY_ACTION_PROBABILITY = 0.25
ATARI_MAX_FRAMES_PER_EPISODE = 108_000
ATARI_FRAME_SKIP = 4
ATARI_SCREEN_SIZE = 84
ATARI_FRAME_STACK = 4


class UnknownEnvError(ConfigError):
    """An `env` that names no supported environment (a user mistake, docs/design.md contract 7)."""

    def __init__(self, reason: str):
        super().__init__("env", reason)


def _unknown_env(env_id: str) -> UnknownEnvError:
    return UnknownEnvError(
        f"unknown environment {env_id!r}; use a Gymnasium classic-control id "
        "(e.g. CartPole-v1), ALE/<Game>-v5, MinAtar/<Game>-v1, a MuJoCo v5 id "
        "(e.g. HalfCheetah-v5), dmc:<domain>-<task> or gymnax:<id> "
        f"({', '.join(GYMNAX_IDS)})"
    )


def _missing_extra(env_id: str, extra: str) -> UnknownEnvError:
    return UnknownEnvError(
        f"{env_id!r} needs the optional dependencies: pip install sparserl[{extra}]"
    )


def _register_ale() -> None:
    import ale_py

    gymnasium.register_envs(ale_py)


def _register_minatar(env_id: str) -> None:
    """MinAtar registers its Gymnasium ids only when asked to (``minatar.gym.register_envs``)."""
    if "MinAtar/Breakout-v1" in gymnasium.registry:
        return
    try:
        import minatar.gym
    except ImportError as error:
        raise _missing_extra(env_id, "minatar") from error
    minatar.gym.register_envs()


def _dm_control_suite():
    """dm_control's suite, imported without the warning its renderer import gives on a machine with no display."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing")
        from dm_control import suite
    return suite


def _dmc_domain_and_task(env_id: str) -> tuple[str, str]:
    """``dmc:ball_in_cup-catch`` -> ``('ball_in_cup', 'catch')``; domains have '_' but never '-'."""
    domain, separator, task = env_id[len(_DMC_PREFIX):].partition("-")
    if not separator:
        raise _unknown_env(env_id)
    try:
        suite = _dm_control_suite()
    except ImportError as error:
        raise _missing_extra(env_id, "mujoco") from error
    if (domain, task) not in suite.ALL_TASKS:
        raise _unknown_env(env_id)
    return domain, task


def env_family(env_id: str) -> str:
    """The family of ``env_id`` (one of :data:`FAMILIES`), without building the env.

    Raises:
      UnknownEnvError: the id is not registered, or belongs to a family sparserl does not wrap
        (Box2D, toy text, Atari RAM observations, MuJoCo versions other than v5), or its optional
        dependencies are not installed.
    """
    if env_id.startswith(_DMC_PREFIX):
        _dmc_domain_and_task(env_id)
        return "dmc"
    if env_id.startswith(GYMNAX_PREFIX):
        if env_id[len(GYMNAX_PREFIX):] not in GYMNAX_IDS:
            raise _unknown_env(env_id)
        return "gymnax"
    if env_id.startswith("ALE/"):
        _register_ale()
    elif env_id.startswith("MinAtar/"):
        _register_minatar(env_id)
    registered = gymnasium.registry.get(env_id)
    entry_point = registered.entry_point if registered is not None else None
    if not isinstance(entry_point, str):
        raise _unknown_env(env_id)
    if entry_point.startswith("gymnasium.envs.classic_control."):
        return "classic"
    if entry_point.startswith("gymnasium.envs.mujoco.") and registered.version == 5:
        try:
            importlib.import_module("gymnasium.envs.mujoco")  # needs gymnasium[mujoco]: mujoco, imageio
        except ImportError as error:
            raise _missing_extra(env_id, "mujoco") from error
        return "mujoco"
    if (
        registered.namespace == "ALE"
        and registered.version == 5
        and registered.kwargs.get("obs_type", "rgb") == "rgb"
    ):
        return "atari"
    if entry_point.startswith("minatar."):
        return "minatar"
    raise _unknown_env(env_id)


def preset_family(env_id: str) -> str:
    """The family whose config preset ``env_id`` takes: a gymnax port takes its Gymnasium counterpart's."""
    family = env_family(env_id)
    return GYMNAX_IDS[env_id[len(GYMNAX_PREFIX):]] if family == "gymnax" else family


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What agents and runners need to know about an env, read from its wrapped spaces."""

    env_id: str
    family: str
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    discrete: bool
    num_actions: int
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    max_episode_steps: int | None


class DmControlEnv(gymnasium.Env):
    """A Gymnasium view of a DeepMind Control Suite task (its ``dm_env`` interface).

    Observation: the observation dict's values, flattened and concatenated in the dict's own order,
    as ``float32``. Action: a ``float32`` Box from the action spec's bounds. A last time step with
    discount 0 is a termination; with a non-zero discount it is a time-limit truncation
    (the dm_env convention, Tassa et al., 2018). ``reset(seed=s)`` reseeds the task's random state,
    which draws every initial state.
    """

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str):
        self._env = _dm_control_suite().load(domain, task)
        size = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        action_spec = self._env.action_spec()
        self.action_space = gymnasium.spaces.Box(
            np.broadcast_to(action_spec.minimum, action_spec.shape).astype(np.float32),
            np.broadcast_to(action_spec.maximum, action_spec.shape).astype(np.float32),
            dtype=np.float32,
        )
        step_limit = getattr(self._env, "_step_limit", _DMC_DEFAULT_STEP_LIMIT)
        self.max_episode_steps = int(step_limit) if math.isfinite(step_limit) else None

    @staticmethod
    def _flatten(observation) -> np.ndarray:
        return np.concatenate(
            [np.asarray(value, dtype=np.float32).ravel() for value in observation.values()]
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        time_step = self._env.reset()
        return self._flatten(time_step.observation), {}

    def step(self, action):
        time_step = self._env.step(action)
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0.0)
        truncated = bool(last and not terminated)
        return self._flatten(time_step.observation), float(time_step.reward), terminated, truncated, {}

    def close(self):
        self._env.close()


class _StackLast(gymnasium.ObservationWrapper):
    """(stack, H, W) frames from ``FrameStackObservation`` -> (H, W, stack) for NHWC convolutions."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gymnasium.spaces.Box(
            np.moveaxis(space.low, 0, -1), np.moveaxis(space.high, 0, -1), dtype=space.dtype
        )

    def observation(self, observation):
        return np.moveaxis(observation, 0, -1)


def _make_atari(env_id: str) -> gymnasium.Env:
    """Machado et al. (2018) / Dopamine protocol (module docstring); ALE reports 108k-frame truncation."""
    env = gymnasium.make(
        env_id,
        frameskip=1,
        repeat_action_probability=ATARI_STICKY_ACTION_PROBABILITY,
        max_num_frames_per_episode=ATARI_MAX_FRAMES_PER_EPISODE,
    )
    env = AtariPreprocessing(
        env,
        frame_skip=ATARI_FRAME_SKIP,
        noop_max=0,
        terminal_on_life_loss=False,
        screen_size=ATARI_SCREEN_SIZE,
    )
    return _StackLast(FrameStackObservation(env, ATARI_FRAME_STACK))


class _Float32Observation(gymnasium.ObservationWrapper):
    """Casts observations (MuJoCo float64, MinAtar bool) and their Box bounds to float32."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gymnasium.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation):
        return observation.astype(np.float32)


def _make_float32(env_id: str) -> gymnasium.Env:
    env = gymnasium.make(env_id)
    if env.observation_space.dtype != np.float32:
        env = _Float32Observation(env)
    return env


def _make_dmc(env_id: str) -> gymnasium.Env:
    return DmControlEnv(*_dmc_domain_and_task(env_id))


_BUILDERS = {
    "classic": _make_float32,
    "atari": _make_atari,
    "minatar": _make_float32,
    "mujoco": _make_float32,
    "dmc": _make_dmc,
}


def make_env(env_id: str) -> gymnasium.Env:
    """One env of ``env_id``, wrapped for its family, ``RecordEpisodeStatistics`` outermost."""
    return RecordEpisodeStatistics(_BUILDERS[env_family(env_id)](env_id))


def _max_episode_steps(env_id: str, family: str, env: gymnasium.Env) -> int | None:
    if family == "atari":
        return ATARI_MAX_FRAMES_PER_EPISODE // ATARI_FRAME_SKIP
    if family == "dmc":
        return env.unwrapped.max_episode_steps
    return gymnasium.registry[env_id].max_episode_steps


def _spec_of(env_id: str, env: gymnasium.Env) -> EnvSpec:
    family = env_family(env_id)
    action_space = env.action_space
    discrete = isinstance(action_space, gymnasium.spaces.Discrete)
    return EnvSpec(
        env_id=env_id,
        family=family,
        observation_shape=tuple(env.observation_space.shape),
        observation_dtype=np.dtype(env.observation_space.dtype),
        discrete=discrete,
        num_actions=int(action_space.n) if discrete else int(np.prod(action_space.shape)),
        action_low=None if discrete else action_space.low.astype(np.float32),
        action_high=None if discrete else action_space.high.astype(np.float32),
        max_episode_steps=_max_episode_steps(env_id, family, env),
    )


def env_spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` of ``env_id`` (builds one env to read its spaces, then closes it)."""
    if env_family(env_id) == "gymnax":
        return GymnaxEnv(env_id).spec
    env = make_env(env_id)
    try:
        return _spec_of(env_id, env)
    finally:
        env.close()


def slot_seed(seed: int, env_index: int) -> int:
    """The seed of env ``env_index`` of run seed ``seed``: a function of the pair only."""
    return int(np.random.SeedSequence((seed, env_index)).generate_state(1)[0])


class StepResult(NamedTuple):
    """One vector step, every array with leading axes ``[num_seeds, envs_per_seed]``."""

    observation: np.ndarray
    """The observation to act on next (already the reset observation where an episode ended)."""
    next_observation: np.ndarray
    """The true s' of this transition: the final observation where an episode ended."""
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode_return: np.ndarray
    """True undiscounted return of the episode that ended at this step, NaN elsewhere."""
    episode_length: np.ndarray
    """Length of the episode that ended at this step, 0 elsewhere."""


class SeedEnvs:
    """``num_seeds x envs_per_seed`` envs stepped as one vector (docs/design.md contract 1).

    A ``SyncVectorEnv`` (faster than ``AsyncVectorEnv`` on few cores, docs/design.md section 6) with
    same-step autoreset set explicitly: an env whose episode ends is reset within the same
    ``step``, and its final observation is returned separately as ``next_observation``.

    The env at (seed ``s``, index ``e``) and its action space are seeded with ``slot_seed(s, e)``
    only, so slot ``i`` of ``SeedEnvs([5, 6, 7])`` behaves exactly like ``SeedEnvs([6])``.
    """

    def __init__(self, env_id: str, seeds: Sequence[int], envs_per_seed: int = 1):
        if len(seeds) == 0 or envs_per_seed < 1:
            raise ValueError("SeedEnvs needs at least one seed and one env per seed")
        self._batch_shape = (len(seeds), envs_per_seed)
        self._slot_seeds = [slot_seed(int(s), e) for s in seeds for e in range(envs_per_seed)]
        self._envs = gymnasium.vector.SyncVectorEnv(
            [lambda: make_env(env_id)] * len(self._slot_seeds),
            autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
        )
        for env, seed in zip(self._envs.envs, self._slot_seeds):
            env.action_space.seed(seed)
        self.spec = _spec_of(env_id, self._envs.envs[0])
        self._action_shape = () if self.spec.discrete else (self.spec.num_actions,)

    def _unflatten(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self._batch_shape + array.shape[1:])

    def reset(self) -> np.ndarray:
        """Seeds and resets every env; observations ``[num_seeds, envs_per_seed, *obs_shape]``."""
        observation, _ = self._envs.reset(seed=self._slot_seeds)
        return self._unflatten(observation)

    def sample_actions(self) -> np.ndarray:
        """Uniform random actions from each env's own (slot-seeded) action space."""
        actions = np.stack([env.action_space.sample() for env in self._envs.envs])
        return self._unflatten(actions)

    def step(self, actions: np.ndarray) -> StepResult:
        """Steps every env with ``actions`` of shape ``[num_seeds, envs_per_seed(, act_dim)]``."""
        flat_actions = np.asarray(actions).reshape((-1,) + self._action_shape)
        flat_actions = flat_actions.astype(np.int64 if self.spec.discrete else np.float32)
        observation, reward, terminated, truncated, info = self._envs.step(flat_actions)
        next_observation = observation.copy()
        episode_return = np.full(len(self._slot_seeds), np.nan, dtype=np.float32)
        episode_length = np.zeros(len(self._slot_seeds), dtype=np.int32)
        if "final_obs" in info:
            for index in np.flatnonzero(info["_final_obs"]):
                next_observation[index] = info["final_obs"][index]
            final_info = info["final_info"]
            ended = final_info["_episode"]
            episode_return[ended] = final_info["episode"]["r"][ended]
            episode_length[ended] = final_info["episode"]["l"][ended]
        return StepResult(
            observation=self._unflatten(observation),
            next_observation=self._unflatten(next_observation),
            reward=self._unflatten(reward.astype(np.float32)),
            terminated=self._unflatten(terminated.astype(bool)),
            truncated=self._unflatten(truncated.astype(bool)),
            episode_return=self._unflatten(episode_return),
            episode_length=self._unflatten(episode_length),
        )

    def seed_state(self, index: int) -> bytes | None:
        """The pickled envs of seed ``index`` (for a checkpoint), or None where an env cannot be pickled."""
        per_seed = self._batch_shape[1]
        try:
            return pickle.dumps(self._envs.envs[index * per_seed:(index + 1) * per_seed])
        except Exception:  # e.g. emulator or physics handles without pickle support
            return None

    def restore_seed_state(self, index: int, state: bytes) -> None:
        """Puts back the envs of seed ``index`` saved by ``seed_state``, mid-episode."""
        per_seed = self._batch_shape[1]
        self._envs.envs[index * per_seed:(index + 1) * per_seed] = pickle.loads(state)

    def close(self) -> None:
        self._envs.close()


class GymnaxEnvState(NamedTuple):
    """One gymnax env's state and the return and length of its current episode so far."""

    env_state: Any
    episode_return: Any
    episode_length: Any


class GymnaxStep(NamedTuple):
    """One step of one gymnax env (jax arrays); the fields mean what :class:`StepResult`'s do."""

    observation: Any
    next_observation: Any
    reward: Any
    terminated: Any
    truncated: Any
    episode_return: Any
    episode_length: Any


class GymnaxEnv:
    """One ``gymnax:<id>`` env as pure, jittable ``reset`` and ``step`` (vmap them for many envs).

    gymnax 1.x ``step`` resets an env whose episode ended (terminated, or truncated by
    ``max_steps_in_episode``) within the same call and returns the final observation as
    ``info["final_observation"]``: that is the transition's s' here, as in :class:`SeedEnvs`.
    Observations are ``float32``; discrete actions are ``int32``.
    """

    def __init__(self, env_id: str):
        import gymnax

        if env_family(env_id) != "gymnax":
            raise _unknown_env(env_id)
        self._env, self._params = gymnax.make(env_id[len(GYMNAX_PREFIX):])
        observation_space = self._env.observation_space(self._params)
        action_space = self._env.action_space(self._params)
        discrete = not hasattr(action_space, "low")
        action_shape = tuple(action_space.shape)
        self.spec = EnvSpec(
            env_id=env_id,
            family="gymnax",
            observation_shape=tuple(observation_space.shape),
            observation_dtype=np.dtype(np.float32),
            discrete=discrete,
            num_actions=int(action_space.n) if discrete else int(np.prod(action_shape)),
            action_low=None if discrete else np.broadcast_to(action_space.low, action_shape).astype(np.float32),
            action_high=None if discrete else np.broadcast_to(action_space.high, action_shape).astype(np.float32),
            max_episode_steps=int(self._params.max_steps_in_episode),
        )

    def reset(self, key) -> tuple[Any, GymnaxEnvState]:
        """A fresh episode: (observation, state)."""
        import jax.numpy as jnp

        observation, env_state = self._env.reset(key, self._params)
        zero = jnp.zeros((), jnp.float32)
        return observation.astype(jnp.float32), GymnaxEnvState(env_state, zero, jnp.zeros((), jnp.int32))

    def step(self, key, state: GymnaxEnvState, action) -> tuple[GymnaxEnvState, GymnaxStep]:
        """One step; where the episode ended the env is already reset and its true return reported."""
        import jax.numpy as jnp

        observation, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, self._params
        )
        reward = jnp.asarray(reward, jnp.float32)
        ended = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        result = GymnaxStep(
            observation=observation.astype(jnp.float32),
            next_observation=info["final_observation"].astype(jnp.float32),
            reward=reward,
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool) & ~jnp.asarray(terminated, bool),
            episode_return=jnp.where(ended, episode_return, jnp.nan),
            episode_length=jnp.where(ended, episode_length, 0),
        )
        next_state = GymnaxEnvState(
            env_state, jnp.where(ended, 0.0, episode_return), jnp.where(ended, 0, episode_length)
        )
        return next_state, result
