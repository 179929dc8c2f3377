"""SymPy -> C++ expressions, for the two places C++-backend code computes: the element loops
(`real`: float, or double for float64 tensors) and the host scalars (double).

Both print through `names`, a symbol-name -> identifier map, and share the Triton printer's
readable term order; numbers are `real(...)`/double literals so that a float kernel never
silently promotes to double.
"""

from __future__ import annotations

import sympy
from sympy.printing.precedence import PRECEDENCE

from ..triton.printer import _Printer


class CppPrinter(_Printer):
    """Element and per-tensor arithmetic in `real`.

    sqrt is std::sqrt (correctly rounded, as torch.sqrt); integer powers are products; other
    powers go through exp/log (the bases are positive); max/min propagate NaN (as
    torch.maximum); a condition selects with `?:` (branch-free after if-conversion)."""

    number = "real"

    def _literal(self, text: str) -> str:
        return f"{self.number}({text})"

    def _print_Integer(self, expr) -> str:
        return self._literal(str(int(expr)))

    def _print_Rational(self, expr) -> str:
        return self._literal(repr(float(expr)))

    def _print_Float(self, expr) -> str:
        return self._literal(repr(float(expr)))

    def _print_Half(self, expr) -> str:
        return self._literal("0.5")

    def _print_Infinity(self, expr) -> str:
        return self._literal("INFINITY")

    def _print_NegativeInfinity(self, expr) -> str:
        return f"-{self._literal('INFINITY')}"

    def _print_NaN(self, expr) -> str:
        return self._literal("NAN")

    def _print_BooleanTrue(self, expr) -> str:
        return "true"

    def _print_BooleanFalse(self, expr) -> str:
        return "false"

    def _print_Pow(self, expr) -> str:
        base, exp = expr.as_base_exp()
        one = self._literal("1")
        if exp == sympy.S.Half:
            return f"std::sqrt({self._print(base)})"
        if exp == -sympy.S.Half:
            return f"{one} / std::sqrt({self._print(base)})"
        if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
            factor = self.parenthesize(base, PRECEDENCE["Mul"], strict=True)
            product = " * ".join([factor] * abs(int(exp)))
            return product if exp > 0 else f"{one} / ({product})" if abs(int(exp)) > 1 else f"{one} / {factor}"
        return f"std::exp({self.parenthesize(exp, PRECEDENCE['Mul'], strict=False)} * std::log({self._print(base)}))"

    def _print_Abs(self, expr) -> str:
        return f"std::abs({self._print(expr.args[0])})"

    def _print_sign(self, expr) -> str:
        return f"sign_of({self._print(expr.args[0])})"

    def _print_exp(self, expr) -> str:
        return f"std::exp({self._print(expr.args[0])})"

    def _print_log(self, expr) -> str:
        return f"std::log({self._print(expr.args[0])})"

    def _print_Mod(self, expr) -> str:
        """`step % k`, floored as Python's (host values only, see parse)."""
        a, b = expr.args
        return f"floored_mod({self._print(a)}, {self._print(b)})"

    def _print_floor(self, expr) -> str:
        """`step // k` = floor(step / k) (host values only, see parse)."""
        return f"std::floor({self._print(expr.args[0])})"

    def _print_Max(self, expr) -> str:
        return self._nest("max_nan", expr.args)

    def _print_Min(self, expr) -> str:
        return self._nest("min_nan", expr.args)

    def _nest(self, fn: str, args) -> str:
        text = self._print(args[-1])
        for a in reversed(args[:-1]):
            text = f"{fn}({self._print(a)}, {text})"
        return text

    def _print_Piecewise(self, expr) -> str:
        *branches, (last, cond) = expr.args
        text = (
            self._print(last)
            if cond == sympy.true
            else f"({self._print(cond)} ? {self._print(last)} : {self._literal('NAN')})"
        )
        for value, cond in reversed(branches):
            text = f"({self._print(cond)} ? {self._print(value)} : {text})"
        return text

    def _boolean(self, expr, op: str) -> str:
        # bitwise on bools: no short-circuit branch in a loop that should vectorise
        return f" {op} ".join(f"({self._print(a)})" for a in expr.args)

    def _print_And(self, expr) -> str:
        return self._boolean(expr, "&")

    def _print_Or(self, expr) -> str:
        return self._boolean(expr, "|")

    def _print_Not(self, expr) -> str:
        return f"!({self._print(expr.args[0])})"


class HostPrinter(CppPrinter):
    """Host scalars: double arithmetic, once per tensor and step (as torch.optim computes
    bias corrections in Python floats)."""

    number = "double"

    def _print_Pow(self, expr) -> str:
        base, exp = expr.as_base_exp()
        if exp == sympy.S.Half or exp == -sympy.S.Half or (exp.is_Integer and 1 <= abs(int(exp)) <= 4):
            return super()._print_Pow(expr)
        return f"std::pow({self._print(base)}, {self._print(exp)})"
