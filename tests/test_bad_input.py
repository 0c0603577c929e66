"""User mistakes end with one line naming the flag, exit status 2, and nothing written (docs/design.md contract 7).

The cases run in-process through `sparserl.train.prepare`, every check the entry point makes before it writes
anything; three run the CLI end to end for the exit status and the one line on stderr.
"""

import json

import pytest

from sparserl import train
from sparserl.agent_contract import config_module
from tests.helpers import run_train

BROKEN_CONFIG = "def get_config(:\n"
NOT_A_CONFIG = "x = 1\n"
NOT_A_CONFIG_DICT = "def get_config():\n    return {'agent': 'dqn'}\n"
UNKNOWN_FIELD = "from sparserl.configs import dqn\n\ndef get_config():\n    config = dqn.get_config()\n    config.lerning_rate = 1e-3\n    return config\n"
UNKNOWN_AGENT = "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict(dict(agent='a2c'))\n"
NO_PRESET_ARGUMENT = "from sparserl.configs import dqn\n\ndef get_config():\n    return dqn.get_config()\n"

CASES = [
    (["--agent=nope"], "--agent: unknown agent 'nope'; choose one of dqn, sac, ppo"),
    (["--sparsity=1.5"], "--sparsity: 1.5 is outside [0, 1)"),
    (["--sparsity=-0.1"], "--sparsity"),
    (["--sparsity=abc"], "--sparsity: could not convert string to float: 'abc'"),
    (["--method=foo", "--sparsity=0.5"], "--method: unknown method 'foo'; choose one of dense, static, set, rigl, prune"),
    (["--method=dense", "--sparsity=0.5"], "--method: dense cannot train at a sparsity > 0; choose one of static"),
    (["--method=rigl"], "--sparsity: --method=rigl needs a sparsity in (0, 1)"),
    (["--method=mask_decay", "--structure=fan_in"], "--structure: --method=mask_decay trains N:M sparsity; pass --structure=nm:N:M"),
    (["--method=mask_decay", "--structure=nm:2:4", "--sparsity=0.9"], "--sparsity: 0.9 conflicts with --structure=nm:2:4"),
    (["--method=mask_decay", "--structure=nm:2:4", "--config.sparse.kernels=condensed"],
     "--config.sparse.kernels: condensed needs fan_in masks and one sparsity level"),
    (["--sparsity=0.9", "--config.sparse.kernels=native"],
     "--config.sparse.kernels: native needs fan_in masks and one sparsity level (--config.sparse.structure=fan_in"),
    (["--config.sparse.kernels=fast"], "--config.sparse.kernels: unknown kernels 'fast'; choose one of masked, condensed, auto, native"),
    (["--distribution=bar", "--sparsity=0.5"], "--distribution: unknown distribution 'bar'; choose one of erk, uniform"),
    (["--config.sparse.method=foo", "--sparsity=0.5"], "--method: unknown method 'foo'"),
    (["--env=NoSuchEnv-v0"], "--env: unknown environment 'NoSuchEnv-v0'"),
    (["--env=dmc:nosuch-task"], "--env"),
    (["--env=Pendulum-v1"], "--agent=dqn needs"),
    (["--env=HalfCheetah-v5"], "--env: configs/dqn.py has no preset for mujoco envs such as 'HalfCheetah-v5'; choose an env"),
    (["--agent=sac", "--env=MinAtar/Breakout-v1"], "--env: configs/sac.py has no preset for minatar envs"),
    (["--num_seeds=0"], "--num_seeds: must be >= 1, got 0"),
    (["--num_seeds=two"], "--num_seeds"),
    (["--steps=-5"], "--steps"),
    (["--seed=-1"], "--seed: must be >= 0"),
    (["--redo_tau=-1"], "--redo_tau"),
    (["--redo_period=0"], "--redo_period"),
    (["--recycle=nope"], "--recycle: unknown remedy 'nope'; choose one of none, redo, regrama, shrink_perturb, reset"),
    (["--recycle=reset", "--redo"], "--recycle: give --recycle or --redo, not both"),
    (["--config.redo.remedy=nope"], "--recycle: unknown remedy 'nope'"),
    (["--recycle=reset", "--config.redo.reset_layers=4"], "--config.redo.reset_layers: must be in [1, 3]"),
    (["--recycle=shrink_perturb", "--config.redo.shrink=1.5"], "--config.redo.shrink: 1.5 is outside [0, 1]"),
    (["--config.redo.perturb=-1"], "--config.redo.perturb: must be >= 0"),
    (["--checkpoint_every=0"], "--checkpoint_every"),
    (["--config.log_every=0"], "--config.log_every: must be >= 1"),
    (["--actor_sparsity=0.5"], "--actor_sparsity: not a setting of --agent=dqn"),
    (["--config=/no/such/config.py"], "--config: no such file"),
    (["--config={broken}"], "--config: cannot load"),
    (["--config={not_a_config}"], "--config"),
    (["--config={not_a_config_dict}"], "--config: {not_a_config_dict}: get_config() returned a dict, not a ConfigDict"),
    (["--config={unknown_field}"], "--config: {unknown_field} sets lerning_rate, which the dqn config does not have"),
    (["--config={unknown_agent}"], "--config: {unknown_agent} sets agent 'a2c'; choose one of dqn, sac, ppo"),
    (["--config={no_preset_argument}:atari"], "--config: {no_preset_argument}: get_config('atari') failed: TypeError"),
    (["--config={configs}/dqn.py:nope"], "--config: {configs}/dqn.py has no preset 'nope'; choose one of classic, minatar, atari"),
    (["--config={configs}/dqn.py:atari", "--env=CartPole-v1"], "--env: 'CartPole-v1' is a classic env, not one for the atari preset"),
    (["--config={configs}/sac.py", "--agent=dqn"], "--agent: {configs}/sac.py configures agent 'sac'"),
    (["--config.no_such_field=3"], "--config.no_such_field: the dqn config has no such field; choose one of adam_eps, agent"),
    (["--config.sparse.rigl.update_perod=3"], "--config.sparse.rigl.update_perod: the dqn config has no such field; choose one "
                                              "of drop_fraction, end_fraction, start_fraction, update_period"),
    (["--config.batch_size.x=1"], "--config.batch_size.x: batch_size is a value, not a block of fields"),
    (["--config.env=ALE/Pong-v5"], "--config.env: set it with --env"),
    (["--config.batch_size=abc"], "--config.batch_size: invalid literal for int()"),
    (["--config.batch_size=1.5"], "--config.batch_size"),
    (["--config.checkpoint_replay=maybe"], "--config.checkpoint_replay"),
    (["--config.network.hidden_sizes=a,b"], "--config.network.hidden_sizes: ('a,b',) is not a list of positive integers"),
    (["--config.network.hidden_sizes=0,4"], "--config.network.hidden_sizes"),
    (["--config.network.kind=rnn"], "--config.network.kind: unknown kind 'rnn'; choose one of mlp, cnn"),
    (["--agent=sac", "--config.network.kind=cnn"], "--config.network.kind: sac builds MLPs only"),
    (["--config.gradient_steps=0"], "--config.gradient_steps: must be >= 1"),
    (["--config.num_envs=3", "--config.train_every=4"],
     "--config.num_envs: 3 must divide --config.train_every (4) or be a multiple of it"),
    (["--config.member_loop=pmap"], "--config.member_loop: unknown member loop 'pmap'; choose one of auto, vmap, map"),
    # A --sparsity list (a sweep of levels in one compiled program, on gymnax envs).
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,1.5"], "--sparsity: 1.5 is outside [0, 1)"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,,0.9"], "--sparsity: could not convert string to float: ''"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,0"], "--sparsity: 0 cannot be a level of a list: a dense network is "
                                                       "not a sparsity level of a sparse method"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.9,0.5,0.9"], "--sparsity: level 0.9 is listed twice"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.9,0.9000001"], "--sparsity: level 0.9 is listed twice (levels are told "
                                                               "apart to 6 significant digits)"),
    (["--sparsity=0.5,0.9"], "--sparsity: a list of levels trains as one compiled program, which needs a JAX-native env "
                             "(--env=gymnax:<id>, e.g. gymnax:CartPole-v1); CartPole-v1 runs on the host loop"),
    (["--env=gymnax:CartPole-v1", "--structure=nm:2:4", "--sparsity=0.5,0.9"],
     "--sparsity: --structure=nm:2:4 fixes the sparsity at 1 - N/M = 0.5, so there are no levels to list"),
    (["--agent=sac", "--env=gymnax:Pendulum-v1", "--sparsity=0.5,0.9", "--actor_sparsity=0.8"],
     "--sparsity: a list of levels sets every network's sparsity; leave out --actor_sparsity"),
    (["--agent=ppo", "--env=gymnax:CartPole-v1", "--sparsity=0.5,0.9", "--critic_sparsity=0.8"],
     "--sparsity: a list of levels sets every network's sparsity; leave out --critic_sparsity"),
    (["--env=gymnax:CartPole-v1", "--method=prune", "--structure=fan_in", "--sparsity=0.5,0.9",
      "--config.sparse.kernels=condensed"],
     "--sparsity: a list of levels trains with the level traced, where --config.sparse.kernels=condensed runs only "
     "fan_in masks of static, set, rigl"),
    (["--config.sparse.index_level=0.5"],
     "--config.sparse.index_level: a sweep of levels sets it (its lowest level); leave it out"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,0.9", "--config.sparse.kernels=native"],
     "--config.sparse.kernels=native runs only fan_in masks of static, set, rigl, srigl (every level's indices in the lowest "
     "level's k slots per neuron); choose masked or auto"),
    (["--env=gymnax:CartPole-v1", "--method=dense", "--sparsity=0.5,0.9"],
     "--sparsity: a list of levels needs a sparse method, not --method=dense; choose one of static, set, rigl"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,0.9", "--config.sparse.sparsity=0.3"],
     "--sparsity: a list of levels sets sparse.sparsity; leave out --config.sparse.sparsity"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,0.9", "--run_name=mine"],
     "--run_name: a --sparsity list writes each level's run directory under the name it gets alone "
     "(dqn_gymnax-CartPole-v1_rigl_0.5, ...)"),
    (["--env=gymnax:CartPole-v1", "--sparsity=0.5,0.9", "--config.network.kind=rnn"],
     "--config.network.kind: unknown kind 'rnn'"),  # every level's agent is made in `prepare`
    (["--workdir={file}/runs"], "--workdir"),
    (["--run_name=../escape"], "--run_name"),
    (["--unknown_flag=1"], "--unknown_flag: unknown flag"),
    (["positional"], "unexpected arguments: positional"),
]


