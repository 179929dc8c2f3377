"""Making a buffer hold a new value in place, as torch.optim writes its updates.

  into(B, X, E)   make buffer B, which holds X, hold E: in place when X appears linearly
                  (`beta*X + c*Y` is X.mul_(beta).add_(Y, alpha=c), or X.lerp_(Y, c))
  add_term(B, t)  B += t through add_/addcmul_/addcdiv_
  mul_by(B, f)    B *= f through mul_/div_

What cannot be done in place (E reads storage B shares, or mixes shape classes) is
computed into a new tensor and copied in.
"""

from __future__ import annotations

import sympy

from ..ops import Fill, InPlace, New, S, T
from ..prepare import Prepared
from .bindings import Bindings
from .branches import Branches
from .shape_classes import ShapeClasses
from .stream import OpStream
from .terms import UNARY, alpha_kw, coefficient, pow_fn, split, symbol_in, uniform, value_kw


class InPlaceWriter:
    def __init__(
        self, p: Prepared, foreach: bool, names: Bindings, stream: OpStream, branches: Branches, shapes: ShapeClasses
    ):
        self.p = p
        self.foreach = foreach
        self.names = names
        self.stream = stream
        self.branches = branches
        self.shapes = shapes
        self.fresh = None  # the FreshWriter: operands and temporaries (set by the Scheduler)

    def emit(self, op) -> None:
        self.stream.emit(op)

    # ------------------------------------------------------------------ whole values
    def into(self, holder: str, x: str | None, expr) -> None:
        """Make `holder` (holding IR value x) hold expr, in place where possible."""
        expr = self.branches.fold(expr)
        xs = symbol_in(expr, x) if x else None
        if xs is not None and expr == xs:
            return
        if self.branches.split(expr, lambda side: self.into(holder, x, side)):
            return
        if xs is None or not expr.has(xs):
            self.assign(holder, expr)
            return
        if self.names.conflicts(holder, x, expr) or self.shapes.mixed(expr):
            self.via_temp(holder, expr)
            return
        # _into_shape emits nothing when it declines; the first op merges with none before
        done, ops = self.stream.capture(lambda: self._into_shape(holder, x, xs, expr))
        if done:
            self.stream.ops.extend(ops)
            return
        collected = sympy.collect(sympy.expand_mul(expr), xs)  # x*(1 - c*wd) - c*m/d: one mul_, one addcdiv_
        if collected != expr and self._into_shape(holder, x, xs, collected):
            return
        self.via_temp(holder, expr)

    def assign(self, holder: str, expr) -> None:
        """Make `holder` hold expr, which does not read what holder holds."""
        expr = self.branches.fold(expr)
        if self.branches.split(expr, lambda side: self.assign(holder, side)):
            return
        if expr.is_Symbol and not self.p.is_scalar(expr):
            self.emit(InPlace(holder, "copy", (self.fresh.operand(expr),)))
        elif self.p.is_scalar(expr):
            self.emit(InPlace(holder, "fill", (S(expr),)))
        else:
            self.via_temp(holder, expr)

    def via_temp(self, holder: str, expr) -> None:
        name = self.names.new_name(f"new_{holder}")
        self.fresh.fresh(name, expr)
        self.emit(InPlace(holder, "copy", (T(name),)))

    def scalar_state(self, holder: str, current: str, expr) -> None:
        """Make a 0-d state (held on the CPU) hold expr: mul_, add_, or a fill."""
        x = symbol_in(expr, current)
        if x is None or expr == x:
            if x is None:
                self.emit(Fill(holder, expr))
            return
        factor, rest = expr.as_independent(x, as_Add=False)
        if rest == x and self.p.is_scalar(factor):
            self.emit(InPlace(holder, "mul", (S(factor),)))
        elif self.p.is_scalar(expr - x) and not (expr - x).has(x):
            self.emit(InPlace(holder, "add", (S(expr - x),)))
        else:
            self.emit(Fill(holder, expr))

    # ------------------------------------------------------------------ by the form of expr
    def _into_shape(self, holder, x, xs, expr) -> bool:
        """expr by its top operation, x inside exactly one operand; False (having emitted
        nothing) when no form fits."""
        if isinstance(expr, sympy.Add):
            return self._into_add(holder, x, xs, expr)
        if isinstance(expr, sympy.Mul):
            return self._into_mul(holder, x, xs, expr)
        if isinstance(expr, sympy.Pow) and not expr.exp.has(xs) and self.p.is_scalar(expr.exp):
            self.into(holder, x, expr.base)
            self.emit(InPlace(holder, *pow_fn(expr.exp)))
            return True
        if type(expr) in UNARY:
            self.into(holder, x, expr.args[0])
            self.emit(InPlace(holder, UNARY[type(expr)], ()))
            return True
        if isinstance(expr, (sympy.Max, sympy.Min)):
            with_x = [a for a in expr.args if a.has(xs)]
            if len(with_x) != 1:
                return False
            self.into(holder, x, with_x[0])
            self.bound_by(holder, expr, [a for a in expr.args if a is not with_x[0]])
            return True
        return False

    def _into_mul(self, holder, x, xs, expr) -> bool:
        with_x = [f for f in expr.args if f.has(xs)]
        if len(with_x) != 1:
            return False
        self.into(holder, x, with_x[0])
        self.mul_by(holder, sympy.Mul(*[f for f in expr.args if f is not with_x[0]]))
        return True

    def _into_add(self, holder, x, xs, expr) -> bool:
        with_x = [t for t in expr.args if t.has(xs)]
        if len(with_x) != 1:
            return False
        (xt,), others = with_x, [t for t in expr.args if t is not with_x[0]]
        if len(others) == 1 and self._lerp(holder, xs, xt, others[0]):
            return True
        self.into(holder, x, xt)
        for term in others:
            self.add_term(holder, term)
        return True

    def _lerp(self, holder, xs, xt, other) -> bool:
        """(1 - w)*x + w*y as x.lerp_(y, w), for a uniform weight w."""
        coeff, rest = xt.as_independent(xs, as_Add=False)
        if rest != xs or not uniform(self.p, coeff):
            return False
        scale, parts = coefficient(self.p, other)
        if len(parts) == 1 and parts[0].is_Symbol and uniform(self.p, scale) and sympy.expand(coeff + scale - 1) == 0:
            self.emit(InPlace(holder, "lerp", (self.fresh.operand(parts[0]), S(scale))))
            return True
        return False

    # ------------------------------------------------------------------ in-place arithmetic
    def add_term(self, holder: str, term) -> None:
        scale, num, den = split(self.p, term)
        if not num and not den:
            self.emit(InPlace(holder, "add", (S(scale),)))
            return
        operand = self.fresh.operand
        if not num:  # scale / d
            num, den = [sympy.Pow(sympy.Mul(*den), -1)], []
        if not den and len(num) == 1:
            self._add_scaled(holder, operand(num[0]), scale)
        elif not den:
            first, rest = operand(num[0]), operand(sympy.Mul(*num[1:]))
            self.emit(InPlace(holder, "addcmul", (first, rest), value_kw(scale)))
        else:
            top = operand(sympy.Mul(*num))
            bottom = operand(sympy.Mul(*den), hint="denom")
            self.emit(InPlace(holder, "addcdiv", (top, bottom), value_kw(scale)))

    def _add_scaled(self, holder: str, operand: T, scale) -> None:
        if self.foreach and scale != 1 and self.p.per_tensor(scale):
            # _foreach_add_ takes one alpha for all tensors: scale the addend first
            operand = self._scaled_copy(operand, scale)
            scale = sympy.Integer(1)
        self.emit(InPlace(holder, "add", (operand,), alpha_kw(scale)))

    def _scaled_copy(self, operand: T, scale) -> T:
        name = self.names.new_name(f"scaled_{operand.name}")
        self.emit(New(name, "mul", (operand, S(scale))))
        self.names.fresh_buffer(name)
        return T(name)

    def mul_by(self, holder: str, factor) -> None:
        scale, num, den = split(self.p, factor)
        for f in num:
            self.emit(InPlace(holder, "mul", (self.fresh.operand(f),)))
        for f in den:
            self.emit(InPlace(holder, "div", (self.fresh.operand(f, hint="denom"),)))
        self._scale(holder, scale)

    def _scale(self, holder: str, scale) -> None:
        if scale == 1:
            return
        if scale == -1:
            self.emit(InPlace(holder, "neg", ()))
            return
        top, bottom = sympy.fraction(scale)
        if top == 1:
            self.emit(InPlace(holder, "div", (S(bottom),)))
        else:
            self.emit(InPlace(holder, "mul", (S(scale),)))

    def bound_by(self, holder: str, expr, others) -> None:
        """holder = max/min(holder, others...)."""
        fn = "maximum" if isinstance(expr, sympy.Max) else "minimum"
        scalars = [a for a in others if self.p.is_scalar(a)]
        for other in others:
            if other not in scalars:
                self.emit(InPlace(holder, fn, (self.fresh.operand(other),)))
        if scalars:
            limit = scalars[0] if len(scalars) == 1 else expr.func(*scalars)
            self.emit(InPlace(holder, "clamp", (), {"min" if fn == "maximum" else "max": S(limit)}))
