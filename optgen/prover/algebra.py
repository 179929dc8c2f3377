"""Symbolic steps of a proof: deciding that a difference is identically zero, and the sound
rewrites that help SymPy get there.

SymPy only splits sqrt(a*b) into sqrt(a)*sqrt(b) when it knows the factors are >= 0, and it
knows nothing of hyperparameter ranges beyond a symbol's sign (beta2 < 1 is not an
assumption it can hold). `split_radicals` does the split wherever the interval bounds show
it valid, so that sqrt(v / (1 - beta2**t)) and sqrt(v) / sqrt(1 - beta2**t) meet."""

from __future__ import annotations

import itertools

import sympy

from ..expr import REDUCTIONS, ReduceMax, ReduceMin, ReduceSum
from ..spec import Interval
from .bounds import bounds, is_nonneg, is_positive

MAX_OPS_FOR_SIMPLIFY = 400  # simplify() on larger differences takes too long to be worth it
MAX_CASE_ATOMS = 3


# --------------------------------------------------------------------------- rewrites
def split_radicals(expr: sympy.Expr, table: dict[str, Interval]) -> sympy.Expr:
    """(a*b)**p -> a**p * b**p and (a**k)**p -> a**(k*p) where the bounds make it valid:
    every factor >= 0 (> 0 under a negative power)."""

    def ok(factor, p) -> bool:
        iv = bounds(factor, table)
        return is_positive(iv) if p.is_negative else is_nonneg(iv)

    def rewrite(e):
        if not isinstance(e, sympy.Pow) or e.exp.is_Integer or not e.exp.is_Rational:
            return e
        base, p = e.args
        if isinstance(base, sympy.Mul) and all(ok(f, p) for f in base.args):
            return sympy.Mul(*[rewrite(f**p) for f in base.args])
        if isinstance(base, sympy.Pow) and base.exp.is_Integer and ok(base.base, p):
            return base.base ** (base.exp * p)
        return e

    return _bottom_up(expr, rewrite)


def pull_scalars(expr: sympy.Expr, element: set[str], positive: set[str] = frozenset()) -> sympy.Expr:
    """Linearity of reductions: sum(c*x + y) = c*sum(x) + sum(y) for c constant over the
    tensor; amin/amax(c*x) = c*amin/amax(x) for c > 0 (names in `positive`)."""

    def scalar(e) -> bool:
        return not any(s.name in element for s in e.free_symbols) and not e.has(*REDUCTIONS)

    def rewrite(e):
        if isinstance(e, ReduceSum):
            out = []
            for term in sympy.Add.make_args(sympy.expand(e.args[0])):
                c, x = term.as_independent(*[s for s in term.free_symbols if s.name in element], as_Add=False)
                out.append(c * ReduceSum(x))
            return sympy.Add(*out)
        if isinstance(e, (ReduceMin, ReduceMax)):
            factors = sympy.Mul.make_args(e.args[0])
            outside = [f for f in factors if scalar(f) and all(s.name in positive for s in f.free_symbols)]
            inside = [f for f in factors if f not in outside]
            if outside:
                return sympy.Mul(*outside) * type(e)(sympy.Mul(*inside))
        return e

    return _bottom_up(expr, rewrite)


def drop_positive_factors(expr: sympy.Expr, positive: set[str]) -> sympy.Expr:
    """A comparison with 0 is unchanged by a positive factor: `c**2 * x > 0` is `x > 0` for
    c > 0 (names in `positive`), so that a where(...) guard reads the same once scaled."""

    def rewrite(e):
        if not isinstance(e, sympy.core.relational.Relational):
            return e
        difference = sympy.factor_terms(e.lhs - e.rhs)
        kept = [
            f
            for f in sympy.Mul.make_args(difference)
            if not (f.free_symbols and {s.name for s in f.free_symbols} <= positive and f.is_positive)
        ]
        if len(kept) == len(sympy.Mul.make_args(difference)):
            return e
        return e.func(sympy.Mul(*kept), 0)

    return _bottom_up(expr, rewrite)


