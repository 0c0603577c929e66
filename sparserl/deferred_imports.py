"""Deferred imports: a module named to `defer` runs its code when one of its attributes is first used, not when an
`import` statement names it (docs/design.md section 7).

Why: libraries we depend on import heavy modules at module level for code our runs never call. rlax imports
distrax (-> tensorflow_probability, about 0.35 s) for its distribution helpers, and gymnax imports
matplotlib.pyplot and seaborn (-> pandas, scipy.stats, about 1 s) for its renderers.

How (the import protocol of PEP 451): `defer` puts a `DeferringFinder` first on `sys.meta_path`. When a deferred
name is imported, the finder asks the other finders for the real module's spec, and returns a spec whose loader
makes a `DeferredModule` in its place without running the real module's code. That module holds the import
system's attributes (`__name__`, `__spec__`, `__loader__`, `__package__`, `__path__`, `__file__`, `__cached__`),
which are what Python's import machinery and `inspect` read of a module in `sys.modules` (the reason
`importlib.util.LazyLoader` does not help: its module loads on any attribute read, `__spec__` included, and
Python 3.11's import reads `__spec__` of every module it finds in `sys.modules`). Any other use (an attribute read,
write or delete, `dir()`) imports the real module: the deferred one leaves `sys.modules`, the finder stops
deferring the name, and `importlib.import_module` runs the real module's code, which then stands in `sys.modules`
and on its parent package. From then on the deferred module forwards every attribute to the real one, so names
bound to it earlier (`import matplotlib.pyplot as plt`) keep working and see the real module's current state.

A submodule of a deferred package (`import distrax._src.utils`) is imported as Python would import it: the
package's code runs first (it may import the submodule itself), then the submodule's, once.

An annotation is evaluated when its function is defined, so a module that names a deferred module in annotations
(rlax's policy_targets: `distribution: distrax.DistributionLike`) would import it at once. `postpone_annotations`
compiles such a module as if it began with `from __future__ import annotations` (PEP 563): its annotations stay
strings until something asks for them (`typing.get_type_hints`), which then reads the deferred module.
"""

from __future__ import annotations

import __future__
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Sequence

# What the import system and `inspect` read of a module found in sys.modules: a DeferredModule answers these itself
# until the real module is imported.
IMPORT_SYSTEM_ATTRIBUTES = frozenset({"__name__", "__spec__", "__loader__", "__package__", "__path__", "__file__",
                                      "__cached__", "__dict__"})
_REAL_MODULE = "__deferred_real_module__"  # where a DeferredModule keeps the real module once imported
# Held only to take a DeferredModule out of sys.modules, never across an import (the import system's own per-module
# locks serialise the real import: a lock held across it could deadlock against them).
_sys_modules_lock = threading.Lock()


def _namespace(module: types.ModuleType) -> dict:
    """A DeferredModule's own `__dict__` (its attribute reads forward to the real module once that is imported)."""
    return types.ModuleType.__getattribute__(module, "__dict__")


class DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is used; then imports it and forwards to it."""

    def __getattribute__(self, name: str):
        real = _namespace(self).get(_REAL_MODULE)
        if name == "__class__" or (real is None and name in IMPORT_SYSTEM_ATTRIBUTES):
            return types.ModuleType.__getattribute__(self, name)
        return getattr(real if real is not None else import_real(self), name)

    def __setattr__(self, name: str, value) -> None:
        if _REAL_MODULE not in _namespace(self) and name in IMPORT_SYSTEM_ATTRIBUTES:
            types.ModuleType.__setattr__(self, name, value)  # the import system initialising this module
        else:
            setattr(import_real(self), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(import_real(self), name)

    def __dir__(self) -> list[str]:
        return dir(import_real(self))


def import_real(deferred: DeferredModule) -> types.ModuleType:
    """The real module behind `deferred`, imported on the first call (see the module docstring)."""
    namespace = _namespace(deferred)
    if _REAL_MODULE not in namespace:
        name = namespace["__name__"]
        namespace["__loader__"].finder.deferred.discard(name)
        with _sys_modules_lock:
            if sys.modules.get(name) is deferred:
                del sys.modules[name]
        namespace[_REAL_MODULE] = importlib.import_module(name)
    return namespace[_REAL_MODULE]


def is_deferred(module: types.ModuleType) -> bool:
    """Whether `module` is a DeferredModule whose real module has not been imported yet."""
    return isinstance(module, DeferredModule) and _REAL_MODULE not in _namespace(module)


class _DeferringLoader(importlib.abc.Loader):
    """Makes a DeferredModule for a spec of `finder`; runs no module code."""

    def __init__(self, finder: DeferringFinder):
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> DeferredModule:
        return DeferredModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing: the real module's code runs when one of its attributes is first used."""


