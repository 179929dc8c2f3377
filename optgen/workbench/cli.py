"""`optgen compare SPEC...`: the command line of the comparison (compare.py runs it, plots.py
draws it, report.py writes it down)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from ..errors import SetupError, SpecError
from .factory import _keywords, optimizer_class, parse_spec_arg

DEFAULT_OUT = "optgen-compare"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "specs",
        nargs="+",
        metavar="SPEC",
        help="a catalog name or a spec path, with hyperparameters after a colon: adam:lr=1e-3,betas=(0.9,0.99) "
        "(a given lr skips that optimizer's learning-rate search)",
    )
    p.add_argument("-o", "--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0, help="the seed of every run (default: 0)")
    p.add_argument(
        "--functions", metavar="F,F", help="2-D functions to run (default: all): " + ", ".join(_function_names())
    )
    p.add_argument("--steps", type=int, default=200, help="steps on each 2-D function (default: 200)")
    p.add_argument("--digits-steps", type=int, default=300, help="training steps on digits per seed (default: 300)")
    p.add_argument("--seeds", type=int, default=3, help="digits seeds (default: 3)")
    p.add_argument("--no-digits", action="store_true", help="skip the digits training task")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _function_names() -> list[str]:
    # the names only; problems.py imports torch, which `optgen --help` should not pay for
    return ["rosenbrock", "rastrigin", "beale", "saddle", "quadratic"]


def contenders(args: list[str]):
    from .compare import Contender

    out, seen = [], set()
    for arg in args:
        name, hyper = parse_spec_arg(arg)
        path = Path(name)
        cls = optimizer_class(path if name.endswith((".yaml", ".yml")) else name)
        unknown = sorted(set(hyper) - set(_keywords(cls)))
        if unknown:
            raise SpecError(None, f"{arg}: {cls.__name__} has no hyperparameter {', '.join(unknown)}")
        label = name if not name.endswith((".yaml", ".yml")) else cls.__name__
        if hyper:
            label += "(" + arg.partition(":")[2] + ")"
        while label in seen:
            label += "'"
        seen.add(label)
        out.append(Contender(label, cls, hyper))
    return out


def _require() -> None:
    import importlib.util

    missing = [m for m in ("matplotlib", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise SetupError(
            f"optgen compare needs {' and '.join(missing)}: pip install 'optgen[workbench]' "
            "(matplotlib and scikit-learn)"
        )


def _settings(args):
    from .compare import Settings
    from .problems import FUNCTIONS

    functions = tuple(FUNCTIONS)
    if args.functions:
        functions = tuple(f.strip() for f in args.functions.split(",") if f.strip())
        bad = [f for f in functions if f not in FUNCTIONS]
        if bad:
            raise SpecError(None, f"no 2-D function {', '.join(bad)}; there are {', '.join(FUNCTIONS)}")
    for name in ("steps", "digits_steps", "seeds"):
        if getattr(args, name) < 1:
            raise SpecError(None, f"--{name.replace('_', '-')} must be at least 1")
    return Settings(
        functions=functions,
        steps_2d=args.steps,
        digits=not args.no_digits,
        digits_steps=args.digits_steps,
        digits_search_steps=min(150, args.digits_steps),
        seeds=args.seeds,
        seed=args.seed,
    )


def _command(args) -> str:
    """The command line that reproduces the run (options at their defaults left out)."""
    parts = ["optgen", "compare", *args.specs]
    defaults = {"seed": 0, "functions": None, "steps": 200, "digits_steps": 300, "seeds": 3, "no_digits": False}
    for name, default in defaults.items():
        value = getattr(args, name)
        if value != default:
            flag = "--" + name.replace("_", "-")
            parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def cli(args) -> int:
    _require()
    import torch

    from . import plots, report
    from .compare import compare
    from .progress import Progress

    settings = _settings(args)
    entrants = contenders(args.specs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same numbers and steadier timings on any machine
    try:
        progress = Progress(settings.units(entrants), enabled=False if args.quiet else None)
        result = compare(entrants, settings, progress)
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    written = []
    for name in settings.functions:
        written += plots.function_figure(result, name, out)
    if result.digits:
        written += plots.digits_figure(result, out)
    written += report.write_all(result, out, _command(args))
    print(
        f"compared {len(entrants)} optimizer(s) in {result.seconds:.1f}s (+{time.perf_counter() - start:.1f}s drawing): "
        f"{out / 'report.md'} and {len(written) - 1} more file(s) in {out}"
    )
    return 0
