"""The compiled catalog: `optgen.optimizers.Adam`, `optgen.optimizers.Adan`, ...

Each class is imported on first use from generated/torch/<name>.py (committed; rewritten by
`optgen build`); the class name lowercased is the catalog file stem.
"""

from __future__ import annotations

from . import catalog


def _path(name: str):
    return catalog.generated_dir() / "torch" / f"{name.lower()}.py"


def __getattr__(name: str):
    if name.startswith("_") or not _path(name).is_file():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (catalog: {', '.join(__all__)})")
    from .backends.torch import load_file

    module = load_file(_path(name), f"optgen.generated.torch.{name.lower()}")
    cls = getattr(module, name, None)
    if isinstance(cls, type):
        globals()[name] = cls
        return cls
    raise AttributeError(f"generated/torch/{name.lower()}.py defines no class {name!r}")


def _class_names() -> list[str]:
    names = []
    for path in sorted((catalog.generated_dir() / "torch").glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("class ") and "(Optimizer)" in line:
                names.append(line[len("class ") : line.index("(")])
    return names


__all__ = _class_names()  # noqa: PLE0605 - the catalog is whatever generated/torch holds


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