class _PackageFirstLoader(importlib.abc.Loader):
    """Imports a submodule of a deferred package: the package's real code first, then the submodule's own, unless
    the package imported it already (then that module is the one imported)."""

    def __init__(self, finder: DeferringFinder, package: DeferredModule):
        self.finder = finder
        self.package = package
        self.real_spec: importlib.machinery.ModuleSpec | None = None
        self.imported_by_package = False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        real_package = import_real(self.package)
        if spec.name in sys.modules:
            self.imported_by_package = True
            module = sys.modules[spec.name]
            self.real_spec = module.__spec__
            return module
        self.real_spec = self.finder.real_spec(spec.name, real_package.__path__, None)
        if self.real_spec is None:
            raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
        return importlib.util.module_from_spec(self.real_spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if not self.imported_by_package:
            self.real_spec.loader.exec_module(module)
        module.__spec__ = self.real_spec  # the import system set this finder's spec on it


class _PostponedAnnotationsLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module's source with `from __future__ import annotations` in force (PEP 563). Always from the
    source: the bytecode cache holds the module compiled without it, and is neither read nor written."""

    def get_code(self, fullname: str) -> types.CodeType:
        return compile(self.get_data(self.path), self.path, "exec", flags=__future__.annotations.compiler_flag,
                       dont_inherit=True)


class DeferringFinder(importlib.abc.MetaPathFinder):
    """The `sys.meta_path` finder behind `defer` and `postpone_annotations` (the first finder asked): deferred names
    become DeferredModules, submodules of a deferred package are imported after the package, and the modules named
    to `postpone_annotations` are compiled with PEP 563's postponed annotations."""

    def __init__(self):
        self.deferred: set[str] = set()
        self.postponed_annotations: set[str] = set()

    def find_spec(self, fullname: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.postponed_annotations:
            return self._postponed_annotations_spec(fullname, path, target)
        package = sys.modules.get(fullname.rpartition(".")[0])
        if package is not None and is_deferred(package):
            if self.real_spec(fullname, path, target) is None:
                return None  # no such submodule: the import fails as it would without deferral
            return importlib.util.spec_from_loader(fullname, _PackageFirstLoader(self, package))
        if fullname not in self.deferred:
            return None
        real = self.real_spec(fullname, path, target)
        if real is None:
            return None  # not installed: the import fails as it would without deferral
        spec = importlib.machinery.ModuleSpec(fullname, _DeferringLoader(self), origin=real.origin,
                                              is_package=real.submodule_search_locations is not None)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec

    def _postponed_annotations_spec(self, fullname: str, path, target) -> importlib.machinery.ModuleSpec | None:
        real = self.real_spec(fullname, path, target)
        if real is None or not isinstance(real.loader, importlib.machinery.SourceFileLoader):
            return real  # not installed, or not Python source: imported as it would be without this finder
        real.loader = _PostponedAnnotationsLoader(fullname, real.origin)
        return real

    def real_spec(self, fullname: str, path, target) -> importlib.machinery.ModuleSpec | None:
        """The spec the other finders on `sys.meta_path` find for `fullname` (None: not found)."""
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None


def _finder() -> DeferringFinder:
    """The DeferringFinder on `sys.meta_path`, put first there on the first call."""
    finder = next((finder for finder in sys.meta_path if isinstance(finder, DeferringFinder)), None)
    if finder is None:
        finder = DeferringFinder()
        sys.meta_path.insert(0, finder)
    return finder


def defer(names: Sequence[str]) -> None:
    """Defers the import of each module in `names` (dotted names too) until one of its attributes is used.

    Modules already imported stay as they are.
    """
    _finder().deferred.update(name for name in names if name not in sys.modules)


def postpone_annotations(names: Sequence[str]) -> None:
    """Compiles each module in `names`, when it is imported, with its annotations postponed (PEP 563).

    Modules already imported stay as they are.
    """
    _finder().postponed_annotations.update(name for name in names if name not in sys.modules)
