"""New tensors: one out-of-place primitive, then in-place ones on its result.

  fresh(n, E)     a new tensor n = E (`denom = exp_avg_sq.sqrt()`, then `denom.add_(eps)`)
  operand(E)      E as an argument of a primitive: a name, a host scalar, or a temporary
                  made for it (reused by later reads of E within the same value)

A temporary that dies here is updated in place rather than copied (`denom.add_(...)`);
two terms go through one primitive where torch has one (add with alpha, lerp, addcmul,
addcdiv).
"""

from __future__ import annotations

from functools import partial

import sympy

from ....expr import PARAM
from ..ops import Alias, Eval, InPlace, New, S, T
from ..prepare import Prepared, inline
from .bindings import Bindings
from .branches import Branches
from .inplace import InPlaceWriter
from .shape_classes import ShapeClasses
from .stream import OpStream
from .terms import UNARY, alpha_kw, coefficient, name_for, pow_fn, split, uniform, value_kw


class FreshWriter:
    def __init__(
        self,
        p: Prepared,
        foreach: bool,
        names: Bindings,
        stream: OpStream,
        branches: Branches,
        shapes: ShapeClasses,
        inplace: InPlaceWriter,
    ):
        self.p = p
        self.foreach = foreach
        self.names = names
        self.stream = stream
        self.branches = branches
        self.shapes = shapes
        self.inplace = inplace
        self.absorbed_names = {inline(p, e): n for n, e in p.absorbed.items()}

    def emit(self, op) -> None:
        self.stream.emit(op)

    def _tensor(self, name: str, expr) -> T:
        return T(name, self.p.kind(expr) != "device_uniform")

    # ------------------------------------------------------------------ operands
    def operand(self, expr, hint: str | None = None):
        st = self.names.st
        if self.p.is_scalar(expr):
            return S(expr)
        if expr.is_Symbol:
            return T(st.display[expr.name], self.p.kinds.get(expr.name) != "device_uniform")
        if expr in st.memo:
            return self._tensor(st.memo[expr], expr)
        ir = self.absorbed_names.get(expr)
        if ir is None and hint is None:
            holder = self.reuse(None, expr)  # a temporary with no name of its own: keep the reused one's
            if holder is not None:
                self.names.st.memo[expr] = holder
                return self._tensor(holder, expr)
        base = self.names.base[ir] if ir else hint or name_for(expr, self.names.base)
        name = base if ir and self.names.free_to_rebind(base, expr) else self.names.new_name(base)
        self.fresh(name, expr, top=True)
        self.names.st.memo[expr] = name
        return self._tensor(name, expr)

    # ------------------------------------------------------------------ new tensors
    def fresh(self, name: str, expr, top: bool = False) -> None:
        """A new tensor `name` = expr (`top`: the whole of what the caller wants, which may
        then be computed over a dying temporary instead)."""
        expr = self.branches.fold(expr)
        if self.branches.split(expr, lambda side: self.fresh(name, side, top)):
            return
        if expr.is_Symbol:
            source = self.names.st.display[expr.name]
            if source != name:
                self.emit(Alias(name, source))
                self.names.alias(name, source)
            return
        if self.p.is_scalar(expr):
            self.emit(New(name, "full_like", (T(self.names.st.display[PARAM]), S(expr))))
        elif self.shapes.mixed(expr):
            self.emit(Eval(name, expr))
        elif top and self.reuse(name, expr):
            return
        elif self.p.kind(expr) in ("device", "device_uniform") and not self.foreach or not self._by_form(name, expr):
            self.emit(Eval(name, expr))
        self.names.fresh_buffer(name)

    def reuse(self, name: str | None, expr) -> str | None:
        """Compute in place over a temporary that dies here (`denom.add_(...)`); the name
        holding the result (the temporary's own when `name` is None)."""
        if not self.foreach and self.p.kind(expr) != "element":
            return None  # a 0-d value reads better as one expression
        for s in self.names.tensor_symbols(expr):
            holder = self.names.st.display.get(s.name)
            if not self._dying_temporary(holder, s, expr):
                continue
            start = self.names.snapshot()
            _, ops = self.stream.capture(partial(self.inplace.into, holder, s.name, expr))
            if any(isinstance(op, InPlace) and op.fn == "copy" and op.target == holder for op in ops):
                self.names.st = start  # not in place after all
                continue
            self.stream.ops.extend(ops)
            if name is None or name == holder:
                return holder
            self.emit(Alias(name, holder))
            self.names.hand_over(holder, name)
            return name
        return None

    def _dying_temporary(self, holder: str | None, s, expr) -> bool:
        """`holder`, which holds s, is this code's own, read by nothing after expr, and of
        expr's kind."""
        st = self.names.st
        if not holder or not st.owned.get(holder) or not self.names.dead(s.name) or self.names.aliased(holder, s.name):
            return False
        if self.names.value_expr.count(s) != expr.count(s):
            return False  # the rest of this value still reads it
        return self.p.kinds.get(s.name) == self.p.kind(expr)

    def _by_form(self, name: str, expr) -> bool:
        """expr by its top operation; False when no form fits (it is printed whole)."""
        if isinstance(expr, sympy.Add):
            self._fresh_add(name, expr)
        elif isinstance(expr, sympy.Mul):
            self._fresh_mul(name, expr)
        elif isinstance(expr, sympy.Pow) and self.p.is_scalar(expr.exp):
            self._fresh_from(name, expr.base, pow_fn(expr.exp))
        elif type(expr) in UNARY:
            self._fresh_from(name, expr.args[0], (UNARY[type(expr)], ()))
        elif isinstance(expr, (sympy.Max, sympy.Min)):
            self._fresh_minmax(name, expr)
        else:
            return False
        return True

    def _fresh_owned(self, name: str, expr) -> None:
        """A new tensor that this code may then update in place (never an alias)."""
        if expr.is_Symbol:
            self.emit(New(name, "clone", (self.operand(expr),)))
            self.names.fresh_buffer(name)
            return
        self.fresh(name, expr)
        if not self.names.st.owned.get(name):
            self.emit(New(name, "clone", (self._tensor(name, expr),)))
            self.names.fresh_buffer(name)

    def _fresh_from(self, name: str, arg, fn) -> None:
        """name = fn(arg): out of place on a named tensor, else in place on a new one."""
        if arg.is_Symbol:
            self.emit(New(name, fn[0], (self.operand(arg), *fn[1])))
        else:
            self._fresh_owned(name, arg)
            self.emit(InPlace(name, fn[0], fn[1]))

    def _fresh_add(self, name: str, expr) -> None:
        scalars = sympy.Add(*[t for t in expr.args if self.p.is_scalar(t)])
        terms = sorted((t for t in expr.args if not self.p.is_scalar(t)), key=lambda t: self.p.kind(t) != "element")
        if len(terms) == 1 and terms[0].is_Symbol:
            self.emit(New(name, "add", (self.operand(terms[0]), S(scalars))))
            return
        if not (len(terms) == 2 and self._fresh_binary(name, terms)):
            self._fresh_owned(name, terms[0])
            for term in terms[1:]:
                self.inplace.add_term(name, term)
        if scalars != 0:
            self.emit(InPlace(name, "add", (S(scalars),)))

    def _fresh_binary(self, name: str, terms) -> bool:
        """Two terms in one out-of-place primitive: add(Y, Z, alpha), addcmul, addcdiv, lerp."""
        (s1, p1), (s2, p2) = (coefficient(self.p, t) for t in terms)
        for (sa, pa), tb in (((s1, p1), terms[1]), ((s2, p2), terms[0])):
            if sa != 1 or len(pa) != 1 or not pa[0].is_Symbol or self.p.kind(pa[0]) != self.p.kind(tb):
                continue  # the first operand is the one of the result's shape
            if self._combined(name, pa[0], tb):
                return True
        symbols = len(p1) == 1 == len(p2) and p1[0].is_Symbol and p2[0].is_Symbol
        if symbols and uniform(self.p, s1) and uniform(self.p, s2) and sympy.expand(s1 + s2 - 1) == 0:
            self.emit(New(name, "lerp", (self.operand(p1[0]), self.operand(p2[0]), S(s2))))
            return True
        return False

    def _combined(self, name: str, first, term) -> bool:
        """name = first + term in one add/addcmul/addcdiv, when term has such a form."""
        scale, num, den = split(self.p, term)
        if not den and len(num) == 1 and not (self.foreach and self.p.per_tensor(scale)):
            fn, kw = "add", alpha_kw(scale)
        elif not den and len(num) == 2:
            fn, kw = "addcmul", value_kw(scale)
        elif len(num) == 1 and len(den) == 1:
            fn, kw = "addcdiv", value_kw(scale)
        else:
            return False
        base = self.operand(first)
        args = [self.operand(f) for f in num] + [self.operand(f, hint="denom") for f in den]
        self.emit(New(name, fn, (base, *args), kw))
        return True

    def _fresh_mul(self, name: str, expr) -> None:
        scale, num, den = split(self.p, expr)
        num = sorted(num, key=lambda f: not self._computed_here(f, expr))
        if not num and self._computed_here(den[0], expr):
            self._fresh_owned(name, den[0])
            self.emit(InPlace(name, "reciprocal", ()))
            den = den[1:]
        elif not num:
            self.emit(New(name, "reciprocal", (self.operand(den[0], hint="denom"),)))
            den = den[1:]
        elif not num[0].is_Symbol:
            self._fresh_owned(name, num[0])
            num = num[1:]
        else:
            num, den, scale = self._first_product(name, num, den, scale)
        self.names.fresh_buffer(name)
        self.inplace.mul_by(name, sympy.Mul(*num) / sympy.Mul(*den) * scale)

    def _first_product(self, name: str, num: list, den: list, scale):
        """The out-of-place op that starts a product whose first factor is a name: the
        factors and scale left for mul_/div_."""
        first, num = self.operand(num[0]), num[1:]
        if num:
            self.emit(New(name, "mul", (first, self.operand(num[0]))))
            return num[1:], den, scale
        if den:
            self.emit(New(name, "div", (first, self.operand(den[0], hint="denom"))))
            return num, den[1:], scale
        top, bottom = sympy.fraction(scale)
        if scale == -1:
            self.emit(New(name, "neg", (first,)))
        elif top == 1:
            self.emit(New(name, "div", (first, S(bottom))))
        else:
            self.emit(New(name, "mul", (first, S(scale))))
        return num, den, sympy.Integer(1)

    def _computed_here(self, factor, expr) -> bool:
        """A factor that only this product needs (sqrt(acc_delta + eps)): computed straight
        into the product's buffer, which the other factors then multiply in place, rather
        than into a temporary of its own (one tensor list less at the peak)."""
        return not factor.is_Symbol and factor not in self.names.st.memo and self.p.kind(factor) == self.p.kind(expr)

    def _fresh_minmax(self, name: str, expr) -> None:
        fn = "maximum" if isinstance(expr, sympy.Max) else "minimum"
        tensors = [a for a in expr.args if not self.p.is_scalar(a)]
        first, others = tensors[0], [a for a in expr.args if a is not tensors[0]]
        scalars = [a for a in others if self.p.is_scalar(a)]
        if first.is_Symbol and len(tensors) > 1:
            self.emit(New(name, fn, (self.operand(first), self.operand(tensors[1]))))
            others = [a for a in others if a is not tensors[1]]
        elif first.is_Symbol and len(tensors) == 1:
            limit = scalars[0] if len(scalars) == 1 else expr.func(*scalars)
            self.emit(New(name, "clamp", (self.operand(first),), {"min" if fn == "maximum" else "max": S(limit)}))
            self.names.fresh_buffer(name)
            return
        else:
            self._fresh_owned(name, first)
        self.names.fresh_buffer(name)
        self.inplace.bound_by(name, expr, others)
