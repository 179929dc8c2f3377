"""Interval bounds of expressions, and state invariants by induction.

`bounds(expr, table)` is a conservative interval for `expr` when each symbol lies in the
interval the table gives it (or what its SymPy assumptions say): the true range is inside
it, endpoints may be open. It is what the prover uses to know a denominator is > 0 or a
square root's argument is >= 0, and what turns hyperparameter ranges into state facts:
`state_invariants` finds, for each state, an interval that holds at the first step and is
kept by every update (v >= 0 for second moments, 0 <= mu_product <= 1 for NAdam)."""

from __future__ import annotations

import math

import sympy

from ..expr import GlobalSum, ReduceMax, ReduceMin, ReduceSum
from ..spec import Interval

INF = math.inf
REAL = Interval(-INF, INF, True, True)


def point(c: float) -> Interval:
    return Interval(c, c, False, False)


def is_positive(iv: Interval) -> bool:
    return iv.lo > 0 or (iv.lo == 0 and iv.lo_open)


def is_nonneg(iv: Interval) -> bool:
    return iv.lo >= 0


def within(inner: Interval, outer: Interval) -> bool:
    lo_ok = inner.lo > outer.lo or (inner.lo == outer.lo and (inner.lo_open or not outer.lo_open))
    hi_ok = inner.hi < outer.hi or (inner.hi == outer.hi and (inner.hi_open or not outer.hi_open))
    return lo_ok and hi_ok


def hull(a: Interval, b: Interval) -> Interval:
    lo, lo_open = _pick(min, (a.lo, a.lo_open), (b.lo, b.lo_open))
    hi, hi_open = _pick(max, (a.hi, a.hi_open), (b.hi, b.hi_open))
    return Interval(lo, hi, lo_open, hi_open)


def _pick(choose, *ends: tuple[float, bool]) -> tuple[float, bool]:
    """The extreme endpoint, attained (closed) if any endpoint reaching it is attained."""
    value = choose(v for v, _ in ends)
    return value, all(is_open for v, is_open in ends if v == value)


def _interval(ends_lo, ends_hi) -> Interval:
    lo, lo_open = _pick(min, *ends_lo)
    hi, hi_open = _pick(max, *ends_hi)
    return Interval(lo, hi, lo_open or lo == -INF, hi_open or hi == INF)


# --------------------------------------------------------------------------- arithmetic
def add(a: Interval, b: Interval) -> Interval:
    return Interval(a.lo + b.lo, a.hi + b.hi, a.lo_open or b.lo_open, a.hi_open or b.hi_open)


def neg(a: Interval) -> Interval:
    return Interval(-a.hi, -a.lo, a.hi_open, a.lo_open)


def _times(x: tuple[float, bool], y: tuple[float, bool]) -> tuple[float, bool]:
    """One corner of a product. An attained 0 times anything is an attained 0 (0 * inf is
    taken as 0: the other corners carry the unbounded side)."""
    (a, a_open), (b, b_open) = x, y
    if (a == 0 and not a_open) or (b == 0 and not b_open):
        return 0.0, False
    if a == 0 or b == 0:
        return 0.0, True
    return a * b, a_open or b_open


def mul(a: Interval, b: Interval) -> Interval:
    corners = [
        _times(x, y) for x in ((a.lo, a.lo_open), (a.hi, a.hi_open)) for y in ((b.lo, b.lo_open), (b.hi, b.hi_open))
    ]
    return _interval(corners, corners)


def reciprocal(a: Interval) -> Interval:
    """1/a where it is defined: a closed 0 end is left out (dividing by 0 is not a value;
    each denominator is checked on its own)."""
    if a.hi <= 0 and a.lo < 0:
        return neg(reciprocal(neg(a)))
    if a.lo < 0 or a.hi <= 0:
        return REAL
    a = Interval(a.lo, a.hi, True, a.hi_open) if a.lo == 0 else a
    lo = (0.0, True) if a.hi == INF else (1 / a.hi, a.hi_open)
    hi = (INF, True) if a.lo == 0 else (1 / a.lo, a.lo_open)
    return Interval(lo[0], hi[0], lo[1], hi[1])


def monotone(f, a: Interval, increasing: bool = True) -> Interval:
    lo, hi = (f(a.lo), a.lo_open), (f(a.hi), a.hi_open)
    return _interval([lo, hi], [lo, hi]) if increasing else _interval([hi, lo], [hi, lo])


def _exp(x: float) -> float:
    return 0.0 if x == -INF else INF if x == INF else math.exp(min(x, 700.0))


def _log(x: float) -> float:
    return -INF if x <= 0 else INF if x == INF else math.log(x)


