"""SymPy printers for the torch backend.

Two printers share one symbol table (`text`: IR symbol name -> the Python text that holds
it where the expression is printed):
  HostPrinter    Python floats: hyperparameters, `step`, bias corrections. sqrt is `** 0.5`,
                 min/max are the builtins, a `where` is a conditional expression.
  TensorPrinter  tensors (per element or 0-d per tensor), with scalar subexpressions
                 printed by the host printer: `torch.sqrt`, `torch.where`, `torch.clamp`.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

Text = Callable[[str], str]


def number(value: float) -> str:
    """A float as a person writes it: 0.001, 1e-8, 0.9."""
    if value == int(value) and abs(value) < 1e16:
        return f"{int(value)}.0"
    text = repr(float(value))
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


class _Base(StrPrinter):
    """Python syntax with this backend's names; numbers as decimals (24/25 prints 0.96)."""

    def __init__(self, text: Text):
        super().__init__({"order": "none"})
        self.text = text

    def _print_Symbol(self, expr):
        return self.text(expr.name)

    def _as_ordered_terms(self, expr, order=None):
        """Positive terms first: `rho_t - 4`, `2/(1 - beta2) - 1`, `1 - lr*weight_decay`."""
        return sorted(expr.args, key=lambda t: bool(t.as_coeff_Mul()[0].is_negative))

    def _base(self, base) -> str:
        if base.is_Number and base > 0:
            return number(float(base)) if not base.is_Integer else str(base)
        return self.parenthesize(base, PRECEDENCE["Pow"] + 1)

    def _print_Integer(self, expr):
        return str(expr.p)

    def _print_Rational(self, expr):
        return number(float(expr))

    def _print_Half(self, expr):
        return "0.5"

    def _print_Float(self, expr):
        return number(float(expr))

    def _print_Infinity(self, expr):
        return "float('inf')"

    def _print_NegativeInfinity(self, expr):
        return "-float('inf')"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _relation(self, expr, op):
        prec = PRECEDENCE["Relational"]
        return f"{self.parenthesize(expr.lhs, prec + 1)} {op} {self.parenthesize(expr.rhs, prec + 1)}"

    def _print_StrictGreaterThan(self, expr):
        return self._relation(expr, ">")

    def _print_GreaterThan(self, expr):
        return self._relation(expr, ">=")

    def _print_StrictLessThan(self, expr):
        return self._relation(expr, "<")

    def _print_LessThan(self, expr):
        return self._relation(expr, "<=")

    def _print_Equality(self, expr):
        return self._relation(expr, "==")

    def _print_Unequality(self, expr):
        return self._relation(expr, "!=")


class HostPrinter(_Base):
    """Python float arithmetic: `** 0.5`, `e**x` and the builtins; only a log needs the
    math module (render_module imports it then)."""

    def _print_Pow(self, expr, rational=False):
        base = self._base(expr.base)
        if expr.exp == -1:
            return f"1 / {base}"
        exp = expr.exp
        exp_text = (
            number(float(exp)) if exp.is_Rational and not exp.is_Integer else self.parenthesize(exp, PRECEDENCE["Pow"])
        )
        return f"{base}**{exp_text}"

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Min(self, expr):
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_Max(self, expr):
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_sign(self, expr):
        x = self.parenthesize(expr.args[0], PRECEDENCE["Relational"] + 1)
        return f"(({x} > 0) - ({x} < 0))"

    def _print_exp(self, expr):
        return f"{number(float(sympy.E))}**{self.parenthesize(expr.args[0], PRECEDENCE['Pow'])}"

    def _print_log(self, expr):
        return f"math.log({self._print(expr.args[0])})"  # the module imports math when it uses it

    def _print_Piecewise(self, expr):
        return _conditional(self, expr)

    def _print_Mod(self, expr):
        return _integer_op(self, expr)

    def _print_floor(self, expr):
        return _integer_op(self, expr)

    def _print_And(self, expr):
        return " and ".join(self.parenthesize(a, PRECEDENCE["And"] + 1) for a in expr.args)

    def _print_Or(self, expr):
        return " or ".join(self.parenthesize(a, PRECEDENCE["Or"] + 1) for a in expr.args)

    def _print_Not(self, expr):
        return f"not {self.parenthesize(expr.args[0], PRECEDENCE['Not'])}"


def _integer_op(printer, expr) -> str:
    """Mod(a, b) -> `a % b`; floor(a/b) -> `a // b` (both floored, in Python as in SymPy)."""
    if isinstance(expr, sympy.Mod):
        a, b, op = *expr.args, "%"
    else:
        (a, b), op = sympy.fraction(expr.args[0]), "//"
    prec = PRECEDENCE["Mul"]
    return f"({printer.parenthesize(a, prec)} {op} {printer.parenthesize(b, prec + 1)})"


def _conditional(printer, expr) -> str:
    """Piecewise((a, c1), (b, c2), (d, True)) -> `(a if c1 else b if c2 else d)`."""
    parts = []
    for piece in expr.args:
        if piece.cond is sympy.true:
            parts.append(printer._print(piece.expr))
            break
        parts.append(f"{printer._print(piece.expr)} if {printer.host(piece.cond)} else")
    return "(" + " ".join(parts) + ")"


