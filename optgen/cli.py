"""The `optgen` command line. Exit codes: 0 ok, 1 a claim or proof came out other than
expected, 2 bad input (a spec that any stage refuses, reported as file:line:col),
3 an internal error (a bug in optgen: one line naming the stage, never a traceback)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from . import catalog
from .errors import SetupError, SpecError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    pass


def _specs(names: list[str]):
    from . import load

    chosen = names or catalog.names()
    return [load(Path(n) if n.endswith((".yaml", ".yml")) else n) for n in chosen]


# --------------------------------------------------------------------------- commands
def cmd_list(args) -> int:
    from . import load

    for name in catalog.names():
        spec = load(name)
        print(f"{name:<12} {spec.name:<12} {spec.parity:<30} {spec.summary}")
    return EXIT_OK


def cmd_check(args) -> int:
    from .check import check

    start = time.perf_counter()
    failed = refused = 0
    specs = _specs(args.specs)
    for spec in specs:
        report = check(spec)
        for finding in report.findings:
            print(finding)
        failed += not report.ok
        refused += report.refused
        if args.verbose:
            facts = ", ".join(sorted(report.nonneg)) or "none"
            print(f"{spec.name}: {'ok' if report.ok else 'FAILED'} (non-negative states: {facts})")
    status = "ok" if not failed else f"{failed} failed"
    print(f"checked {len(specs)} spec(s) in {time.perf_counter() - start:.2f}s: {status}")
    return _exit_code(failed, refused)


def _exit_code(failed: int, refused: int) -> int:
    """2 when a spec is refused (its findings are located errors), 1 when only claims failed."""
    return EXIT_BAD_INPUT if refused else EXIT_FAILED if failed else EXIT_OK


def cmd_show(args) -> int:
    from .lower import lower
    from .show import show

    (spec,) = _specs([args.spec])
    options = {}
    for item in args.option or []:
        key, _, value = item.partition("=")
        if key not in spec.options:
            raise UsageError(f"{spec.name} has no option {key!r}; options: {', '.join(spec.options) or 'none'}")
        options[key] = value.lower() in ("1", "true", "yes", "on", "")
    print(show(lower(spec, options)))
    return EXIT_OK


def cmd_build(args) -> int:
    from .build import OutputError, check_all, check_out, default_out, render_all, stale_files, write_tree

    start = time.perf_counter()
    if not args.out and not args.check and not catalog.is_checkout():
        raise UsageError(
            "optgen is installed as a package, not run from a checkout: give --out DIR "
            "(a build never writes into the installed package)"
        )
    specs = _specs(args.specs)
    out = Path(args.out) if args.out else default_out()
    if not args.check:
        try:  # a folder it may not write into is refused before a minute of compiling
            check_out(out)
        except OutputError as exc:
            print(f"optgen: {exc}; nothing was written", file=sys.stderr)
            return EXIT_BAD_INPUT
    reports = check_all(specs)
    bad = [r for r in reports if not r.ok]
    for report in bad:
        for finding in report.findings:
            print(finding)
    if bad:
        print(f"build stopped: {len(bad)} spec(s) failed their checks; nothing was written")
        return _exit_code(len(bad), sum(r.refused for r in bad))
    whole = not args.specs
    files = render_all(specs, whole_catalog=whole)
    if args.check:
        stale = stale_files(files, out, prune=whole)
        if stale:
            print(f"{len(stale)} generated file(s) are stale under {out}:")
            for rel in stale:
                print(f"  {rel}")
            print("run `optgen build` and commit the result")
            return EXIT_FAILED
        print(f"{out}: {len(files)} generated file(s) are fresh")
        return EXIT_OK
    try:
        out = write_tree(files, out, prune=whole)
    except OutputError as exc:
        print(f"optgen: {exc}; nothing was written", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"built {len(specs)} spec(s), {len(files)} file(s) in {out} ({time.perf_counter() - start:.1f}s)")
    if whole and not args.out and _has(".backends.latex"):
        _build_picture(specs)
    return EXIT_OK


def _build_picture(specs) -> None:
    """docs/formula-sheet.png, the README's picture of the catalog sheet (needs pdflatex)."""
    import shutil

    from .backends.latex import build_picture

    if not (shutil.which("pdflatex") and shutil.which("pdftoppm")):
        print("docs/formula-sheet.png not refreshed: pdflatex or pdftoppm is not installed")
        return
    path = catalog.specs_dir().parent / "docs" / "formula-sheet.png"
    page = build_picture(specs, path)
    print(f"{path}: page {page} of the formula sheet")


def _module_command(module: str, func: str):
    def run(args) -> int:
        return getattr(importlib.import_module(module, __package__), func)(args)

    return run


def _has(module: str) -> bool:
    """Whether an optional stage is installed, without importing it (bench imports torch)."""
    return importlib.util.find_spec(module, __package__) is not None


# --------------------------------------------------------------------------- parser
def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; `command` (the first argument) lets a subcommand with heavy
    imports (bench) load only when it runs."""
    p = argparse.ArgumentParser(prog="optgen", description="A compiler for deep-learning optimizers.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the catalog").set_defaults(run=cmd_list)
    c = sub.add_parser("check", help="check specs (all of the catalog by default)")
    c.add_argument("specs", nargs="*", metavar="SPEC")
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(run=cmd_check)
    s = sub.add_parser("show", help="print the lowered program of a spec")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("-o", "--option", action="append", metavar="NAME=BOOL", help="set an option, e.g. -o amsgrad=true")
    s.set_defaults(run=cmd_show)
    b = sub.add_parser("build", help="check and render every backend into generated/")
    b.add_argument("specs", nargs="*", metavar="SPEC")
    b.add_argument("--out", metavar="DIR", help="output folder (default: generated/ beside specs/)")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 if generated files are stale")
    b.set_defaults(run=cmd_build)
    if _has(".prover"):
        pr = sub.add_parser("prove", help="prove the claims of specs")
        pr.add_argument("specs", nargs="*", metavar="SPEC")
        pr.add_argument("-v", "--verbose", action="store_true")
        pr.set_defaults(run=_module_command(".prover", "cli"))
    if _has(".backends.latex"):
        d = sub.add_parser("doc", help="a formula sheet (PDF or TeX)")
        d.add_argument("specs", nargs="*", metavar="SPEC")
        d.add_argument("-o", "--output", required=True, metavar="FILE.pdf|FILE.tex")
        d.set_defaults(run=_module_command(".backends.latex", "cli"))
    if _has(".bench"):
        be = sub.add_parser("bench", help="benchmark generated optimizers against the references")
        if command == "bench":
            importlib.import_module(".bench", __package__).add_arguments(be)
        be.set_defaults(run=_module_command(".bench", "cli"))
    co = sub.add_parser("compare", help="compare optimizers on 2-D test functions and a small training task")
    if command == "compare":
        importlib.import_module(".workbench.cli", __package__).add_arguments(co)
    co.set_defaults(run=_module_command(".workbench.cli", "cli"))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv[0] if argv else None).parse_args(argv)
    try:
        return args.run(args)
    except SpecError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SetupError as exc:
        print(f"optgen: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"optgen: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in optgen: say where, briefly; OPTGEN_DEBUG=1 re-raises
        import os

        if os.environ.get("OPTGEN_DEBUG"):
            raise
        from .check import InternalError

        what = (
            str(exc)
            if isinstance(exc, InternalError)
            else f"optgen internal error in `optgen {args.command}`: {type(exc).__name__}: {exc}"
        )
        print(f"{what} (please report it; OPTGEN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
