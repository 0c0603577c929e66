"""What every agent's config holds once: the run, the `sparse` block and the `redo` block (docs/design.md section 5).

Each agent's `configs/<agent>.py` builds on `get_config`, adds its own
fields, and keeps a `PRESETS` table: per environment family, the flattened
fields that differ from its defaults. `get_config(preset)` of an agent
config applies one with `with_preset` (ml_collections'
`update_from_flattened_dict`), so `configs/dqn.py:atari` means what
`ml_collections.config_flags` makes of it. Presets are deltas from the bare
defaults, one at a time, never stacked.
"""

from typing import Mapping

import flax.linen as nn
import jax
import ml_collections
from ml_collections import config_dict

from sparserl import networks
from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, condensed, condensed_native
from sparserl.sparse.config import read_settings
from sparserl.sparse.structure import is_concrete
from sparserl.sparse.topology import get_topology

MEMBER_LOOPS = ("auto", "vmap", "map")  # the values of `member_loop`
# The values of `redo.remedy` (sparserl/remedies.py) and each one's period in gradient steps when `redo.period` is
# unset: ReDo's (Sokar et al. 2023), which ReGraMa keeps (Liu et al. 2025); Nikishin et al. 2022's resets.
REMEDY_PERIODS = {"redo": 1_000, "regrama": 1_000, "shrink_perturb": 20_000, "reset": 20_000}
REMEDIES = tuple(REMEDY_PERIODS)


def remedy_period(redo: ml_collections.ConfigDict) -> int:
    """The remedy's period in gradient steps: `redo.period`, or the remedy's `REMEDY_PERIODS` entry when unset."""
    return redo.period if redo.period is not None else REMEDY_PERIODS[redo.remedy]


def get_config(*, agent: str, env: str, steps: int, eval_every: int, log_every: int, checkpoint_every: int,
               per_network_sparsity: bool) -> ml_collections.ConfigDict:
    """The run, `sparse` and `redo` fields shared by every agent; the arguments are what differs between agents.

    `per_network_sparsity` adds `sparse.actor_sparsity` and `sparse.critic_sparsity` (agents with an actor and a
    critic). The per-method schedule blocks come from `add_schedules`.
    """
    config = ml_collections.ConfigDict()
    config.agent = agent  # a name from sparserl.agent_contract.AGENTS: agents/<agent>.py trains it
    config.env = env  # the environment id; its family chooses the preset (sparserl.envs.preset_family)
    config.steps = steps  # environment steps per seed
    config.seed = 0  # the first seed; a run trains seed, seed + 1, ...
    config.num_seeds = 1  # seeds trained side by side in one process (a vmap axis)
    config.eval_every = eval_every  # environment steps between evaluations
    config.eval_episodes = 10  # episodes per evaluation
    config.log_every = log_every  # environment steps between rows of metrics.csv
    config.checkpoint_every = checkpoint_every  # environment steps between checkpoints (and one at the end)
    config.checkpoints_to_keep = 2  # the newest checkpoints kept per seed
    # How a compiled run (gymnax envs) runs its seeds and sweep levels: "vmap" (side by side), "map" (one after
    # another) or "auto" (map for DQN and SAC, vmap for PPO: measured, sparserl.compiled_runner.member_loop).
    config.member_loop = "auto"

    config.sparse = ml_collections.ConfigDict()
    # A name from sparserl.sparse.topology.TOPOLOGIES; the entry point makes it "dense" when every sparsity is 0.
    config.sparse.method = "rigl"
    config.sparse.sparsity = 0.0  # fraction of zero weights over the masked layers, in [0, 1)
    if per_network_sparsity:
        config.sparse.actor_sparsity = config_dict.placeholder(float)  # the actor's, when set; else sparsity
        config.sparse.critic_sparsity = config_dict.placeholder(float)  # the critic's, when set; else sparsity
    config.sparse.distribution = "erk"  # per-layer sparsities: a name from sparserl.sparse.DISTRIBUTIONS
    # unstructured, fan_in (every neuron keeps the same number of inputs) or nm:N:M (N of every M consecutive
    # inputs; fixes the sparsity at 1 - N/M): kept by every method (sparserl.sparse.structure).
    config.sparse.structure = "unstructured"
    config.sparse.dense_first_layer = False  # keep every sub-network's first layer dense (e.g. q1/dense_0, q2/dense_0)
    config.sparse.dense_last_layer = False  # keep every sub-network's last layer dense (e.g. q1/output, q2/output)
    config.sparse.dense_layers = ()  # more layer paths kept dense: fnmatch patterns such as "q*/output"
    # Init at each unit's sparse fan-in (rigl's gins: init_masks.fixed_sparse_init = True); False keeps the
    # masked dense init.
    config.sparse.sparse_init_rescale = True
    # Kernels: "masked" (dense matmuls on the masked weights), "condensed" (XLA gather kernels for fan_in masks,
    # sparserl/sparse/condensed.py), "native" (C++ forward and backward passes on the CPU, built with g++ on first
    # use, sparserl/sparse/condensed_native.py) or "auto" (native wherever it can run: fan_in masks on a CPU with
    # g++; masked elsewhere). See docs/performance.md, "Condensed kernels".
    config.sparse.kernels = "auto"
    # Set by a sweep of levels (`--sparsity=0.8,0.9`, sparserl/compiled_runner.py run_sweep), not by hand: its lowest
    # level, whose fan-in k slots per neuron the condensed indices of every level hold (each level keeps its own
    # fan-ins in them). Unused in a run of one level.
    config.sparse.index_level = config_dict.placeholder(float)

    config.redo = ml_collections.ConfigDict()
    # The `redo` block: a remedy for lost plasticity on a schedule (`--recycle`, sparserl/remedies.py).
    config.redo.enabled = False  # run the remedy (--redo, or --recycle=<remedy>; --recycle=none turns it off)
    config.redo.remedy = "redo"  # redo (Sokar et al. 2023, algorithm 1), regrama, shrink_perturb or reset
    config.redo.tau = 0.1  # redo, regrama: a neuron is dormant when its normalised score is <= tau (eq. 1)
    # Gradient steps between remedies; unset: the remedy's own (remedies.DEFAULT_PERIODS: redo and regrama 1,000,
    # shrink_perturb and reset 20,000).
    config.redo.period = config_dict.placeholder(int)
    config.redo.shrink = 0.8  # shrink_perturb: theta <- shrink * theta + perturb * fresh init (Ash & Adams 2020)
    config.redo.perturb = 0.2
    config.redo.reset_layers = 1  # reset: the last k layers of every chain (Nikishin et al. 2022)
    return config


