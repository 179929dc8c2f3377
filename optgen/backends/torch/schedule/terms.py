"""Reading a sympy expression as the operands of torch's primitives: host scale times
tensor factors over tensor factors, the exponent of a power as a unary primitive, and
the keyword (`alpha=`, `value=`) a scale travels in. Pure functions of the expression
(and of the kinds of its symbols); nothing here emits."""

from __future__ import annotations

import sympy

from ..ops import S
from ..prepare import Prepared

UNARY = {sympy.Abs: "abs", sympy.sign: "sign", sympy.exp: "exp", sympy.log: "log"}


def uniform(p: Prepared, expr) -> bool:
    """A scalar the same for every tensor of the group (one Python float for a foreach call)."""
    return p.is_scalar(expr) and not p.per_tensor(expr)


def coefficient(p: Prepared, term):
    """term = scale * product(parts), scale a host scalar."""
    scale, parts = sympy.Integer(1), []
    for f in sympy.Mul.make_args(term):
        if p.is_scalar(f):
            scale *= f
        else:
            parts.append(f)
    return scale, parts


def split(p: Prepared, term):
    """term = scale * product(num) / product(den), num and den tensors (element-shaped
    ones first: they decide the shape of what a primitive makes)."""
    scale, num, den = sympy.Integer(1), [], []
    for f in sympy.Mul.make_args(term):
        if p.is_scalar(f):
            scale *= f
            continue
        base, exp = f.as_base_exp()
        if exp.is_Integer and 0 < exp <= 2:
            num += [base] * int(exp)
        elif exp.is_Integer and -2 <= exp < 0:
            den += [base] * int(-exp)
        elif exp.is_negative or exp.could_extract_minus_sign():
            den.append(sympy.Pow(base, -exp))
        else:
            num.append(f)
    element_first = lambda e: p.kind(e) != "element"
    return scale, sorted(num, key=element_first), sorted(den, key=element_first)


def pow_fn(exp) -> tuple:
    """The primitive (name, extra args) that raises a tensor to a host exponent."""
    if exp == sympy.Rational(1, 2):
        return ("sqrt", ())
    if exp == -sympy.Rational(1, 2):
        return ("rsqrt", ())
    if exp == -1:
        return ("reciprocal", ())
    if exp == 2:
        return ("square", ())
    return ("pow", (S(exp),))


def value_kw(scale) -> dict:
    """addcmul/addcdiv's scale keyword, left out at 1."""
    return {} if scale == 1 else {"value": S(scale)}


def alpha_kw(scale) -> dict:
    """add's scale keyword, left out at 1."""
    return {} if scale == 1 else {"alpha": S(scale)}


def name_for(expr, base: dict) -> str:
    """A name for a temporary the schedule makes."""
    if isinstance(expr, sympy.Pow) and expr.exp in (sympy.Rational(1, 2), 2):
        symbols = sorted(expr.base.free_symbols, key=lambda s: s.name)
        name = base.get(symbols[0].name, symbols[0].name) if symbols else "x"
        return f"{name}_sqrt" if expr.exp == sympy.Rational(1, 2) else f"{name}_sq"
    if isinstance(expr, (sympy.Min, sympy.Max)):
        return "bounded"
    core = sympy.Add(*[t for t in sympy.Add.make_args(expr) if not t.is_number])  # abs(grad) + eps: grad_abs
    for f, suffix in ((sympy.sign, "sign"), (sympy.Abs, "abs"), (sympy.exp, "exp"), (sympy.log, "log")):
        if isinstance(core, f) and core.args[0].is_Symbol:
            return f"{base.get(core.args[0].name, core.args[0].name)}_{suffix}"
    return "scratch"


def symbol_in(expr, name: str):
    """The symbol called `name` in expr (symbols match by name: their assumptions differ)."""
    return next((s for s in expr.free_symbols if s.name == name), None)


def count(expr, name: str) -> int:
    """How many times expr reads the symbol called `name`."""
    return sum(1 for s in sympy.preorder_traversal(expr) if s.is_Symbol and s.name == name)


def take_side(expr, conds: tuple, i: int):
    """expr with every where(...) on `conds` replaced by its i-th side."""

    def same(e):
        return isinstance(e, sympy.Piecewise) and tuple(p.cond for p in e.args) == conds

    return expr.replace(same, lambda e: e.args[i].expr)


def split_piecewise(expr):
    """where(cond, a, rest...) as (cond, a, the rest as one expression)."""
    (first, cond), rest = expr.args[0], expr.args[1:]
    other = rest[0].expr if len(rest) == 1 and rest[0].cond is sympy.true else sympy.Piecewise(*rest)
    return cond, first, other


def fold_denominator_scales(p: Prepared, expr):
    """a / (x/c + e) -> (a*c) / (x + e*c) for host values c and e: the division by c
    rides on the scalars (the step size, eps) instead of taking a pass over x (Adam's
    sqrt(v)/sqrt(bias_correction2) + eps)."""

    def folded(power):
        host = [t for t in power.base.args if p.is_scalar(t)]
        (term,) = [t for t in power.base.args if not p.is_scalar(t)]
        divisors = [f for f in sympy.Mul.make_args(term) if p.is_scalar(f)]
        c = sympy.Mul(*[sympy.Pow(f, -1) for f in divisors])
        return c / (term * c + sympy.Add(*host) * c)

    def matches(e) -> bool:
        if not (isinstance(e, sympy.Pow) and e.exp == -1 and isinstance(e.base, sympy.Add)):
            return False
        tensors = [t for t in e.base.args if not p.is_scalar(t)]
        if len(tensors) != 1 or len(tensors) == len(e.base.args):
            return False
        divisors = [f for f in sympy.Mul.make_args(tensors[0]) if p.is_scalar(f)]
        return bool(divisors) and all(f.is_Pow and f.exp.is_negative for f in divisors)

    return expr.replace(matches, folded)
