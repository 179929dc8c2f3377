"""The LaTeX backend: a document per spec, the catalog formula sheet and docstring math.

render(spec)         -> {"<stem>.tex": a standalone document}      (generated/latex/)
render_index(specs)  -> {"catalog.tex": the formula sheet}
render_spec(spec)    -> the standalone document (optgen.latex)
math_rst(spec)       -> a `.. math::` block for docstrings
build_picture(specs, path) -> writes a PNG of one page of the sheet
cli(args)            -> `optgen doc [SPEC...] -o FILE.pdf|FILE.tex`
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from ...spec import Spec
from . import config
from .docstring import math_rst
from .document import render_sheet, render_spec
from .pdf import LatexError, compile_pdf, page_png, pdf_text

NAME = "latex"
SHEET = "catalog.tex"

__all__ = ["NAME", "build_picture", "cli", "math_rst", "render", "render_index", "render_sheet", "render_spec"]


def render(spec: Spec) -> dict[str, str]:
    return {f"{spec.module_name}.tex": render_spec(spec)}


def render_index(specs: list[Spec]) -> dict[str, str]:
    return {SHEET: render_sheet(specs)}


def build_picture(specs: list[Spec], path: str | Path, name: str | None = None) -> int:
    """Write a PNG of the sheet's page where algorithm `name` (default: Adam when it is in
    `specs`, else the first) starts; returns that page number."""
    names = [s.name for s in specs]
    target = name or ("Adam" if "Adam" in names else names[0])
    pdf = compile_pdf(render_sheet(specs))
    heading = re.compile(rf"^\s*{names.index(target) + 1}\s+{re.escape(target)}\s*$", re.MULTILINE)
    page = next(i for i, text in enumerate(pdf_text(pdf), start=1) if heading.search(text))
    png = page_png(pdf, page, config.PNG_DPI)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(png)
    return page


def cli(args) -> int:
    """`optgen doc`: the formula sheet of the named specs (all of the catalog by default)."""
    from ... import catalog, load
    from ...check import check

    names = args.specs or catalog.names()
    specs = [load(Path(n) if n.endswith((".yaml", ".yml")) else n) for n in names]
    failed = [r for r in (check(s) for s in specs) if not r.ok]
    for report in failed:
        for finding in report.findings:
            print(finding)
    if failed:
        print(f"doc stopped: {len(failed)} spec(s) failed their checks")
        return 1
    out = Path(args.output)
    if out.suffix not in (".tex", ".pdf"):
        print(f"optgen doc: the output must end in .pdf or .tex, got {out.name!r}", file=sys.stderr)
        return 2
    if out.is_symlink() or (out.exists() and not out.is_file()):
        print(f"optgen doc: {out} is a link or not a file; refusing to write through it", file=sys.stderr)
        return 2
    tex = render_sheet(specs)
    try:
        data = tex.encode("utf-8") if out.suffix == ".tex" else compile_pdf(tex)
    except LatexError as exc:
        print(f"optgen doc: {exc}", file=sys.stderr)
        return 1
    _replace(out, data)
    print(f"wrote {out} ({len(specs)} algorithm(s))")
    return 0


def _replace(out: Path, data: bytes) -> None:
    """Write `out` as a new file beside it, renamed over it: never through a link planted at
    `out`, and never half-written."""
    fd, staging = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
