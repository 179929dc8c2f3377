"""The compiled catalog: `optgen.optimizers.Adam`, `optgen.optimizers.Adan`, ...

Each class is imported on first use from generated/torch/<name>.py (committed; rewritten by
`optgen build`); the class name lowercased is the catalog file stem.

This module is also the package of those files (its `__path__` is generated/torch), so each
one is the importable module `optgen.optimizers.<stem>`: a pickled optimizer names its class
`optgen.optimizers.adam.Adam`, which a fresh process imports without touching this module's
attributes first.
"""

from __future__ import annotations

import importlib

from . import catalog


def _dir():
    return catalog.generated_dir() / "torch"


def _path(name: str):
    return _dir() / f"{name.lower()}.py"


__path__ = [str(_dir())]  # a module with a __path__ is a package: its submodules are the files


def __getattr__(name: str):
    if name.startswith("_") or not name.isidentifier() or not _path(name).is_file():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (catalog: {', '.join(__all__)})")
    module = importlib.import_module(f"{__name__}.{name.lower()}")
    cls = getattr(module, name, None)
    if isinstance(cls, type):
        globals()[name] = cls
        return cls
    raise AttributeError(f"generated/torch/{name.lower()}.py defines no class {name!r}")


def _class_names() -> list[str]:
    names = []
    for path in sorted(_dir().glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("class ") and "(Optimizer)" in line:
                names.append(line[len("class ") : line.index("(")])
    return names


__all__ = _class_names()  # noqa: PLE0605 - the catalog is whatever generated/torch holds


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