def power(base: Interval, exponent: sympy.Expr, exp_iv: Interval) -> Interval:
    if exponent.is_Integer:
        return _integer_power(base, int(exponent))
    if exponent.is_Rational:
        nonneg = Interval(max(base.lo, 0.0), max(base.hi, 0.0), base.lo_open and base.lo >= 0, base.hi_open)
        p = float(exponent)
        if p > 0:
            return monotone(lambda x: x**p if x != INF else INF, nonneg)
        return reciprocal(monotone(lambda x: x ** (-p) if x != INF else INF, nonneg))
    if is_positive(base):  # b**e = exp(e * log b)
        return monotone(_exp, mul(exp_iv, monotone(_log, base)))
    if base.lo == 0 and is_positive(exp_iv):  # 0**e = 0 is attained; the rest as above
        rest = power(Interval(0.0, base.hi, True, base.hi_open), exponent, exp_iv)
        return hull(point(0.0), rest)
    return REAL


def _integer_power(base: Interval, k: int) -> Interval:
    if k == 0:
        return point(1.0)
    if k < 0:
        return reciprocal(_integer_power(base, -k))
    if k % 2 == 1 or is_nonneg(base):
        return monotone(lambda x: x**k if abs(x) != INF else x, base)
    if base.hi <= 0:
        return monotone(lambda x: x**k if abs(x) != INF else INF, base, increasing=False)
    top = max((abs(base.lo), base.lo_open), (abs(base.hi), base.hi_open))
    return _interval([(0.0, False)], [(top[0] ** k if top[0] != INF else INF, top[1])])


# --------------------------------------------------------------------------- expressions
def symbol_interval(s: sympy.Symbol, table: dict[str, Interval]) -> Interval:
    if s.name in table:
        return table[s.name]
    if s.is_integer and s.is_positive:
        return Interval(1.0, INF, False, True)
    if s.is_positive:
        return Interval(0.0, INF, True, True)
    if s.is_nonnegative:
        return Interval(0.0, INF, False, True)
    return REAL


def bounds(e: sympy.Basic, table: dict[str, Interval]) -> Interval:
    """A conservative interval containing every value of `e`."""
    if e.is_Number:
        return point(float(e))
    if e.is_Symbol:
        return symbol_interval(e, table)
    rule = _RULES.get(type(e))
    if rule is None:
        rule = next((r for cls, r in _RULES.items() if isinstance(e, cls)), None)
    return rule(e, table) if rule else REAL


def _add(e: sympy.Add, table) -> Interval:
    special = _minus_min_rule(e, table)
    if special is not None:
        return special
    out = point(0.0)
    for a in e.args:
        out = add(out, bounds(a, table))
    if out.lo < 0:
        out = _max_term_rule(e, table, out)
    return out


def _max_term_rule(e: sympy.Add, table, out: Interval) -> Interval:
    """Max(x, y, ...) + r >= x + r for each argument: the bound of the best one (AMSGrad's
    maximum(v_max, v) - v >= 0)."""
    for term in e.args:
        if isinstance(term, sympy.Max):
            rest = e - term
            for arg in term.args:
                low = bounds(sympy.expand(arg + rest), table)
                if low.lo > out.lo or (low.lo == out.lo and low.lo_open and not out.lo_open):
                    out = Interval(low.lo, out.hi, low.lo_open, out.hi_open)
    return out


def _minus_min_rule(e: sympy.Add, table) -> Interval | None:
    """X - c*amin(X) with c in [0, 1] is >= (1 - c)*amin(X): SET-Adam's down-translation."""
    for term in e.args:
        coeff, rest = term.as_independent(ReduceMin, as_Add=False)
        if not isinstance(rest, ReduceMin):
            continue
        others = e - term
        if sympy.expand(others - rest.args[0]) != 0:
            continue
        c = neg(bounds(coeff, table))
        if c.lo >= 0 and c.hi <= 1:
            low = mul(add(point(1.0), neg(c)), bounds(rest.args[0], table))
            return Interval(low.lo, INF, low.lo_open, True)
    return None


def _mul(e: sympy.Mul, table) -> Interval:
    out = point(1.0)
    for a in e.args:
        out = mul(out, bounds(a, table))
    return out


def _pow(e: sympy.Pow, table) -> Interval:
    base, exponent = e.args
    return power(bounds(base, table), exponent, bounds(exponent, table))