def add_network(config: ml_collections.ConfigDict, *, hidden_sizes: tuple[int, ...], activation: str, cnn: bool) -> None:
    """The `network` block (`network_module` builds it); `cnn` adds the Nature CNN's fields (Mnih et al.
    2015: convs 32/64/64, kernels 8/4/3, strides 4/2/1, one dense layer of 512), used with `kind="cnn"`."""
    config.network = ml_collections.ConfigDict()
    config.network.kind = "mlp"  # "mlp", or "cnn" (the fields below)
    config.network.hidden_sizes = hidden_sizes  # the MLP's hidden layers
    config.network.width_multiplier = 1.0  # scales every hidden layer (never the output layer)
    config.network.activation = activation  # hidden activation: a name from sparserl.networks.ACTIVATION_FUNCTIONS
    if cnn:
        config.network.conv_features = (32, 64, 64)  # the CNN's conv layers: output channels,
        config.network.kernel_sizes = (8, 4, 3)  # square kernel sizes
        config.network.strides = (4, 2, 1)  # and strides
        config.network.dense_sizes = (512,)  # the CNN's dense layers after the convs


def add_schedules(config: ml_collections.ConfigDict, *, update_period: int, drop_fraction: float,
                  end_fraction: float, prune_update_period: int) -> None:
    """The per-method blocks `sparse.set`, `sparse.rigl`, `sparse.srigl`, `sparse.prune`, `sparse.srste` and
    `sparse.mask_decay`: each holds the fields of its method's settings (`Topology.settings_type`, read by
    `sparsity_config`), no more and no fewer.

    Fractions count the run's gradient steps. SET and RigL share one block of
    values in every reference gin (their mask_updater); pruning starts at 20%
    and ends where they end in all of them (Zhu & Gupta's t0 and t1).
    """
    drop_and_grow = dict(
        update_period=update_period,  # gradient steps between topology updates
        drop_fraction=drop_fraction,  # fraction of each layer's active weights dropped at the first update, cosine-decayed
        start_fraction=0.0,  # topology updates start at this fraction of the run
        end_fraction=end_fraction,  # and end here
    )
    config.sparse.set = dict(drop_and_grow)
    config.sparse.rigl = dict(drop_and_grow)
    # SRigL (Lasby et al. 2023): RigL's schedule and gamma_sal, the neuron-ablation threshold (the paper's 0.3).
    config.sparse.srigl = dict(drop_and_grow, ablation_threshold=0.3)
    # SR-STE (Zhou et al. 2021, eq. 6): N:M masks recomputed from |W| (the paper: every step, all run long) and
    # lambda_W, the decay of the pruned weights (the paper's 2e-4).
    config.sparse.srste = dict(update_period=1, start_fraction=0.0, end_fraction=1.0, decay=2e-4)
    # Pruning mask decay (Kao et al. 2022, MDGF-Linear): the pruned weights' mask value falls linearly from 1 at
    # start_fraction to 0 at end_fraction, E recomputed from |W| every update_period steps in between (the paper:
    # every step, as SR-STE). The paper gives no fractions for RL runs: training starts at once, as SR-STE does, and
    # the decay ends halfway so that the exact N:M network (the paper's binary-mask fine-tuning phase) trains for
    # the second half of the run.
    config.sparse.mask_decay = dict(update_period=1, start_fraction=0.0, end_fraction=0.5)
    config.sparse.prune = dict(
        update_period=prune_update_period,  # the pruning frequency
        start_fraction=0.2,  # t0: sparsity grows from 0 here
        end_fraction=end_fraction,  # t1: the target sparsity is reached here
    )


