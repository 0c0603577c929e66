"""Schedules of sparse training, jittable (step may be a traced integer)."""

import jax.numpy as jnp


def cosine_drop_fraction(step, initial_fraction: float, end_step: int):
    """SET/RigL drop fraction f_t = f0 * 0.5 * (1 + cos(pi * min(t, T_end) / T_end)) (Evci et al. 2020, eq. 1)."""
    progress = jnp.minimum(step, end_step) / end_step
    return initial_fraction * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def cubic_sparsity(step, final_sparsity, start_step: int, end_step: int):
    """Gradual pruning s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3), clipped to [t0, t1] (Zhu & Gupta 2017, eq. 1)."""
    progress = jnp.clip((step - start_step) / max(end_step - start_step, 1), 0.0, 1.0)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


def is_periodic_step(step, period: int, start_step: int, end_step: int):
    """True at start + k * period for start < t < end (the first step changes nothing: it is the init)."""
    return (step > start_step) & (step < end_step) & ((step - start_step) % period == 0)


def is_pruning_step(step, frequency: int, start_step: int, end_step: int):
    """True every `frequency` steps within [t0, t1], and at t1 itself so the final sparsity is reached."""
    in_window = (step >= start_step) & (step <= end_step)
    return in_window & (((step - start_step) % frequency == 0) | (step == end_step))