class TensorPrinter(_Base):
    """Torch arithmetic on tensors; `is_scalar(expr)` says which subexpressions are Python
    scalars (printed by the host printer)."""

    def __init__(self, text: Text, is_scalar: Callable[[sympy.Basic], bool], host_text: Text | None = None):
        super().__init__(text)
        self.is_scalar = is_scalar
        self.host_printer = HostPrinter(host_text or text)
        self.host_printer.host = self.host_printer.doprint

    def host(self, expr) -> str:
        return self.host_printer.doprint(expr)

    def _print(self, expr, **kwargs):
        if isinstance(expr, sympy.Basic) and not expr.is_Atom and self.is_scalar(expr):
            return self.host(expr)
        return super()._print(expr, **kwargs)

    def _print_Pow(self, expr, rational=False):
        base = self._print(expr.base)
        if expr.exp == sympy.Rational(1, 2):
            return f"torch.sqrt({base})"
        if expr.exp == -sympy.Rational(1, 2):
            return f"torch.rsqrt({base})"
        if expr.exp == -1:
            return f"1 / {self.parenthesize(expr.base, PRECEDENCE['Mul'] + 1)}"
        exp = expr.exp
        exp_text = (
            number(float(exp)) if exp.is_Rational and not exp.is_Integer else self.parenthesize(exp, PRECEDENCE["Pow"])
        )
        return f"{self._base(expr.base)}**{exp_text}"

    def _print_Abs(self, expr):
        return f"torch.abs({self._print(expr.args[0])})"

    def _print_AxisReductionBase(self, expr):
        """mean(x, axis=-1): keepdim, so that the result broadcasts back (optgen/shapes.py)."""
        axes = sorted(expr.axes)
        dim = str(axes[0]) if len(axes) == 1 else "(" + ", ".join(map(str, axes)) + ")"
        arg = self._print(expr.args[0])
        if expr.spelling == "norm":
            return f"torch.linalg.vector_norm({arg}, dim={dim}, keepdim=True)"
        return f"torch.{expr.torch_fn}({arg}, dim={dim}, keepdim=True)"

    def _print_sign(self, expr):
        return f"torch.sign({self._print(expr.args[0])})"

    def _print_exp(self, expr):
        return f"torch.exp({self._print(expr.args[0])})"

    def _print_log(self, expr):
        return f"torch.log({self._print(expr.args[0])})"

    def _min_max(self, expr, name: str, bound: str):
        scalars = [a for a in expr.args if self.is_scalar(a)]
        tensors = [a for a in expr.args if not self.is_scalar(a)]
        text = self._print(tensors[0])
        for other in tensors[1:]:
            text = f"torch.{name}({text}, {self._print(other)})"
        if scalars:
            limit = scalars[0] if len(scalars) == 1 else expr.func(*scalars)
            text = f"torch.clamp({text}, {bound}={self.host(limit)})"
        return text

    def _print_Min(self, expr):
        return self._min_max(expr, "minimum", "max")

    def _print_Max(self, expr):
        return self._min_max(expr, "maximum", "min")

    def _print_Piecewise(self, expr):
        if all(self.is_scalar(p.cond) for p in expr.args):
            return _conditional(self, expr)
        (value, cond), rest = expr.args[0], expr.args[1:]
        other = rest[0].expr if len(rest) == 1 and rest[0].cond is sympy.true else sympy.Piecewise(*rest)
        first = self._side(value)
        tensors = sorted((s for s in cond.free_symbols if not self.is_scalar(s)), key=lambda s: s.name)
        if self.is_scalar(value) and self.is_scalar(other) and tensors:
            # two Python floats would make a tensor of the default dtype (float32 beside a
            # float64 param): one side is a 0-d tensor of the dtype of what is compared
            x = self._print(tensors[0])
            first = f"torch.as_tensor({first}, dtype={x}.dtype, device={x}.device)"
        return f"torch.where({self._print(cond)}, {first}, {self._side(other)})"

    def _side(self, expr) -> str:
        # an integer would make an integer tensor: where(c, 1, 0) selects 1.0 or 0.0
        return number(float(expr)) if expr.is_Integer else self._print(expr)

    def _bitwise(self, expr, op):
        return f" {op} ".join(f"({self._print(a)})" for a in expr.args)

    def _print_And(self, expr):
        return self._bitwise(expr, "&")

    def _print_Or(self, expr):
        return self._bitwise(expr, "|")

    def _print_Not(self, expr):
        return f"~({self._print(expr.args[0])})"


class CompiledHostPrinter(HostPrinter):
    """Host values that are 0-d tensors under torch.compile (they read the step count): a
    conditional is `torch.where`, a logical operator its bitwise form."""

    def _print_Piecewise(self, expr):
        (value, cond), rest = expr.args[0], expr.args[1:]
        other = rest[0].expr if len(rest) == 1 and rest[0].cond is sympy.true else sympy.Piecewise(*rest)
        return f"torch.where({self._print(cond)}, {self._side(value)}, {self._side(other)})"

    def _side(self, expr) -> str:
        # an integer would make an integer tensor: where(c, x, 1) selects x or 1.0
        return number(float(expr)) if expr.is_Integer else self._print(expr)

    def _print_And(self, expr):
        return " & ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr):
        return " | ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Not(self, expr):
        return f"~({self._print(expr.args[0])})"


def compiled_host_printer(text: Text) -> CompiledHostPrinter:
    printer = CompiledHostPrinter(text)
    printer.host = printer.doprint
    return printer


def host_printer(text: Text) -> HostPrinter:
    printer = HostPrinter(text)
    printer.host = printer.doprint
    return printer
