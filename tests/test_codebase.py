"""The house rules a newcomer relies on, checked on the source: no import cycle, no library module importing an
agent, no function over 80 lines or module over 550 outside tests, a README within 250 lines."""

import ast
import pathlib

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
# repository folder -> the package it installs as (setup.cfg package_dir)
PACKAGES = {"sparserl": "sparserl", "agents": "sparserl.agents", "configs": "sparserl.configs",
            "experiments": "sparserl.experiments"}
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_README_LINES = 80, 550, 250


def _modules() -> dict[str, pathlib.Path]:
    """Every module's dotted name and its file."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            parts = [part for part in path.relative_to(REPOSITORY / folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The project modules `name` imports, at module level or inside functions (`from package import module` names
    the module, not the package)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(name.split(".")[:-node.level] + [node.module])
            imported.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {module for module in imported if module in modules and module != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` (one per back edge of a depth-first search)."""
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(stack[stack.index(imported):] + [imported])
            elif imported not in state:
                visit(imported)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycle_and_no_library_module_imports_an_agent():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []
    library = [name for name in modules if not name.startswith(("sparserl.agents", "sparserl.configs",
                                                                 "sparserl.experiments"))]
    assert {name: sorted(module for module in graph[name] if module.startswith("sparserl.agents."))
            for name in library if any(module.startswith("sparserl.agents.") for module in graph[name])} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_functions_and_modules_stay_short():
    long_functions, long_modules = [], []
    for path in _modules().values():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(str(path.relative_to(REPOSITORY)))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPOSITORY)}:{node.name} ({lines} lines)")
    assert (long_functions, long_modules) == ([], [])


def test_the_readme_stays_short():
    assert len((REPOSITORY / "README.md").read_text().splitlines()) <= MAX_README_LINES
