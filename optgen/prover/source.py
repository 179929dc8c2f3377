"""Claim expressions: YAML nodes (with locations), plain text or SymPy, into SymPy over a
symbol table. Text goes through optgen.parse's ast -> SymPy converter; nothing is eval'ed."""

from __future__ import annotations

import math
from fractions import Fraction

import sympy

from ..errors import Loc, SpecError
from ..parse import ExprConverter, Source, parse_python, source_of
from ..yamlpos import Node

Text = Node | str | int | float | sympy.Basic


def loc_of(value: Text, default: Loc | None = None) -> Loc | None:
    return value.loc if isinstance(value, Node) else default


def expr_from(
    value: Text, symbols: dict[str, sympy.Basic], what: str, loc: Loc | None = None, condition: bool = False
) -> sympy.Basic:
    """`value` as SymPy over `symbols` (name -> symbol or expression). Names not in the table
    are errors at their location."""
    raw = value.value if isinstance(value, Node) else value
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, dict)):
        raise SpecError(loc_of(value, loc), f"{what}: expected an expression, got {_describe(raw)}")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise SpecError(loc_of(value, loc), f"{what}: numbers must be finite")
        frac = Fraction(repr(raw)) if isinstance(raw, float) else Fraction(raw)
        return sympy.Rational(frac.numerator, frac.denominator)
    if isinstance(raw, sympy.Basic):
        return _rebind(raw, symbols, what, loc)
    source = source_of(value) if isinstance(value, Node) else Source(raw, [loc or Loc(f"<{what}>", 1, 1)])
    tree = parse_python(source, "eval", what)
    return ExprConverter(source, symbols, set(), what).convert(tree.body, condition=condition)


def _rebind(expr: sympy.Basic, symbols: dict, what: str, loc: Loc | None) -> sympy.Basic:
    """A SymPy expression handed in by a caller: its symbols are matched by name."""
    unknown = sorted(s.name for s in expr.free_symbols if s.name not in symbols)
    if unknown:
        raise SpecError(loc, f"{what}: unknown name(s) {', '.join(unknown)}")
    return expr.xreplace({s: symbols[s.name] for s in expr.free_symbols})


def _describe(raw) -> str:
    if raw is None:
        return "nothing"
    return {bool: "a boolean", list: "a list", dict: "a mapping"}.get(type(raw), type(raw).__name__)
