"""experiments.parameters: parameter counts and the parameter-matched width multiplier, against hand counts."""

import math

from sparserl.configs import dqn as dqn_config, sac as sac_config
from sparserl.experiments import parameters
from sparserl import envs


def test_matched_width_multiplier_is_the_widest_dense_net_within_the_sparse_count():
    config = dqn_config.get_config()  # CartPole: 4 inputs, 2x512 hidden, 2 actions
    config.sparse.method, config.sparse.sparsity, config.sparse.distribution = "rigl", 0.9, "uniform"
    spec = envs.env_spec("CartPole-v1")
    # Uniform 90%: each kernel keeps n - floor(0.9 n) weights; biases (512 + 512 + 2) are never masked.
    kept = sum(n - math.floor(0.9 * n) for n in (4 * 512, 512 * 512, 512 * 2)) + 1026
    assert parameters.sparse_parameters(config, spec) == kept == 27549
    # A dense net of width k has 4k + k + k^2 + k + 2k + 2 = k^2 + 8k + 2 parameters: the widest within 27549.
    width = max(k for k in range(1, 513) if k * k + 8 * k + 2 <= kept)
    assert width == 162
    assert parameters.matched_width_multiplier(config, spec) == (162 / 512, 162 ** 2 + 8 * 162 + 2, kept)


def test_dense_parameters_count_every_trained_network_of_sac():
    config = sac_config.get_config()  # Pendulum: 3 observations, 1 action
    config.network.hidden_sizes = (8, 8)
    actor = (3 * 8 + 8) + (8 * 8 + 8) + (8 * 2 + 2)  # mean and log-std
    critic = (4 * 8 + 8) + (8 * 8 + 8) + (8 + 1)  # one of the twin critics on (observation, action)
    assert parameters.dense_parameters(config, envs.env_spec("Pendulum-v1")) == actor + 2 * critic
