"""sparserl.deferred_imports: a deferred module runs its code at its first attribute use, once, and is then the real
module everywhere; a deferred package runs before its submodules; postponed annotations read nothing; and importing
our agents and a gymnax env leaves distrax, matplotlib.pyplot and seaborn (and what they pull) unimported."""

import importlib
import inspect
import itertools
import os
import subprocess
import sys
import textwrap
import types
import typing

import pytest

from sparserl import deferred_imports

_unique_names = itertools.count()


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Writes modules named `{prefix}...` under tmp_path, importable; each module's code, when it runs, appends its
    name to `{prefix}log.executed`. Yields (prefix, write(relative path, code), executed names)."""
    prefix = f"deferred_test_{next(_unique_names)}_"
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{prefix}log.py").write_text("executed = []\n")

    def write(relative_path: str, code: str = "") -> None:
        path = tmp_path / relative_path.format(prefix=prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"import {prefix}log\n{prefix}log.executed.append(__name__)\n"
                        + textwrap.dedent(code).format(prefix=prefix))

    log = importlib.import_module(f"{prefix}log")
    yield prefix, write, log.executed
    for name in [name for name in sys.modules if name.startswith(prefix)]:
        del sys.modules[name]


def test_a_deferred_module_runs_at_its_first_attribute_use_once_and_is_then_the_real_module(modules):
    prefix, write, executed = modules
    write("{prefix}heavy.py", "VALUE = 42\ndef double(x):\n    return 2 * x\n")
    deferred_imports.defer([f"{prefix}heavy"])

    heavy = importlib.import_module(f"{prefix}heavy")
    # What the import system, importlib and inspect read does not run it.
    assert heavy.__name__ == f"{prefix}heavy" and heavy.__file__.endswith(f"{prefix}heavy.py")
    assert importlib.util.find_spec(f"{prefix}heavy") is heavy.__spec__
    assert inspect.getmodule(compile("0", "/nowhere.py", "eval")) is None  # reads __file__ of every module
    assert not hasattr(heavy, "__path__")
    assert importlib.import_module(f"{prefix}heavy") is heavy
    assert executed == [] and deferred_imports.is_deferred(heavy)

    assert heavy.VALUE == 42
    real = sys.modules[f"{prefix}heavy"]
    assert type(real) is types.ModuleType and real is not heavy and not deferred_imports.is_deferred(heavy)
    assert executed == [f"{prefix}heavy"]
    # The name bound before forwards to the real module: reads, writes, dir(), vars().
    assert heavy.double is real.double and heavy.__spec__ is real.__spec__
    heavy.VALUE = 7
    assert real.VALUE == 7 and "double" in dir(heavy) and vars(heavy) is vars(real)
    assert importlib.import_module(f"{prefix}heavy") is real and executed == [f"{prefix}heavy"]


def test_from_import_of_a_deferred_module_gives_the_real_objects(modules):
    prefix, write, executed = modules
    write("{prefix}heavy/__init__.py", "from {prefix}heavy.part import Thing\n")
    write("{prefix}heavy/part.py", "class Thing:\n    pass\n")
    deferred_imports.defer([f"{prefix}heavy"])
    namespace = {}
    exec(f"from {prefix}heavy import Thing", namespace)
    assert namespace["Thing"] is sys.modules[f"{prefix}heavy.part"].Thing
    assert executed == [f"{prefix}heavy", f"{prefix}heavy.part"]


@pytest.mark.parametrize("package_imports_it", [True, False], ids=["imported-by-the-package", "not-imported-by-it"])
def test_a_submodule_of_a_deferred_package_runs_after_the_package_and_once(modules, package_imports_it):
    prefix, write, executed = modules
    write("{prefix}heavy/__init__.py", "from {prefix}heavy import part\n" if package_imports_it else "")
    write("{prefix}heavy/part.py", "import {prefix}heavy\nPACKAGE_FILE = {prefix}heavy.__file__\n")
    write("{prefix}heavy/other.py")
    deferred_imports.defer([f"{prefix}heavy"])
    importlib.import_module(f"{prefix}heavy")

    part = importlib.import_module(f"{prefix}heavy.part")
    assert executed == [f"{prefix}heavy", f"{prefix}heavy.part"]
    package = sys.modules[f"{prefix}heavy"]
    assert not deferred_imports.is_deferred(package) and package.part is part
    assert part.__spec__.loader.__class__.__name__ == "SourceFileLoader" and part.PACKAGE_FILE == package.__file__
    importlib.import_module(f"{prefix}heavy.other")
    assert executed == [f"{prefix}heavy", f"{prefix}heavy.part", f"{prefix}heavy.other"]
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{prefix}heavy.missing")


def test_a_deferred_module_that_is_not_installed_fails_at_its_import(modules):
    prefix, _, _ = modules
    deferred_imports.defer([f"{prefix}missing"])
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{prefix}missing")


def test_a_deferred_module_whose_code_raises_raises_at_each_use(modules):
    prefix, write, executed = modules
    write("{prefix}broken.py", "raise RuntimeError('broken on purpose')\n")
    deferred_imports.defer([f"{prefix}broken"])
    broken = importlib.import_module(f"{prefix}broken")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="broken on purpose"):
            broken.anything
    assert executed == [f"{prefix}broken", f"{prefix}broken"] and f"{prefix}broken" not in sys.modules


def test_postponed_annotations_name_a_deferred_module_without_running_it(modules):
    prefix, write, executed = modules
    write("{prefix}heavy.py", "class Thing:\n    pass\n")
    write("{prefix}user.py", "import {prefix}heavy\ndef use(thing: {prefix}heavy.Thing) -> int:\n    return 1\n")
    deferred_imports.defer([f"{prefix}heavy"])
    deferred_imports.postpone_annotations([f"{prefix}user"])

    user = importlib.import_module(f"{prefix}user")
    assert executed == [f"{prefix}user"]
    assert user.use.__annotations__ == {"thing": f"{prefix}heavy.Thing", "return": "int"}
    assert typing.get_type_hints(user.use) == {"thing": sys.modules[f"{prefix}heavy"].Thing, "return": int}
    assert executed == [f"{prefix}user", f"{prefix}heavy"]


def _run_python(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def test_our_agents_and_a_gymnax_env_import_neither_distrax_nor_the_plotting_modules():
    assert _run_python("""
        import sys
        import sparserl.agents.dqn, sparserl.agents.ppo
        from sparserl import deferred_imports, envs
        envs.env_spec("gymnax:CartPole-v1")
        print(*(name in sys.modules for name in ("tensorflow_probability", "pandas", "scipy.stats")))
        print(*(deferred_imports.is_deferred(sys.modules[name]) for name in ("distrax", "matplotlib.pyplot", "seaborn")))
    """) == ["False"] * 3 + ["True"] * 3


def test_real_use_of_the_deferred_modules_gets_the_real_ones():
    assert _run_python("""
        import sys, types
        import sparserl
        import matplotlib.pyplot as plt
        figure = plt.figure()
        print(type(sys.modules["matplotlib.pyplot"]) is types.ModuleType, plt.figure is sys.modules["matplotlib.pyplot"].figure)
        from distrax import Normal
        import distrax._src.distributions.normal
        print(Normal is distrax._src.distributions.normal.Normal, float(Normal(0.0, 1.0).log_prob(0.0)) < 0)
        import seaborn.palettes
        print(sys.modules["seaborn"].color_palette is seaborn.palettes.color_palette)
    """) == ["True"] * 5