def add_off_policy(config: ml_collections.ConfigDict, *, batch_size: int) -> None:
    """The replay-buffer fields of an off-policy agent (DQN, SAC), and its ReDo and dormancy batches."""
    config.checkpoint_replay = True  # checkpoints hold the replay buffer (resume continues the same run)
    # Envs per seed, stepped together: one act call serves them all and their transitions are stored together.
    # train_every, learning_starts and the replay ratio count env steps of every env (num_envs must divide
    # train_every or be a multiple of it). The papers' protocols step 1 env.
    config.num_envs = 1
    config.batch_size = batch_size  # transitions per gradient step
    config.replay_capacity = 100_000  # transitions kept per seed
    config.learning_starts = 1_000  # uniformly random actions before this env step, and no updates
    config.train_every = 1  # env steps between learning steps
    config.gradient_steps = 1  # updates per learning step (replay ratio gradient_steps / train_every)
    # Sokar et al. 2023 score neurons on 256 replay transitions, for recycling and for the logged dormant
    # fractions alike (Dopamine labs/redo: batch_size_statistics = 256). Measurement has its own field, so that
    # a run without ReDo logs the same statistics as one with it.
    config.redo.batch_size = 256  # transitions ReDo scores neurons on
    # False recycles the online networks only (Dopamine labs/redo); True also gives the target networks the
    # online values of every rewritten entry.
    config.redo.reset_target = False
    config.dormancy = ml_collections.ConfigDict()
    config.dormancy.batch_size = 256  # replay transitions the logged dormant fractions are measured on


def with_preset(config: ml_collections.ConfigDict, presets: Mapping[str, Mapping], preset: str | None):
    """`config` with `presets[preset]` applied (`None`: unchanged). A preset may only set fields the config has."""
    if preset is None:
        return config
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    config.lock()  # a preset naming a field the config lacks is a KeyError, not a new field
    config.update_from_flattened_dict(dict(presets[preset]))
    config.unlock()
    return config


# What the agents read from their configs.

NETWORK_KINDS = ("mlp", "cnn")


