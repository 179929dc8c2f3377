"""optgen: a compiler for deep-learning optimizers.

spec = optgen.load("adam")           # a catalog name, a path, or YAML text
report = optgen.check(spec)          # .ok, .findings
Adam = optgen.compile(spec)          # a torch.optim.Optimizer subclass
opt = optgen.create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
optgen.available()                   # the catalog names
"""

from __future__ import annotations

from pathlib import Path

from . import catalog
from .check import Report, check
from .errors import CompileError, Loc, SpecError
from .spec import Spec
from .workbench.factory import available, create_optimizer

__all__ = [
    "CompileError",
    "Loc",
    "Report",
    "Spec",
    "SpecError",
    "available",
    "check",
    "compile",
    "create_optimizer",
    "latex",
    "load",
    "prove",
]
__version__ = "0.1.0"


def load(name_or_path: str | Path) -> Spec:
    """A spec from a catalog name ("adan"), a path to a YAML file, or YAML text."""
    from .parse import load_path, loads

    if isinstance(name_or_path, Path):
        return load_path(name_or_path)
    text = str(name_or_path)
    if "\n" in text or text.lstrip().startswith("name:"):
        return loads(text, "<string>")
    path = catalog.path_of(text)
    if path is not None:
        return load_path(path)
    if Path(text).exists() or text.endswith((".yaml", ".yml")):
        return load_path(text)
    raise SpecError(None, f"no catalog spec named {text!r} and no such file; catalog: {', '.join(catalog.names())}")


def _as_spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load(spec)


def compile(spec: Spec | str | Path, backend: str = "torch"):
    """The optimizer class for a spec, rendered and loaded in memory (no build step)."""
    from .backends import compile_spec

    return compile_spec(_as_spec(spec), backend)


def prove(a, b=None, mapping=None, **kwargs):
    """Prove a claim: two specs (or specialisations) equivalent under a state map."""
    from .prover import prove as _prove

    return _prove(a, b, mapping=mapping, **kwargs)


def latex(spec: Spec | str | Path) -> str:
    """The LaTeX algorithm box and equations of a spec."""
    from .backends.latex import render_spec

    return render_spec(_as_spec(spec))


def __getattr__(name: str):
    if name == "optimizers":
        import importlib

        return importlib.import_module(".optimizers", __name__)
    raise AttributeError(name)
