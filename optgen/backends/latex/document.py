"""Documents: a standalone .tex per spec and the catalog formula sheet, from templates/latex/.

Every string a template prints is escaped for LaTeX unless it is a `Tex` (LaTeX this
backend produced from validated `tex` fields and SymPy), so spec text cannot inject TeX."""

from __future__ import annotations

import math
from functools import lru_cache

import jinja2

from ... import catalog
from ...spec import Interval, Spec
from . import algorithm
from .claims import propositions
from .printer import decimal
from .text import escape


class Tex(str):
    """LaTeX source that is printed as is."""


def _finalize(value) -> str:
    if isinstance(value, Tex):
        return value
    if value is None:
        return ""
    return escape(str(value))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(catalog.templates_dir() / "latex")),
        block_start_string=r"\BLOCK{",
        block_end_string="}",
        variable_start_string=r"\VAR{",
        variable_end_string="}",
        comment_start_string=r"\#{",
        comment_end_string="}",
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
    )


def interval_tex(interval: Interval) -> str:
    def end(v: float) -> str:
        return r"\infty" if v == math.inf else r"-\infty" if v == -math.inf else decimal(v)

    left = "(" if interval.lo_open else "["
    right = ")" if interval.hi_open else "]"
    return f"{left}{end(interval.lo)}, {end(interval.hi)}{right}"


def _hypers(spec: Spec) -> list[dict]:
    return [
        {
            "key": h.key,
            "symbol": Tex(algorithm.hyper_symbol(spec, h)),
            "default": Tex(algorithm.default_tex_value(spec, h)),
            "range": Tex("" if h.captured else interval_tex(h.range)),
            "doc": h.doc,
        }
        for h in spec.hyperparameters.values()
    ]


def _options_text(options: dict[str, bool]) -> str:
    return ", ".join(f"{name} = {str(value).lower()}" for name, value in options.items())


def context(spec: Spec) -> dict:
    """What the algorithm template needs to know about one spec."""
    claims = propositions(spec)
    equations = algorithm.align_env(spec)
    return {
        "name": spec.name,
        "summary": spec.summary,
        "paper": spec.paper,
        "parity": spec.parity,
        "notes": " ".join(spec.notes.split()),
        "hypers": _hypers(spec),
        "has_docs": any(h.doc for h in spec.hyperparameters.values()),
        "options": [{"name": o.name, "default": str(o.default).lower(), "doc": o.doc} for o in spec.options.values()],
        "stem": spec.module_name,
        # `aligned` in a display, not `align*`: the box is one block that never breaks across pages
        "box": Tex("\\[\n" + algorithm.aligned(algorithm.box_lines(spec), indent="") + "\n\\]"),
        "equations": Tex(equations),
        "default_options": _options_text(spec.default_options()),
        "primes": "'" in equations,
        "prover": claims is not None,
        "claims": [
            {"statement": Tex(c.statement), "mapping": [(Tex(a), Tex(b)) for a, b in c.mapping]} for c in claims or []
        ],
    }


def render_spec(spec: Spec) -> str:
    """A standalone LaTeX document for one spec; `\\input` into another document, it gives
    the algorithm box alone."""
    return environment().get_template("spec.tex.j2").render(spec=context(spec))


def render_sheet(specs: list[Spec], title: str = "optgen formula sheet") -> str:
    """The formula sheet: a title page listing the algorithms, then one page per algorithm
    (one algorithm: no title page)."""
    return environment().get_template("sheet.tex.j2").render(title=title, specs=[context(s) for s in specs])