def network_module(network: ml_collections.ConfigDict, output_size: int, **overrides) -> nn.Module:
    """The flax module a network config describes: `kind` 'mlp' or 'cnn' (Nature CNN and its MinAtar variant).

    Both kinds take `activation` and the `overrides` (`hidden_kernel_init`, `output_kernel_init`). Raises
    ConfigError (fields `network.kind`, `network.activation`) for an unknown kind or activation.
    """
    if network.kind not in NETWORK_KINDS:
        raise ConfigError("network.kind", f"unknown kind {network.kind!r}; choose one of {', '.join(NETWORK_KINDS)}")
    if network.activation not in networks.ACTIVATION_FUNCTIONS:
        raise ConfigError("network.activation", f"unknown activation {network.activation!r}; "
                          f"choose one of {', '.join(networks.ACTIVATION_FUNCTIONS)}")
    if network.kind == "mlp":
        return networks.MLP(
            tuple(network.hidden_sizes),
            output_size,
            activation=network.activation,
            width_multiplier=network.width_multiplier,
            **overrides,
        )
    return networks.NatureCNN(
        output_size,
        conv_features=tuple(network.conv_features),
        kernel_sizes=tuple(network.kernel_sizes),
        strides=tuple(network.strides),
        dense_sizes=tuple(network.dense_sizes),
        width_multiplier=network.width_multiplier,
        activation=network.activation,
        **overrides,
    )


def sparsity_config(sparse: ml_collections.ConfigDict, total_updates: int, sparsity: float) -> SparsityConfig:
    """A SparsityConfig at `sparsity`, with the method's settings read from its block, `sparse.<method>`.

    Each topology declares its settings (`Topology.settings_type`, a dataclass; `sparserl.sparse.config.read_settings`
    checks the block against it, a ConfigError naming a field that is unknown, missing or of the wrong type):
    SET, RigL and SRigL (`DropAndGrowSettings`) their `update_period`,
    `start_fraction` and `end_fraction` of the run's `total_updates` gradient
    updates and initial `drop_fraction`; prune (`Window`) the same window as Zhu
    & Gupta's t0 and t1 and `update_period` as its frequency; SRigL's
    `ablation_threshold` and SR-STE's `decay` besides. The configs take these
    from the papers and Graesser et al. 2022's gin files, named beside each
    value. Static and dense networks never change their masks and have no
    settings. `sparse.structure` (default unstructured) and `sparse.dense_layers`
    (path patterns, default none) apply to every method.
    """
    method = "dense" if is_concrete(sparsity) and sparsity == 0.0 else sparse.method  # a traced level is > 0
    topology = get_topology(method)
    return SparsityConfig(
        method=method,
        sparsity=sparsity,
        distribution=sparse.distribution,
        dense_first_layer=sparse.dense_first_layer,
        dense_last_layer=sparse.dense_last_layer,
        structure=topology.structure_for(sparse.get("structure", "unstructured")),
        dense_layers=tuple(sparse.get("dense_layers", ())),
        settings=read_settings(topology.settings_type, sparse.get(method), f"sparse.{method}", total_updates),
        index_sparsity=index_sparsity(sparse),
    )


# Methods whose fan_in layers run condensed (`kernels`): static, SET and RigL keep every neuron at k inputs; prune
# shrinks k from the dense fan-in, run at a ladder of capacities (`sparserl.sparse.condensed.ladder`); SRigL's
# ablation moves k to k' (survivors) or 0 within the layer's budget out * k, run as slots with offsets
# (`condensed.variable_fan_in`), native only.
CONSTANT_FAN_IN_METHODS = ("static", "set", "rigl", "prune", "srigl")
# Methods whose layers run as slots with offsets, which only the native kernels take.
NATIVE_ONLY_METHODS = ("srigl",)
# Methods whose fan_in layers run condensed in a sweep of levels (the level traced; `sparse.index_level`): every
# level's indices hold the lowest level's k (native kernels: each level's own fan-ins in that budget, with offsets;
# SRigL: native only). Prune's ladder needs its own level's k.
PADDED_SWEEP_METHODS = ("static", "set", "rigl", "srigl")


def index_sparsity(sparse: ml_collections.ConfigDict) -> float | None:
    """The concrete level whose fan-in k condensed indices hold in a sweep (`sparse.index_level`, its lowest level,
    which `compiled_runner.run_sweep` sets); None in a run of one level (its own k)."""
    return sparse.get("index_level")


