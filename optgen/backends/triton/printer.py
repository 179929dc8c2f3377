"""SymPy -> source text, for the two places Triton-backend code runs: inside a
`@triton.jit` kernel (fp32 Triton ops) and on the host (float64 NumPy scalars).

Both print through `names`, a symbol-name -> identifier map (SSA names become the spec's
variable names where that is safe; host subexpressions become their kernel argument).
"""

from __future__ import annotations

import sympy
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from ...expr import GlobalSum, ReduceMax, ReduceMin, ReduceSum


class _Printer(StrPrinter):
    """Shared rules: readable term order (positive terms first: `1 - lr*wd`), exact
    rationals as float literals, symbols through the rename map."""

    def __init__(self, names: dict[str, str] | None = None):
        super().__init__()
        self.names = names or {}

    def _print_Symbol(self, expr) -> str:
        return self.names.get(expr.name, expr.name)

    def _print_Add(self, expr, order=None) -> str:
        terms = self._as_ordered_terms(expr, order=order)
        terms = [t for t in terms if not _is_negative(t)] + [t for t in terms if _is_negative(t)]
        out = []
        for i, term in enumerate(terms):
            if _is_negative(term):
                text, sign = self._print_term(-term), " - "
            else:
                text, sign = self._print_term(term), " + "
            out.append(text if i == 0 and sign == " + " else ("-" + text if i == 0 else sign + text))
        return "".join(out)

    def _print_term(self, term) -> str:
        return self.parenthesize(term, PRECEDENCE["Add"], strict=False)

    def _print_Rational(self, expr) -> str:
        return repr(float(expr))

    def _print_Integer(self, expr) -> str:
        return str(int(expr))

    def _print_Float(self, expr) -> str:
        return repr(float(expr))

    def _print_Half(self, expr) -> str:
        return "0.5"

    def _print_Infinity(self, expr) -> str:
        return 'float("inf")'

    def _print_Mod(self, expr) -> str:
        return self._integer_op(*expr.args, "%")

    def _print_floor(self, expr) -> str:
        return self._integer_op(*sympy.fraction(expr.args[0]), "//")

    def _integer_op(self, a, b, op: str) -> str:
        """`step % k`, `step // k`: floored, as in SymPy (host values only, see parse)."""
        prec = PRECEDENCE["Mul"]
        return f"({self.parenthesize(a, prec)} {op} {self.parenthesize(b, prec + 1)})"

    def _print_NegativeInfinity(self, expr) -> str:
        return '-float("inf")'

    def _print_BooleanTrue(self, expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr) -> str:
        return "False"

    def _relation(self, expr, op: str) -> str:
        lhs = self.parenthesize(expr.lhs, PRECEDENCE["Add"] - 1)
        rhs = self.parenthesize(expr.rhs, PRECEDENCE["Add"] - 1)
        return f"{lhs} {op} {rhs}"

    def _print_StrictLessThan(self, expr) -> str:
        return self._relation(expr, "<")

    def _print_LessThan(self, expr) -> str:
        return self._relation(expr, "<=")

    def _print_StrictGreaterThan(self, expr) -> str:
        return self._relation(expr, ">")

    def _print_GreaterThan(self, expr) -> str:
        return self._relation(expr, ">=")

    def _print_Equality(self, expr) -> str:
        return self._relation(expr, "==")

    def _print_Unequality(self, expr) -> str:
        return self._relation(expr, "!=")


def _is_product_power(expr) -> bool:
    return isinstance(expr, sympy.Pow) and expr.exp.is_Integer and 2 <= int(expr.exp) <= 4


def _is_negative(term) -> bool:
    coeff, _ = term.as_coeff_Mul()
    return coeff.is_negative is True


