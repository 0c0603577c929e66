"""The batches the loops hand to agents: `Transition` (off-policy, from the replay) and `Rollout` (on-policy).

Both are NamedTuples of arrays. The loops (`sparserl.runner`, `sparserl.compiled_runner`) build them and the
agents read them, so they live here, in a module no agent and no loop owns (docs/design.md section 2).
"""

from typing import Any, NamedTuple


class Transition(NamedTuple):
    """One step (s, a, r, s', terminated). For a time-limit truncation, s' is the final observation and terminated
    is False, so a TD target bootstraps through it (docs/design.md section 4)."""

    observation: Any
    action: Any
    reward: Any
    next_observation: Any
    terminated: Any


class Rollout(NamedTuple):
    """One on-policy rollout, arrays [rollout_steps, envs_per_seed, ...] (the loops add a leading seed axis).

    `next_observation[t]` is the true s' of step t: the final observation
    where an episode ended (terminated or truncated), else `observation[t + 1]`.
    """

    observation: Any
    action: Any
    reward: Any
    terminated: Any
    truncated: Any
    next_observation: Any