def _minmax(choose):
    """Max: above its largest lower bound, strictly if any argument is strictly there; its
    upper end is attained if any argument attains it. Min mirrors this."""
    is_max = choose is max

    def rule(e, table) -> Interval:
        ivs = [bounds(a, table) for a in e.args]
        lo = choose(iv.lo for iv in ivs)
        hi = choose(iv.hi for iv in ivs)
        lo_flags = [iv.lo_open for iv in ivs if iv.lo == lo]
        hi_flags = [iv.hi_open for iv in ivs if iv.hi == hi]
        lo_open = any(lo_flags) if is_max else all(lo_flags)
        hi_open = all(hi_flags) if is_max else any(hi_flags)
        return Interval(lo, hi, lo_open, hi_open)

    return rule


def _abs(e, table) -> Interval:
    iv = bounds(e.args[0], table)
    if is_nonneg(iv):
        return iv
    if iv.hi <= 0:
        return neg(iv)
    top = hull(neg(iv), iv)
    return Interval(0.0, top.hi, False, top.hi_open)


def _sign(e, table) -> Interval:
    iv = bounds(e.args[0], table)
    if is_positive(iv):
        return point(1.0)
    return Interval(0.0 if is_nonneg(iv) else -1.0, 1.0, False, False)


def _piecewise(e, table) -> Interval:
    out = None
    for branch in e.args:
        iv = bounds(branch.expr, table)
        out = iv if out is None else hull(out, iv)
    return out


def _reduce_sum(e, table) -> Interval:
    """A sum of one or more elements each in [lo, hi]: the sign of the bounds survives."""
    iv = bounds(e.args[0], table)
    lo = (iv.lo, iv.lo_open) if iv.lo >= 0 else (-INF, True)
    hi = (iv.hi, iv.hi_open) if iv.hi <= 0 else (INF, True)
    return Interval(lo[0], hi[0], lo[1], hi[1])


def _floor(e, table) -> Interval:
    iv = bounds(e.args[0], table)
    lo = float(math.floor(iv.lo)) if math.isfinite(iv.lo) else iv.lo
    hi = float(math.floor(iv.hi)) if math.isfinite(iv.hi) else iv.hi
    return Interval(lo, hi, not math.isfinite(lo), not math.isfinite(hi))


def _mod(e, table) -> Interval:
    """Floored: a % b lies in [0, b) for b > 0."""
    b = bounds(e.args[1], table)
    if is_positive(b):
        return Interval(0.0, b.hi, False, True)
    return REAL


_RULES = {
    sympy.Add: _add,
    sympy.Mul: _mul,
    sympy.Pow: _pow,
    sympy.Max: _minmax(max),
    sympy.Min: _minmax(min),
    sympy.Abs: _abs,
    sympy.sign: _sign,
    sympy.exp: lambda e, t: monotone(_exp, bounds(e.args[0], t)),
    sympy.log: lambda e, t: monotone(_log, bounds(e.args[0], t)),
    sympy.Piecewise: _piecewise,
    sympy.floor: _floor,
    sympy.Mod: _mod,
    ReduceSum: _reduce_sum,
    GlobalSum: _reduce_sum,
    ReduceMin: lambda e, t: bounds(e.args[0], t),
    ReduceMax: lambda e, t: bounds(e.args[0], t),
}


# --------------------------------------------------------------------------- invariants
def state_invariants(
    inits: dict[str, sympy.Expr], updates: dict[str, sympy.Expr], table: dict[str, Interval]
) -> dict[str, Interval]:
    """For each state (by symbol name), an interval that holds initially and that every
    update keeps, given the others' intervals: induction on the step. Start from the init
    intervals and grow them by the update's image twice; an endpoint still moving after
    that is widened to infinity, after which the intervals are checked once more."""
    hyp = {n: bounds(e, table) for n, e in inits.items()}
    for attempt in range(4):
        image = {n: bounds(e, {**table, **hyp}) for n, e in updates.items()}
        if all(within(image[n], hyp[n]) for n in hyp):
            return hyp
        grown = {n: hull(hyp[n], image[n]) for n in hyp}
        hyp = grown if attempt < 2 else {n: _widen(hyp[n], grown[n]) for n in hyp}
    return {n: REAL for n in hyp}


def _widen(old: Interval, new: Interval) -> Interval:
    lo = (old.lo, old.lo_open) if new.lo == old.lo else (-INF, True)
    hi = (old.hi, old.hi_open) if new.hi == old.hi else (INF, True)
    return Interval(lo[0], hi[0], lo[1] or new.lo_open, hi[1] or new.hi_open)


def assumptions_of(iv: Interval) -> dict:
    """SymPy assumptions a symbol confined to `iv` may carry."""
    if is_positive(iv):
        return {"positive": True}
    if is_nonneg(iv):
        return {"nonnegative": True}
    return {}