class TritonPrinter(_Printer):
    """Expressions inside a `@triton.jit` kernel: fp32 arithmetic on blocks and scalars.

    sqrt is `tl.sqrt_rn` (correctly rounded, like torch.sqrt), not the approximate `tl.sqrt`;
    integer powers are products; other powers go through exp/log (the bases are positive);
    numbers are float literals, so every operand is floating point.
    """

    def __init__(self, names: dict[str, str] | None = None, blocks=frozenset()):
        super().__init__(names)
        self.blocks = set(blocks)  # the names of per-element values (blocks, not scalars)

    def _print_Integer(self, expr) -> str:
        return f"{int(expr)}.0"

    def parenthesize(self, item, level, strict=False) -> str:
        # a power printed as a product is one operand of a product or quotient:
        # a / (v * v), never a / v * v
        if _is_product_power(item) and level >= PRECEDENCE["Mul"]:
            return f"({self._print(item)})"
        return super().parenthesize(item, level, strict)

    def _print_Pow(self, expr) -> str:
        base, exp = expr.as_base_exp()
        if exp == sympy.S.Half:
            return f"tl.sqrt_rn({self._print(base)})"
        if exp == -sympy.S.Half:
            return f"1.0 / tl.sqrt_rn({self._print(base)})"
        if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
            factor = self.parenthesize(base, PRECEDENCE["Mul"], strict=True)
            product = " * ".join([factor] * abs(int(exp)))
            return product if exp > 0 else f"1.0 / ({product})" if abs(int(exp)) > 1 else f"1.0 / {factor}"
        return f"tl.exp({self.parenthesize(exp, PRECEDENCE['Mul'], strict=False)} * tl.log({self._print(base)}))"

    def _print_Abs(self, expr) -> str:
        return f"tl.abs({self._print(expr.args[0])})"

    def _print_sign(self, expr) -> str:
        return f"_sign({self._print(expr.args[0])})"

    def _print_exp(self, expr) -> str:
        return f"tl.exp({self._print(expr.args[0])})"

    def _print_log(self, expr) -> str:
        return f"tl.log({self._print(expr.args[0])})"

    def _print_Max(self, expr) -> str:
        return self._nest("tl.maximum", expr.args)

    def _print_Min(self, expr) -> str:
        return self._nest("tl.minimum", expr.args)

    def _nest(self, fn: str, args) -> str:
        """NaN propagates, as through torch.maximum and the reference's np.maximum."""
        text = self._print(args[-1])
        for a in reversed(args[:-1]):
            text = f"{fn}({self._print(a)}, {text}, propagate_nan=tl.PropagateNan.ALL)"
        return text

    def _print_Piecewise(self, expr) -> str:
        *branches, (last, cond) = expr.args
        text = (
            self._print(last)
            if cond == sympy.true
            else f"tl.where({self._print(cond)}, {self._print(last)}, float('nan'))"
        )
        for value, cond in reversed(branches):
            text = f"tl.where({self._print(cond)}, {self._print(value)}, {text})"
        return text

    def _boolean(self, expr, op: str) -> str:
        args = list(expr.args)
        blocks = [bool({s.name for s in a.free_symbols} & self.blocks) for a in args]
        if any(blocks) and not all(blocks):
            # a per-element condition with a scalar one (step < 4): `&` of a block and a
            # scalar fails in Triton's interpreter, so select instead
            first, rest = self._print(args[0]), self._print(expr.func(*args[1:]))
            return f"tl.where({first}, {rest}, False)" if op == "&" else f"tl.where({first}, True, {rest})"
        return f" {op} ".join(f"({self._print(a)})" for a in expr.args)

    def _print_And(self, expr) -> str:
        return self._boolean(expr, "&")

    def _print_Or(self, expr) -> str:
        return self._boolean(expr, "|")

    def _print_Not(self, expr) -> str:
        return f"~({self._print(expr.args[0])})"


class HostPrinter(_Printer):
    """Host scalars: float64 NumPy arithmetic (NumPy, not `math`, so that a degenerate
    hyperparameter gives inf/nan as the reference does instead of raising)."""

    def _print_Pow(self, expr) -> str:
        base, exp = expr.as_base_exp()
        if exp == sympy.S.Half:
            return f"np.sqrt({self._print(base)})"
        if exp == -sympy.S.Half:
            return f"1 / np.sqrt({self._print(base)})"
        return super()._print_Pow(expr)

    def _print_Abs(self, expr) -> str:
        return f"np.abs({self._print(expr.args[0])})"

    def _print_sign(self, expr) -> str:
        return f"np.sign({self._print(expr.args[0])})"

    def _print_exp(self, expr) -> str:
        return f"np.exp({self._print(expr.args[0])})"

    def _print_log(self, expr) -> str:
        return f"np.log({self._print(expr.args[0])})"

    def _print_Max(self, expr) -> str:
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr) -> str:
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_Piecewise(self, expr) -> str:
        *branches, (last, cond) = expr.args
        text = self._print(last) if cond == sympy.true else f"({self._print(last)} if {self._print(cond)} else np.nan)"
        for value, cond in reversed(branches):
            text = f"({self._print(value)} if {self._print(cond)} else {text})"
        return text

    def _print_And(self, expr) -> str:
        return " and ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr) -> str:
        return " or ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Not(self, expr) -> str:
        return f"not ({self._print(expr.args[0])})"


class MathPrinter(_Printer):
    """Docstrings: the spec's own vocabulary (sum, amin, maximum, where, sqrt)."""

    def _print_Pow(self, expr) -> str:
        base, exp = expr.as_base_exp()
        if exp == sympy.S.Half:
            return f"sqrt({self._print(base)})"
        return super()._print_Pow(expr)

    def _print_Function(self, expr) -> str:
        names = {ReduceSum: "sum", ReduceMin: "amin", ReduceMax: "amax", GlobalSum: "global_sum"}
        name = names.get(type(expr), type(expr).__name__)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Max(self, expr) -> str:
        return f"maximum({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr) -> str:
        return f"minimum({', '.join(self._print(a) for a in expr.args)})"

    def _print_Abs(self, expr) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Piecewise(self, expr) -> str:
        *branches, (last, _) = expr.args
        text = self._print(last)
        for value, cond in reversed(branches):
            text = f"where({self._print(cond)}, {self._print(value)}, {text})"
        return text

    def _print_And(self, expr) -> str:
        return " and ".join(self.parenthesize(a, precedence(expr)) for a in expr.args)

    def _print_Or(self, expr) -> str:
        return " or ".join(self.parenthesize(a, precedence(expr)) for a in expr.args)
