"""The catalog: the specs shipped with optgen (specs/ in a checkout, optgen/specs in a wheel)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_dir(*candidates: Path) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]


def specs_dir() -> Path:
    return _first_dir(_PACKAGE / "specs", _PACKAGE.parent / "specs")


def templates_dir() -> Path:
    return _first_dir(_PACKAGE / "templates", _PACKAGE.parent / "templates")


def generated_dir() -> Path:
    return _first_dir(_PACKAGE / "generated", _PACKAGE.parent / "generated")


def is_checkout() -> bool:
    """Whether optgen runs from a source checkout (specs/ beside the package, a pyproject),
    where `optgen build` may write generated/; an installed package is never written."""
    root = _PACKAGE.parent
    return specs_dir() == root / "specs" and (root / "pyproject.toml").is_file()


def names() -> list[str]:
    return sorted(p.stem for p in specs_dir().glob("*.yaml"))


def path_of(name: str) -> Path | None:
    if not name.replace("_", "").isalnum():
        return None
    path = specs_dir() / f"{name.lower()}.yaml"
    return path if path.is_file() else None


def is_catalog_path(path: Path) -> bool:
    return path.resolve().parent == specs_dir().resolve()
