"""Backends: each a subpackage with a printer, a config and templates/<name>/.

A backend module provides:
    NAME: str                      # "torch", "triton", "cpp", "latex"
    render(spec) -> dict[str, str] # file name -> text, written under generated/<NAME>/
and optionally
    render_index(specs) -> dict[str, str]   # catalog-wide files (an __init__.py, a sheet)
    compile_spec(spec) -> object             # load the rendered code in memory
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
from types import ModuleType

from ..errors import SetupError

# Order matters: later backends may import what earlier ones render (torch imports triton lazily).
KNOWN = ("torch", "triton", "cpp", "latex")


def available() -> list[ModuleType]:
    """The backends present in this installation, in build order."""
    out = []
    for name in KNOWN:
        try:
            out.append(importlib.import_module(f".{name}", __name__))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return out


def get(name: str) -> ModuleType:
    for module in available():
        if module.NAME == name:
            return module
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(m.NAME for m in available())}")


def compile_spec(spec, backend: str = "torch"):
    module = get(backend)
    if backend in ("triton", "cpp"):
        raise ValueError(
            f"the {backend} kernels are the fused path of the torch class: optgen.compile(spec)(params, fused=True)"
        )
    if not hasattr(module, "compile_spec"):
        raise ValueError(f"backend {backend!r} produces documents, not an optimizer class")
    return module.compile_spec(spec)


def format_python(text: str, line_length: int) -> str:
    """Generated Python as ruff formats it. ruff is a pinned dependency, so a build is
    byte-for-byte reproducible; it is found through its own package (never on PATH, which
    differs between shells and machines), and a build without it is an error, never
    silently unformatted."""
    result = subprocess.run(
        [_ruff(), "format", "--quiet", "--isolated", "--no-cache", f"--line-length={line_length}", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,  # its error is reported below, with ruff's message
    )
    if result.returncode != 0:
        raise SetupError(f"ruff could not format generated code: {result.stderr.strip()}")
    return result.stdout


@functools.cache
def _ruff() -> str:
    try:
        from ruff import find_ruff_bin
    except ImportError:
        raise SetupError(
            "optgen formats generated code with ruff, which is not installed: pip install 'ruff==0.17.6'"
        ) from None
    return os.fsdecode(find_ruff_bin())
