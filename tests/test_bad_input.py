"""User mistakes end with one line naming the flag, exit status 2, and nothing written (DESIGN contract 7)."""

import pytest

from tests.helpers import run_train

BROKEN_CONFIG = "def get_config(:\n"
NOT_A_CONFIG = "x = 1\n"

CASES = [
    (["--agent=nope"], "--agent"),
    (["--sparsity=1.5"], "--sparsity"),
    (["--sparsity=-0.1"], "--sparsity"),
    (["--sparsity=abc"], "--sparsity"),
    (["--method=foo", "--sparsity=0.5"], "--method"),
    (["--method=dense", "--sparsity=0.5"], "--method"),
    (["--method=rigl"], "--sparsity"),
    (["--distribution=bar", "--sparsity=0.5"], "--distribution"),
    (["--env=NoSuchEnv-v0"], "--env"),
    (["--env=dmc:nosuch-task"], "--env"),
    (["--env=Pendulum-v1"], "--agent=dqn"),
    (["--num_seeds=0"], "--num_seeds"),
    (["--num_seeds=two"], "--num_seeds"),
    (["--steps=-5"], "--steps"),
    (["--redo_tau=-1"], "--redo_tau"),
    (["--redo_period=0"], "--redo_period"),
    (["--checkpoint_every=0"], "--checkpoint_every"),
    (["--actor_sparsity=0.5"], "--actor_sparsity"),
    (["--config=/no/such/config.py"], "--config"),
    (["--config={broken}"], "--config"),
    (["--config={not_a_config}"], "--config"),
    (["--config.no_such_field=3"], "--config.no_such_field"),
    (["--config.batch_size=abc"], "--config.batch_size"),
    (["--config.gradient_steps=0"], "--config.gradient_steps"),
    (["--workdir={file}/runs"], "--workdir"),
    (["--run_name=../escape"], "--run_name"),
    (["--unknown_flag=1"], "unknown_flag"),
]


@pytest.mark.parametrize("arguments, flag", CASES, ids=[" ".join(case[0]) for case in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, arguments, flag):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "broken.py").write_text(BROKEN_CONFIG)
    (inputs / "not_a_config.py").write_text(NOT_A_CONFIG)
    (inputs / "file").write_text("")
    workdir = tmp_path / "work"
    arguments = [a.format(broken=inputs / "broken.py", not_a_config=inputs / "not_a_config.py", file=inputs / "file")
                 for a in arguments]
    if not any(a.startswith("--workdir") for a in arguments):
        arguments.append(f"--workdir={workdir}")
    result = run_train(*arguments, "--steps=10" if not any(a.startswith("--steps") for a in arguments) else "--seed=0",
                       cwd=tmp_path, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0]
    assert not workdir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_existing_run_with_another_config_is_refused(tmp_path):
    common = ("--agent=dqn", "--steps=200", "--config.learning_starts=50", "--config.log_every=100", "--eval_every=200",
              "--config.eval_episodes=1", "--config.network.hidden_sizes=16,16", f"--workdir={tmp_path}", "--run_name=run")
    first = run_train(*common, "--sparsity=0.5")
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    second = run_train(*common, "--sparsity=0.8")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "--run_name" in lines[0] and "sparse.sparsity" in lines[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