@pytest.fixture
def inputs(tmp_path):
    """Config files and a plain file for the cases, in tmp_path/inputs; formats a case's strings with their paths."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = {"configs": config_module("dqn").__file__.rsplit("/", 1)[0], "file": str(folder / "file")}
    (folder / "file").write_text("")
    for name, text in (("broken", BROKEN_CONFIG), ("not_a_config", NOT_A_CONFIG), ("not_a_config_dict", NOT_A_CONFIG_DICT),
                       ("unknown_field", UNKNOWN_FIELD), ("unknown_agent", UNKNOWN_AGENT),
                       ("no_preset_argument", NO_PRESET_ARGUMENT)):
        (folder / f"{name}.py").write_text(text)
        paths[name] = str(folder / f"{name}.py")
    return lambda text: text.format(**paths)


@pytest.mark.parametrize("arguments, message", CASES, ids=[" ".join(case[0]) for case in CASES])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(tmp_path, inputs, arguments, message):
    arguments = [inputs(argument) for argument in arguments]
    workdir = tmp_path / "work"
    if not any(argument.startswith("--workdir") for argument in arguments):
        arguments.append(f"--workdir={workdir}")
    with pytest.raises(train.UsageError) as raised:
        train.prepare(["sparserl.train", *arguments])
    assert inputs(message) in str(raised.value) and "\n" not in str(raised.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs"]


def test_existing_run_with_another_config_is_refused(tmp_path):
    common = ["sparserl.train", "--agent=dqn", f"--workdir={tmp_path}", "--run_name=run"]
    seed_dir = tmp_path / "run" / "seed0"
    seed_dir.mkdir(parents=True)
    earlier = train.config_from_arguments(common + ["--sparsity=0.5"])
    (seed_dir / "config.json").write_text(json.dumps(train.seed_config(earlier, 0)))
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    assert train.prepare(common + ["--sparsity=0.5"]).run_dirs == (str(tmp_path / "run"),)  # the same config resumes
    with pytest.raises(train.UsageError, match=r"^--run_name: .* holds a run with another config \(sparse.sparsity differ\)"):
        train.prepare(common + ["--sparsity=0.8"])
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("arguments, message", [
    (["--agent=nope"], "error: --agent: unknown agent 'nope'; choose one of dqn, sac, ppo"),
    (["--config.batch_size=abc"], "error: --config.batch_size: invalid literal for int() with base 10: 'abc'"),
    (["--workdir={file}/runs"], "error: --workdir: '{file}/runs' is not writable"),
    (["--sparsity=0.5,0.9"], "error: --sparsity: a list of levels trains as one compiled program, which needs a "
                             "JAX-native env (--env=gymnax:<id>, e.g. gymnax:CartPole-v1); CartPole-v1 runs on the host "
                             "loop, so give one level per run"),
])
def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, inputs, arguments, message):
    result = run_train(*[inputs(argument) for argument in arguments], f"--workdir={tmp_path / 'work'}"
                       if "--workdir" not in arguments[0] else "--steps=10", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr.strip().splitlines() == [inputs(message)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs"]


def test_native_kernels_where_they_cannot_run_are_one_line_naming_the_flag(tmp_path, monkeypatch):
    from sparserl.sparse import condensed_native

    monkeypatch.setattr(condensed_native, "unavailable_reason", lambda: "native kernels need a C++ compiler: g++ is not on PATH")
    with pytest.raises(train.UsageError) as raised:
        train.prepare(["sparserl.train", "--sparsity=0.9", "--structure=fan_in", "--config.sparse.kernels=native",
                       f"--workdir={tmp_path / 'work'}"])
    assert str(raised.value) == ("--config.sparse.kernels: native kernels need a C++ compiler: g++ is not on PATH; "
                                 "choose masked, condensed or auto")
    assert list(tmp_path.iterdir()) == []