def kernels(sparse: ml_collections.ConfigDict) -> str:
    """The kernels of a network under `sparse`: `sparse.kernels` ("masked", "condensed", "auto", "native"), which
    only runs condensed on fan_in layers: `sparse.structure` "fan_in", one k per layer, and a method of
    `CONSTANT_FAN_IN_METHODS` (static, SET, RigL; prune, whose shrinking fan-in runs at the smallest capacity of
    its ladder that holds it, masked above `condensed.MAX_CONDENSED_DENSITY`; SRigL with native kernels only).
    One k: a concrete sparsity level, or a sweep's traced level of static, SET, RigL or SRigL, whose indices hold
    the lowest level's k (`index_sparsity`, `PADDED_SWEEP_METHODS`).

    "auto" (the default) is "native" wherever native can run (fan_in masks, a CPU and g++) and wins, so a fan_in
    run gets the native speed without naming it; without g++ it is XLA's rule on a CPU (`condensed.is_faster`:
    gathers on tiny layers only), and "masked" elsewhere (another method or structure, a sweep of prune levels, a
    GPU until its path is measured, and SRigL without native kernels). "condensed" and "native" where they cannot
    run raise ConfigError
    (field `sparse.kernels`), "native" also without g++ or off a CPU (`condensed_native.unavailable_reason`).
    """
    chosen = condensed.check_kernels(sparse.get("kernels", "masked"))
    one_k = (is_concrete(sparse.sparsity) if index_sparsity(sparse) is None
             else sparse.method in PADDED_SWEEP_METHODS)
    constant_fan_in = (sparse.get("structure", "unstructured") == "fan_in" and sparse.method in CONSTANT_FAN_IN_METHODS
                       and one_k)
    if chosen in ("condensed", "native") and not constant_fan_in:
        raise ConfigError("sparse.kernels", f"{chosen} needs fan_in masks and one sparsity level "
                          f"(--config.sparse.structure=fan_in, --method one of {', '.join(CONSTANT_FAN_IN_METHODS)})")
    if chosen == "condensed" and sparse.method in NATIVE_ONLY_METHODS:
        raise ConfigError("sparse.kernels", f"condensed cannot run --method={sparse.method}, whose ablated layers keep "
                          "different fan-ins that only native kernels run; choose native, masked or auto")
    wants_native = chosen == "native" or (chosen == "auto" and constant_fan_in)
    native_reason = condensed_native.unavailable_reason() if wants_native else None
    if chosen == "native" and native_reason:
        raise ConfigError("sparse.kernels", f"{native_reason}; choose masked, condensed or auto")
    if chosen == "auto" and constant_fan_in:
        if native_reason is None:
            return "native"
        if sparse.method in NATIVE_ONLY_METHODS:
            return "masked"
        return "auto" if jax.default_backend() == "cpu" else "masked"
    runs_condensed = constant_fan_in and (chosen == "native" or sparse.method not in NATIVE_ONLY_METHODS)
    return chosen if runs_condensed else "masked"


def network_sparsity(sparse: ml_collections.ConfigDict, network: str) -> float:
    """`sparse.<network>_sparsity` when set (SAC, PPO: 'actor', 'critic'), else `sparse.sparsity`."""
    value = sparse.get(f"{network}_sparsity")
    return sparse.sparsity if value is None else value


def off_policy_updates(config: ml_collections.ConfigDict) -> int:
    """Gradient updates in an off-policy run: `gradient_steps` every `train_every` env steps after `learning_starts`.

    The replay ratio (updates per env step, Sokar et al. 2023; D'Oro et al. 2023) is
    gradient_steps / train_every. Raises ConfigError when `gradient_steps` < 1, or unless `num_envs` (envs per
    seed, stepped together) divides `train_every` or is a multiple of it, so that every step of the envs that
    learns takes the same number of updates (`loop.updates_per_learning_step`).
    """
    if config.gradient_steps < 1:
        raise ConfigError("gradient_steps", f"must be >= 1, got {config.gradient_steps}")
    if config.num_envs < 1:
        raise ConfigError("num_envs", f"must be >= 1, got {config.num_envs}")
    if config.train_every % config.num_envs and config.num_envs % config.train_every:
        raise ConfigError("num_envs", f"{config.num_envs} must divide --config.train_every "
                          f"({config.train_every}) or be a multiple of it")
    return max(1, (config.steps - config.learning_starts) // config.train_every) * config.gradient_steps
