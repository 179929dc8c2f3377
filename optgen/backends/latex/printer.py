"""A SymPy LaTeX printer for optgen expressions.

Symbols print through a name map (so states get their time index), scalar factors come
before tensor factors (`(1 - \\beta_1) g_t`, not `g_t (1 - \\beta_1)`), reductions print
as sums, minima and norms over a tensor's elements, `where` as cases, and the decimals a
spec wrote stay decimals."""

from __future__ import annotations

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from ...expr import GlobalSum, ReduceSum

ALL_PARAMS = r"\mathcal{P}"  # the set of every parameter tensor of the optimizer


def _norm_argument(expr: sympy.Expr, reduction) -> sympy.Expr | None:
    """x when expr is sqrt(reduction(x**2)), i.e. a 2-norm."""
    if isinstance(expr, sympy.Pow) and expr.exp == sympy.Rational(1, 2) and isinstance(expr.base, reduction):
        inner = expr.base.args[0]
        if isinstance(inner, sympy.Pow) and inner.exp == 2:
            return inner.base
    return None


def _terminating(q: int) -> bool:
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


def decimal(value: float) -> str:
    """1e-08 -> 10^{-8}, 2.5e-05 -> 2.5 \\cdot 10^{-5}, 0.999 -> 0.999."""
    text = repr(float(value))
    if "e" not in text:
        return text.removesuffix(".0")
    mantissa, exponent = text.split("e")
    mantissa = mantissa.removesuffix(".0")
    power = f"10^{{{int(exponent)}}}"
    if mantissa in ("1", "-1"):
        return power if mantissa == "1" else "-" + power
    return rf"{mantissa} \cdot {power}"