def _bottom_up(expr, rewrite):
    if not expr.args or expr.is_Atom:
        return rewrite(expr)
    args = [_bottom_up(a, rewrite) for a in expr.args]
    rebuilt = expr.func(*args) if any(a is not b for a, b in zip(args, expr.args)) else expr
    return rewrite(rebuilt)


def resolve_minmax(expr: sympy.Expr, ordered: list[tuple[sympy.Expr, sympy.Expr]], table) -> sympy.Expr:
    """Drop Max/Min arguments that a known ordering `small <= big` decides (a clamp that
    a claim's `when:` says is inactive)."""
    if not ordered:
        return expr

    def same(x, y) -> bool:  # the condition is written over the same values
        return x == y or is_zero(x - y, table, thorough=False)

    def known(small, big) -> bool:
        return any(same(small, s) and same(big, b) for s, b in ordered)

    def rewrite(e):
        if not isinstance(e, (sympy.Max, sympy.Min)):
            return e
        args = list(e.args)
        for x, y in itertools.permutations(e.args, 2):
            if x in args and y in args and (known(x, y) if isinstance(e, sympy.Max) else known(y, x)):
                args.remove(x)  # Max: x <= y drops x; Min: y <= x drops x
        return e.func(*args) if len(args) < len(e.args) else e

    return _bottom_up(expr, rewrite)


# --------------------------------------------------------------------------- zero test
def is_zero(d: sympy.Expr, table: dict[str, Interval], thorough: bool = True) -> bool:
    """True only if `d` is identically 0 wherever it is defined (a symbolic argument).
    Rational algebra first, then simplify() on small differences. Not `thorough` (the
    numbers already say it is not 0): only what SymPy's automatic simplification gives."""
    d = split_radicals(sympy.sympify(d), table)
    if d == 0:
        return True
    if not thorough:
        return False
    d = sympy.piecewise_fold(d)
    if isinstance(d, sympy.Piecewise):
        return all(is_zero(branch.expr, table) for branch in d.args)
    if sympy.expand(sympy.numer(sympy.together(d))) == 0:
        return True
    if sympy.count_ops(d) > MAX_OPS_FOR_SIMPLIFY:
        return False
    return split_radicals(sympy.simplify(d), table) == 0


# --------------------------------------------------------------------------- case splits
def host_atoms(exprs: list[sympy.Expr], host: set[str]) -> list[sympy.Basic]:
    """Relations in where(...) conditions over hyperparameters only (momentum == 0): the
    proof splits on them, since each branch holds on a whole region of hyperparameters."""
    atoms = []
    for e in exprs:
        for pw in e.atoms(sympy.Piecewise):
            for branch in pw.args:
                for rel in branch.cond.atoms(sympy.core.relational.Relational):
                    if rel.free_symbols and {s.name for s in rel.free_symbols} <= host and rel not in atoms:
                        atoms.append(rel)
    return atoms[:MAX_CASE_ATOMS]


def host_cases(atoms: list[sympy.Basic], table) -> list[tuple[str, dict]]:
    """(description, substitution) for each truth assignment of the atoms. An equality
    that holds becomes a substitution (momentum := 0); so does `x > 0` failing for x >= 0."""
    cases = []
    for values in itertools.product((True, False), repeat=len(atoms)):
        subs, words = {}, []
        for rel, holds in zip(atoms, values):
            subs[rel] = sympy.true if holds else sympy.false
            words.append(str(rel) if holds else f"not {rel}")
            lhs, rhs = rel.lhs, rel.rhs
            if lhs.is_Symbol and rhs.is_Number:
                at_bound = isinstance(rel, sympy.StrictGreaterThan) and rhs == 0 and is_nonneg(bounds(lhs, table))
                if (holds and isinstance(rel, sympy.Equality)) or (not holds and at_bound):
                    subs[lhs] = rhs
        cases.append((", ".join(words), subs))
    return cases


def apply_case(expr: sympy.Expr, subs: dict) -> sympy.Expr:
    relations = {k: v for k, v in subs.items() if not k.is_Symbol}
    symbols = {k: v for k, v in subs.items() if k.is_Symbol}
    return expr.xreplace(relations).xreplace(symbols)