class OptgenLatexPrinter(LatexPrinter):
    """Prints with `names` (symbol name -> LaTeX); `tensors` are names of per-element or
    per-tensor values, printed after scalar factors in a product."""

    def __init__(self, names: dict[str, str], tensors: set[str], first: str | None = None):
        super().__init__({"mul_symbol": None})
        self.names = names
        self.tensors = tensors
        self.first = first  # the symbol whose term leads a sum (the recurrence's own state)

    # ------------------------------------------------------------------ atoms
    def _print_Symbol(self, expr, style="plain"):
        return self.names.get(expr.name) or super()._print_Symbol(expr, style)

    def _print_Rational(self, expr):
        if _terminating(expr.q) and expr.q > 1:
            return decimal(expr.p / expr.q)
        return super()._print_Rational(expr)

    def _print_Float(self, expr):
        return decimal(float(expr))

    # ------------------------------------------------------------------ ordering
    def _is_tensor(self, expr) -> bool:
        return any(s.name in self.tensors for s in expr.free_symbols)

    def _print_Mul(self, expr):
        coeff, _ = expr.as_coeff_Mul()
        if coeff.is_negative:
            return "- " + self.parenthesize(-expr, PRECEDENCE["Mul"])
        numer, denom = [], []
        for factor in sympy.Mul.make_args(expr):
            if factor.is_Rational and not _terminating(factor.q):
                numer.append(sympy.Integer(factor.p))
                denom.append(sympy.Integer(factor.q))
            elif factor.is_Pow and factor.exp.is_Rational and factor.exp.is_negative:
                denom.append(factor.base**-factor.exp)
            else:
                numer.append(factor)
        top = self._product(numer)
        return rf"\frac{{{top}}}{{{self._product(denom)}}}" if denom else top

    def _product(self, factors: list) -> str:
        """Numbers, scalars, tensor expressions, tensor symbols; sympy's order within each."""

        def key(factor):
            if factor.is_Number:
                return 0
            if not self._is_tensor(factor):
                return 1
            return 3 if factor.is_Symbol else 2

        factors = sorted((f for f in factors if f != 1), key=lambda f: (key(f), sympy.default_sort_key(f)))
        if len(factors) == 1:
            return self._print(factors[0])
        out = ""
        for factor in factors:
            tex = self._print(factor) if factor.is_Number else self.parenthesize(factor, PRECEDENCE["Mul"])
            words = out.split(" ")[-1].startswith(r"\mathrm") or tex.startswith(r"\mathrm")  # name x name
            out += (r" \cdot " if out and (tex[0].isdigit() or words) else " " if out else "") + tex
        return out or "1"

    def _print_Add(self, expr, order=None):
        tex = ""
        for i, term in enumerate(self._sum_order(expr)):
            if i and term.could_extract_minus_sign():
                tex += " - "
                term = -term
            elif i:
                tex += " + "
            term_tex = self._print(term)
            if self._needs_add_brackets(term):
                term_tex = rf"\left({term_tex}\right)"
            tex += term_tex
        return tex

    def _sum_order(self, expr) -> list:
        """The recurrence's own term first, then tensor terms, scalar terms, and a constant
        last unless it is positive: `1 - beta1`, `rho_inf - 4`."""

        def key(term):
            own = self.first is not None and any(s.name == self.first for s in term.free_symbols)
            if own:
                return 0
            if term.is_Number:
                return 1 if term.is_positive else 4
            return (2 if self._is_tensor(term) else 3) + 0.5 * term.could_extract_minus_sign()

        terms = self._as_ordered_terms(expr, order=None)
        return sorted(terms, key=key)

    # ------------------------------------------------------------------ functions
    def _print_Pow(self, expr):
        for reduction, sub in ((ReduceSum, ""), (GlobalSum, ALL_PARAMS)):
            arg = _norm_argument(expr, reduction)
            if arg is not None:
                return (
                    rf"\left\lVert {self._print(arg)} \right\rVert_{{{sub}}}"
                    if sub
                    else (rf"\left\lVert {self._print(arg)} \right\rVert")
                )
        if expr.base.is_Rational and _terminating(expr.base.q) and expr.base.is_positive:
            return f"{self._print(expr.base)}^{{{self._print(expr.exp)}}}"
        return super()._print_Pow(expr)

    def _reduction(self, op: str, expr, exp=None) -> str:
        arg = expr.args[0]
        body = self._print(arg)
        if arg.is_Add:
            body = rf"\left({body}\right)"
        tex = f"{op} {body}"
        return rf"\left({tex}\right)^{{{exp}}}" if exp else tex

    def _print_ReduceSum(self, expr, exp=None):
        return self._reduction(r"\sum_{i}", expr, exp)

    def _print_ReduceMin(self, expr, exp=None):
        return self._reduction(r"\min_{i}", expr, exp)

    def _print_ReduceMax(self, expr, exp=None):
        return self._reduction(r"\max_{i}", expr, exp)

    def _print_GlobalSum(self, expr, exp=None):
        return self._reduction(rf"\sum_{{{ALL_PARAMS}}} \sum_{{i}}", expr, exp)

    def _print_MatrixProduct(self, expr, exp=None):
        """A matrix product as a paper writes it: juxtaposed factors, A B^\top."""
        scalars, factors = [], []
        for arg in expr.args:  # c A @ A prints as c A A: scalar factors lead
            parts = arg.args if isinstance(arg, sympy.Mul) else (arg,)
            scalars += [f for f in parts if not any(x.name in self.tensors for x in f.free_symbols)]
            rest = [f for f in parts if any(x.name in self.tensors for x in f.free_symbols)]
            factors.append(sympy.Mul(*rest) if rest else arg)
        if len(factors) == 2 and factors[0] == factors[1]:  # A @ A is A^2
            text = self.parenthesize(factors[0], PRECEDENCE["Pow"], strict=True) + "^{2}"
        else:
            text = r"\,".join(self.parenthesize(a, PRECEDENCE["Mul"], strict=False) for a in factors)
        if scalars:
            text = self._print(sympy.Mul(*scalars)) + " " + text
        return rf"\left({text}\right)^{{{exp}}}" if exp else text

    def _print_BFloat16(self, expr, exp=None):
        text = rf"\mathrm{{bf16}}\left({self._print(expr.args[0])}\right)"
        return rf"\left({text}\right)^{{{exp}}}" if exp else text

    def _print_Transposed(self, expr, exp=None):
        text = self.parenthesize(expr.args[0], PRECEDENCE["Pow"], strict=True) + r"^{\top}"
        return rf"\left({text}\right)^{{{exp}}}" if exp else text

    def _print_AxisReductionBase(self, expr, exp=None):
        """mean(x, axis=-1) as `mean_j x`: the trailing axes are the indices ..., k, i, j
        (j runs along the last dim, i along the one before: a matrix G_{ij})."""
        index = ",".join(_AXIS_INDEX.get(a, f"d_{{{-a}}}") for a in sorted(expr.axes))
        op = {
            "sum": rf"\sum_{{{index}}}",
            "mean": rf"\operatorname{{mean}}_{{{index}}}",
            "amax": rf"\max_{{{index}}}",
            "amin": rf"\min_{{{index}}}",
        }.get(expr.spelling)
        if op is None:  # norm
            tex = rf"\left\lVert {self._print(expr.args[0])} \right\rVert_{{{index}}}"
            return rf"{tex}^{{{exp}}}" if exp else tex
        return self._reduction(op, expr, exp)

    def _print_Piecewise(self, expr):
        rows = []
        for value, cond in expr.args:
            where = r"\text{otherwise}" if cond == sympy.true else rf"\text{{if }} {self._print(cond)}"
            rows.append(rf"\displaystyle {self._print(value)} & {where}")  # full-size fractions
        return r"\begin{cases} " + r" \\ ".join(rows) + r" \end{cases}"

    def _print_And(self, expr):
        return r" \text{ and } ".join(self.parenthesize(a, 0) for a in expr.args)

    def _print_Or(self, expr):
        return r" \text{ or } ".join(self.parenthesize(a, 0) for a in expr.args)

    def _print_Not(self, expr):
        return rf"\text{{not }} \left({self._print(expr.args[0])}\right)"

    def _print_sign(self, expr, exp=None):
        tex = rf"\operatorname{{sign}}\left({self._print(expr.args[0])}\right)"
        return f"{tex}^{{{exp}}}" if exp else tex


_AXIS_INDEX = {-1: "j", -2: "i", -3: "k", -4: "l"}
