"""Lower one program (one setting of the options) to a schedule of torch primitives.

The aim is what a person writes by hand: each update a few passes over memory through the
fused primitives (lerp_, addcmul_, addcdiv_, add_ with alpha, mul_), states and the
parameter updated in place, temporaries reused once dead, nothing allocated that torch's
own optimizers would not allocate.

  into(B, X, E)   make buffer B, which holds X, hold E: in place when X appears linearly
                  (`beta*X + c*Y` is X.mul_(beta).add_(Y, alpha=c), or X.lerp_(Y, c))
  fresh(n, E)     a new tensor n = E: one out-of-place primitive, then in-place ones
  add_term(B, t)  B += t through add_/addcmul_/addcdiv_

A `where` whose condition is a host value (hyperparameters, step) becomes an `if`; a term
scaled by a hyperparameter that defaults to 0 (weight_decay) is skipped when it is 0 if
that saves a pass, as torch.optim does.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import partial

import sympy

from ...errors import CompileError
from ...expr import GRAD, PARAM, axis_reductions_in
from ...matrix import PARAM_SHAPE
from ...shapes import ALL_RANKS, ELEMENT, SCALAR, Shape, guard_condition, shape_of
from .matrix_ops import MatrixOp
from .ops import Alias, Eval, Fill, HostAssign, If, InPlace, New, Reduce, S, T, tensor_op_count
from .prepare import Prepared, inline, plural, tidy_names

_UNARY = {sympy.Abs: "abs", sympy.sign: "sign", sympy.exp: "exp", sympy.log: "log"}


@dataclass
class _State:
    """What the scheduler knows about the buffers at a point of the program."""

    display: dict = field(default_factory=dict)  # IR name -> the Python name holding it
    bound: dict = field(default_factory=dict)  # Python name -> IR name it holds now
    owned: dict = field(default_factory=dict)  # Python name -> a temporary this code made
    buffers: dict = field(default_factory=dict)  # Python name -> ids of the storage it may alias
    current: dict = field(default_factory=dict)  # param/state -> IR name of its latest version
    memo: dict = field(default_factory=dict)  # expression -> Python name, within one value


@dataclass
class Schedule:
    group: list  # once per param group (uniform host values, cross-parameter values)
    per_tensor_host: list  # Python floats per tensor (bias corrections)
    work: list  # the update, per tensor (for-loop) or per list (foreach)
    branch_conditions: list  # per-tensor host conditions (foreach batches are split on them)
    display: dict  # IR name -> Python name
    uses_step: bool


class Scheduler:
    def __init__(self, p: Prepared, foreach: bool, reserved: set[str]):
        self.p = p
        self.foreach = foreach
        self.base = tidy_names(p.values)
        self.taken = set(reserved)
        self.st = _State()
        self.out: list = []
        self.index = 0
        self.ids = 0
        self.branch_conditions: list = []
        self.value_expr = sympy.Integer(0)
        self.absorbed_names = {inline(p, e): n for n, e in p.absorbed.items()}
        for name in [PARAM, GRAD] + p.program.input_names + [s.name for s in p.program.states]:
            self._bind(name, name, owned=False, buffers={f"home:{name}"})
        for name in p.program.hyper_names + [s.name for s in p.program.group_states] + [g.name for g in p.globals]:
            self.st.display[name] = name
        self.st.current = {c: c for c in p.chains}
        self.zero_tables = self._zero_tables()
        self.shapes = _shapes(p)

    # ------------------------------------------------------------------ driver
    def run(self) -> Schedule:
        group, host = [], []
        for i, v in enumerate(self.p.values):
            self.index = i
            self.st.memo = {}
            kind = self.p.kinds[v.name]
            if kind == "uniform":
                group.append(HostAssign(self._host_name(v), v.expr, False))
            elif kind == "host":
                host.append(HostAssign(self._host_name(v), v.expr, True))
            elif kind == "device_uniform":
                group.append(Eval(self._host_name(v), v.expr))
            elif v.name not in self.p.absorbed:
                self._guarded_value(v)
        self.index = len(self.p.values)
        for chain in self.p.chains:
            holder = self.st.display[self.st.current[chain]]
            if holder != chain:
                self.emit(InPlace(chain, "copy", (T(holder),)))
        names = {s.name for v in self.p.values for s in v.expr.free_symbols}
        return Schedule(
            group,
            host,
            self.out,
            self.branch_conditions,
            dict(self.st.display),
            uses_step="step" in names,
        )

    def emit(self, op) -> None:
        off = self._switched_off_by(op)
        if off is not None:
            cond = sympy.Ne(sympy.Symbol(off, real=True), 0)
            last = self.out[-1] if self.out else None
            if isinstance(last, If) and last.cond == cond and not last.orelse:
                last.body.append(op)
            else:
                self.out.append(If(cond, [op], [], False))
            return
        last = self.out[-1] if self.out else None
        if _merge_branches(last, op):  # two `if momentum > 0:` in a row: one
            return
        if _clamps_on_one_side_each(last, op):  # clamp_(min=a) then clamp_(max=b): clamp_(a, b)
            last.kw = {"min": (last.kw | op.kw)["min"], "max": (last.kw | op.kw)["max"]}
            return
        self.out.append(op)

    def _partial_version(self, v) -> bool:
        """A version of param (or of a state) computed for some ranks only, which a
        where(ndim(param) ..., a, b) joins afterwards: a temporary, not an in-place update."""
        if v.guard is None:
            return False
        states = {s.name: s for s in self.p.program.states}
        ranks = states[v.var].ranks if v.var in states else None
        return ranks is None or not ranks <= v.guard

    def _mixes_shapes(self, expr) -> bool:
        """Whether expr combines tensors of different shape classes (a row vector and a
        matrix): in-place primitives cannot grow their output, so it is one expression."""
        if not self.shapes:
            return False
        shapes, operands = dict(self.shapes), {}
        for i, reduction in enumerate(axis_reductions_in(expr)):  # an operand of its own shape
            operand = sympy.Symbol(f"_axis_reduction_{i}", real=True)
            shapes[operand.name], operands[reduction] = shape_of(reduction, self.shapes, None, None), operand
        expr = expr.xreplace(operands)
        result = shape_of(expr, shapes, None, None)
        return any(not shapes.get(s.name, SCALAR).is_scalar and shapes[s.name] != result for s in expr.free_symbols)

    def _guarded_value(self, v) -> None:
        """A value of an `if ndim(param) ...:` body runs for those tensors only: its ops go
        under a per-tensor `if` (the foreach path splits its batches on it)."""
        if v.guard is None:
            self._value(v)
            return
        mark = len(self.out)
        self._value(v)
        body, self.out = self.out[mark:], self.out[:mark]
        if not body:
            return
        cond = guard_condition(v.guard)
        other = guard_condition(ALL_RANKS - v.guard)  # the same split of a foreach group
        if cond not in self.branch_conditions and other not in self.branch_conditions:
            self.branch_conditions.append(cond)
        self.emit(If(cond, body, [], True))

    def _value(self, v) -> None:
        kind = self.p.kinds[v.name]
        expr = self._fold_denominator_scales(inline(self.p, v.expr))
        self.value_expr = expr
        if v.matrix is not None:
            self._matrix_value(v)
            return
        if v.is_reduction:
            source = self.operand(v.expr)
            name = self._temp_name(v)
            self.emit(Reduce(name, v.reduce, source))
            self._bind(v.name, name)
            return
        if v.var in self.p.chains and not self._partial_version(v):
            self._chain_value(v, v.var, expr)
            return
        if kind == "scalar":
            self.emit(HostAssign(self._host_name(v), v.expr, True))
            return
        name = self._temp_name(v)
        held = self.st.bound.get(name)
        start, taken, conds = self.snapshot(), set(self.taken), list(self.branch_conditions)
        mark, last = len(self.out), copy.deepcopy(self.out[-1:])  # emit may merge into the last op
        self._fresh_value(name, expr, kind)
        if held is not None and _symbol_in(expr, held) is not None and _read_after_rebinding(self.out[mark:], name):
            # `name` held a value this one reads: rebinding it is safe when only the op that
            # makes the new tensor reads the old one (grad = grad.add(param, alpha=wd).mul_(r)),
            # not when a later op would read the new tensor under the old name
            self.st, self.taken, self.branch_conditions = start, taken, conds
            self.out = self.out[: mark - len(last)] + last
            name = self._new_name(self.base[v.name])
            self._fresh_value(name, expr, kind)
        self._bind(v.name, name, owned=self.st.owned.get(name, False), buffers=self.st.buffers.get(name))

    def _matrix_value(self, v) -> None:
        """A matrix block: run whole on its operands into a new tensor (matrix_ops.py)."""
        block = v.matrix
        name = self._new_name(self.base[v.name])
        by_name = self.p.program.by_name
        tensors, views, scalars = {}, set(), set()
        for s in block.operands:
            kind = self.p.kinds.get(s.name, "uniform")
            if kind not in ("element", "device"):
                continue
            tensors[s.name] = self.st.display[s.name]
            source = by_name.get(s.name)
            if kind == "device":
                scalars.add(s.name)
            elif source is None or source.matrix is None or source.matrix.shape == PARAM_SHAPE:
                views.add(s.name)
        # the for-loop path computes the result under the value's own name (a loop updates it)
        local = {n: self._new_name(re.sub(r"_[0-9]+$", "", n)) for n in block.locals - {block.result}}
        local[block.result] = name if not self.foreach else self._new_name(re.sub(r"_[0-9]+$", "", block.result))
        stacked = {ir: self._new_name(f"{text}_stack") for ir, text in tensors.items()} if self.foreach else {}
        stacked["__out__"] = plural(name)
        result_shaped = block.shape == PARAM_SHAPE
        self.emit(MatrixOp(name, block, tensors, views, local, stacked, scalars, result_shaped, v.name))
        if self.foreach:  # unstacked from a new stack: its own storage
            self._fresh_buffer(name)
            self._bind(v.name, name)
        else:  # may be a view of an operand (X.mT, or no iteration at all): never updated in place
            shared = set().union(*(self.st.buffers.get(t, {f"home:{t}"}) for t in tensors.values()))
            self._bind(v.name, name, owned=False, buffers=shared)

    def _fresh_value(self, name: str, expr, kind: str) -> None:
        if kind == "element":
            self.guarded(expr, lambda e: self.fresh(name, e, top=True))
        else:
            self.fresh(name, expr, top=True)

    def _fold_denominator_scales(self, expr):
        """a / (x/c + e) -> (a*c) / (x + e*c) for host values c and e: the division by c
        rides on the scalars (the step size, eps) instead of taking a pass over x (Adam's
        sqrt(v)/sqrt(bias_correction2) + eps)."""

        def folded(power):
            host = [t for t in power.base.args if self.p.is_scalar(t)]
            (term,) = [t for t in power.base.args if not self.p.is_scalar(t)]
            divisors = [f for f in sympy.Mul.make_args(term) if self.p.is_scalar(f)]
            c = sympy.Mul(*[sympy.Pow(f, -1) for f in divisors])
            return c / (term * c + sympy.Add(*host) * c)

        def matches(e) -> bool:
            if not (isinstance(e, sympy.Pow) and e.exp == -1 and isinstance(e.base, sympy.Add)):
                return False
            tensors = [t for t in e.base.args if not self.p.is_scalar(t)]
            if len(tensors) != 1 or len(tensors) == len(e.base.args):
                return False
            divisors = [f for f in sympy.Mul.make_args(tensors[0]) if self.p.is_scalar(f)]
            return bool(divisors) and all(f.is_Pow and f.exp.is_negative for f in divisors)

        return expr.replace(matches, folded)

    def _chain_value(self, v, chain: str, expr) -> None:
        current = self.st.current[chain]
        holder = self.st.display[current]
        in_place = (
            (holder == chain or self.st.owned.get(holder))
            and self._dead(current)
            and not self._aliased(holder, current)
        )
        if chain in self.p.scalar_states:
            self._scalar_state(holder, current, expr)
            self.st.display[v.name] = holder
        elif in_place:
            self.into(holder, current, expr)
            self.st.display[v.name] = holder
            self.st.bound[holder] = v.name
        else:  # the old value is read later: compute aside, copy in at the end
            name = self._new_name(f"new_{chain}")
            self.fresh(name, expr)
            self._bind(v.name, name, owned=self.st.owned.get(name, False), buffers=self.st.buffers.get(name))
        self.st.current[chain] = v.name

    def _scalar_state(self, holder: str, current: str, expr) -> None:
        x = _symbol_in(expr, current)
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

    # ------------------------------------------------------------------ names and buffers
    def _new_name(self, base: str) -> str:
        def free(n):
            return n not in self.taken and (not self.foreach or plural(n) not in self.taken)

        name, k = base, 1
        while not free(name):
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        self.taken.add(plural(name))
        return name

    def _host_name(self, v) -> str:
        name = self._new_name(self.base[v.name])
        self.st.display[v.name] = name
        return name

    def _temp_name(self, v) -> str:
        """The Python name for a value: its spec variable, rebinding that name when what it
        held is dead (`grad = grad.add(...)`)."""
        base = self.base[v.name]
        held = self.st.bound.get(base)
        if held is not None and base not in self.p.chains and self._dead(held):
            return base
        return self._new_name(base)

    def _free_to_rebind(self, name: str, expr) -> bool:
        """`name` may take a new value inside this value's work: what it holds is read only
        by `expr` (`grad = grad.add(momentum_buffer, alpha=momentum)`)."""
        held = self.st.bound.get(name)
        if held is None or name in self.p.chains or not self._dead(held):
            return False
        return _count(self.value_expr, held) == _count(expr, held)

    def _bind(self, ir: str, name: str, owned: bool | None = None, buffers=None) -> None:
        self.st.display[ir] = name
        self.st.bound[name] = ir
        if owned is not None:
            self.st.owned[name] = owned
        if buffers is not None:
            self.st.buffers[name] = set(buffers)

    def _fresh_buffer(self, name: str) -> None:
        self.ids += 1
        self.st.owned[name] = True
        self.st.buffers[name] = {f"tmp{self.ids}"}

    def _dead(self, ir: str) -> bool:
        return self.p.last_use.get(ir, -1) <= self.index

    def _aliased(self, holder: str, keep: str) -> bool:
        """Another live name may alias the storage of `holder`."""
        ids = self.st.buffers.get(holder, set())
        for name, ir in self.st.bound.items():
            if name != holder and ir != keep and not self._dead(ir) and ids & self.st.buffers.get(name, set()):
                return True
        return False

    def _tensor_symbols(self, expr) -> list[sympy.Symbol]:
        return sorted((s for s in expr.free_symbols if not self.p.is_scalar(s)), key=lambda s: s.name)

    def _conflicts(self, holder: str, x: str, expr) -> bool:
        ids = self.st.buffers.get(holder, set())
        return any(
            s.name != x and ids & self.st.buffers.get(self.st.display.get(s.name, ""), set())
            for s in self._tensor_symbols(expr)
        )

    # ------------------------------------------------------------------ branches
    def snapshot(self) -> _State:
        return copy.deepcopy(self.st)

    def branch(self, cond, build_true, build_false) -> None:
        per_tensor = self.p.per_tensor(cond)
        if per_tensor and self.foreach:
            if any(self.p.kinds.get(s.name) == "scalar" for s in cond.free_symbols):
                where = self.p.values[min(self.index, len(self.p.values) - 1)].loc if self.p.values else None
                raise CompileError(where, f"the foreach path cannot branch on a state read per tensor: {cond}")
            if cond not in self.branch_conditions:
                self.branch_conditions.append(cond)
        start, outer, taken = self.snapshot(), self.out, set(self.taken)
        self.out = []
        build_true()
        body, after_true, taken_true = self.out, self.st, self.taken
        self.st, self.out, self.taken = start, [], taken  # the branches may reuse names
        build_false()
        orelse = self.out
        self.taken |= taken_true
        for name, owned in list(self.st.owned.items()):
            self.st.owned[name] = owned and after_true.owned.get(name, False)
        for name, ids in after_true.buffers.items():
            self.st.buffers[name] = self.st.buffers.get(name, set()) | ids
        self.st.memo = {}
        self.out = outer
        if not body and not orelse:
            return
        if not body:
            body, orelse, cond = orelse, [], sympy.Not(cond)
        self.emit(If(cond, body, orelse, per_tensor))

    def guarded(self, expr, build) -> None:
        """Skip a new tensor that a zero-default hyperparameter (weight_decay) makes a copy
        of a name: `if weight_decay != 0: grad = grad.add(param, alpha=weight_decay)`."""
        for h, table in self.zero_tables.items():
            at_zero = expr.xreplace({s: table[s.name] for s in expr.free_symbols if s.name in table})
            if at_zero == expr or not at_zero.is_Symbol:
                continue  # in-place work is switched off op by op (see emit)
            if self._cost(build, at_zero) < self._cost(build, expr):
                self.branch(sympy.Ne(sympy.Symbol(h, real=True), 0), partial(build, expr), partial(build, at_zero))
                return
        build(expr)

    def _switched_off_by(self, op) -> str | None:
        """The zero-default hyperparameter (weight_decay) that makes an in-place op a no-op:
        `param.mul_(1 - lr * weight_decay)` runs only when weight_decay != 0."""
        if not isinstance(op, InPlace):
            return None
        if op.fn in ("mul", "div") and isinstance(op.args[0], S):
            scalar, identity = op.args[0].expr, 1
        elif op.fn in ("add", "addcmul", "addcdiv") and set(op.kw) & {"alpha", "value"}:
            scalar, identity = (op.kw.get("alpha") or op.kw.get("value")).expr, 0
        elif op.fn == "add" and isinstance(op.args[0], S):
            scalar, identity = op.args[0].expr, 0
        else:
            return None
        for h, table in self.zero_tables.items():
            at_zero = scalar.xreplace({s: table[s.name] for s in scalar.free_symbols if s.name in table})
            if at_zero != scalar and at_zero == identity:
                return h
        return None

    def _cost(self, build, expr) -> int:
        start, outer, taken, conds = self.snapshot(), self.out, set(self.taken), list(self.branch_conditions)
        self.out = []
        build(expr)
        cost = tensor_op_count(self.out)
        self.st, self.out, self.taken, self.branch_conditions = start, outer, taken, conds
        return cost

    def _zero_tables(self) -> dict[str, dict]:
        """For each hyperparameter defaulting to 0: the group values that become constants."""
        tables = {}
        spec = self.p.program.spec
        for name, (h, i) in spec.scalar_hypers.items():
            if h.captured is not None or h.default[i] != 0 or not h.range.contains(0.0) or name not in self.p.kinds:
                continue
            table = {name: sympy.Integer(0)}
            for v in self.p.values:
                if self.p.kinds[v.name] in ("uniform", "device_uniform"):
                    e = v.expr.xreplace({s: table[s.name] for s in v.expr.free_symbols if s.name in table})
                    if e.is_number or e in (sympy.true, sympy.false):
                        table[v.name] = e
            tables[name] = table
        return tables

    def _host_condition(self, cond) -> bool:
        """A condition the code can branch on with a Python `if`. On the foreach path a
        scalar state is read tensor by tensor, after the batch is formed: there a `where`
        on it stays an elementwise select."""
        if self.foreach and any(self.p.kinds.get(s.name) == "scalar" for s in cond.free_symbols):
            return False
        return self.p.is_scalar(cond)

    def fold(self, expr):
        """Lift a `where` on a host condition to the top: where(c, a, b) * x -> where(c, a*x, b*x).
        Every `where` on the same conditions takes the same side (d - d*d with d = where(...))."""
        if isinstance(expr, sympy.Piecewise) and all(self._host_condition(p.cond) for p in expr.args):
            return expr
        for sub in sympy.preorder_traversal(expr):
            if isinstance(sub, sympy.Piecewise) and all(self._host_condition(p.cond) for p in sub.args):
                conds = tuple(p.cond for p in sub.args)
                pieces = [(_take_side(expr, conds, i), cond) for i, cond in enumerate(conds)]
                return sympy.Piecewise(*pieces)
        return expr

    def _split_piecewise(self, expr):
        (first, cond), rest = expr.args[0], expr.args[1:]
        other = rest[0].expr if len(rest) == 1 and rest[0].cond is sympy.true else sympy.Piecewise(*rest)
        return cond, first, other

    # ------------------------------------------------------------------ into a buffer
    def into(self, holder: str, x: str | None, expr) -> None:
        """Make `holder` (holding IR value x) hold expr, in place where possible."""
        expr = self.fold(expr)
        xs = _symbol_in(expr, x) if x else None
        if xs is not None and expr == xs:
            return
        if isinstance(expr, sympy.Piecewise) and self._host_condition(expr.args[0].cond):
            cond, a, b = self._split_piecewise(expr)
            self.branch(cond, lambda: self.into(holder, x, a), lambda: self.into(holder, x, b))
            return
        if xs is None or not expr.has(xs):
            self.assign(holder, expr)
            return
        if self._conflicts(holder, x, expr) or self._mixes_shapes(expr):
            self.via_temp(holder, expr)
            return
        start, outer = self.snapshot(), self.out
        self.out = []
        if self._into_shape(holder, x, xs, expr):
            self.out = outer + self.out
            return
        self.st, self.out = start, outer
        collected = sympy.collect(sympy.expand_mul(expr), xs)  # x*(1 - c*wd) - c*m/d: one mul_, one addcdiv_
        if collected != expr and self._into_shape(holder, x, xs, collected):
            return
        self.via_temp(holder, expr)

    def _into_shape(self, holder, x, xs, expr) -> bool:
        if isinstance(expr, sympy.Add):
            return self._into_add(holder, x, xs, expr)
        if isinstance(expr, sympy.Mul):
            with_x = [f for f in expr.args if f.has(xs)]
            if len(with_x) != 1:
                return False
            self.into(holder, x, with_x[0])
            self.mul_by(holder, sympy.Mul(*[f for f in expr.args if f is not with_x[0]]))
            return True
        if isinstance(expr, sympy.Pow) and not expr.exp.has(xs) and self.p.is_scalar(expr.exp):
            self.into(holder, x, expr.base)
            self.emit(InPlace(holder, *_pow_fn(expr.exp)))
            return True
        if type(expr) in _UNARY:
            self.into(holder, x, expr.args[0])
            self.emit(InPlace(holder, _UNARY[type(expr)], ()))
            return True
        if isinstance(expr, (sympy.Max, sympy.Min)):
            with_x = [a for a in expr.args if a.has(xs)]
            if len(with_x) != 1:
                return False
            self.into(holder, x, with_x[0])
            self._bound_by(holder, expr, [a for a in expr.args if a is not with_x[0]])
            return True
        return False

    def _into_add(self, holder, x, xs, expr) -> bool:
        with_x = [t for t in expr.args if t.has(xs)]
        if len(with_x) != 1:
            return False
        (xt,), others = with_x, [t for t in expr.args if t is not with_x[0]]
        coeff, rest = xt.as_independent(xs, as_Add=False)
        if len(others) == 1 and rest == xs and self._uniform(coeff):
            scale, parts = self._coefficient(others[0])
            if len(parts) == 1 and parts[0].is_Symbol and self._uniform(scale) and sympy.expand(coeff + scale - 1) == 0:
                self.emit(InPlace(holder, "lerp", (self.operand(parts[0]), S(scale))))
                return True
        self.into(holder, x, xt)
        for term in others:
            self.add_term(holder, term)
        return True

    def assign(self, holder: str, expr) -> None:
        expr = self.fold(expr)
        if isinstance(expr, sympy.Piecewise) and self._host_condition(expr.args[0].cond):
            cond, a, b = self._split_piecewise(expr)
            self.branch(cond, lambda: self.assign(holder, a), lambda: self.assign(holder, b))
        elif expr.is_Symbol and not self.p.is_scalar(expr):
            self.emit(InPlace(holder, "copy", (self.operand(expr),)))
        elif self.p.is_scalar(expr):
            self.emit(InPlace(holder, "fill", (S(expr),)))
        else:
            self.via_temp(holder, expr)

    def via_temp(self, holder: str, expr) -> None:
        name = self._new_name(f"new_{holder}")
        self.fresh(name, expr)
        self.emit(InPlace(holder, "copy", (T(name),)))

    # ------------------------------------------------------------------ in-place arithmetic
    def add_term(self, holder: str, term) -> None:
        scale, num, den = self._split(term)
        if not num and not den:
            self.emit(InPlace(holder, "add", (S(scale),)))
            return
        if not num:  # scale / d
            num, den = [sympy.Pow(sympy.Mul(*den), -1)], []
        if not den and len(num) == 1:
            self._add_scaled(holder, self.operand(num[0]), scale)
        elif not den:
            first, rest = self.operand(num[0]), self.operand(sympy.Mul(*num[1:]))
            self.emit(InPlace(holder, "addcmul", (first, rest), _value(scale)))
        else:
            top = self.operand(sympy.Mul(*num))
            bottom = self.operand(sympy.Mul(*den), hint="denom")
            self.emit(InPlace(holder, "addcdiv", (top, bottom), _value(scale)))

    def _add_scaled(self, holder: str, operand: T, scale) -> None:
        if self.foreach and scale != 1 and self.p.per_tensor(scale):
            # _foreach_add_ takes one alpha for all tensors: scale the addend first
            operand = self._scaled_copy(operand, scale)
            scale = sympy.Integer(1)
        self.emit(InPlace(holder, "add", (operand,), _alpha(scale)))

    def _scaled_copy(self, operand: T, scale) -> T:
        name = self._new_name(f"scaled_{operand.name}")
        self.emit(New(name, "mul", (operand, S(scale))))
        self._fresh_buffer(name)
        return T(name)

    def mul_by(self, holder: str, factor) -> None:
        scale, num, den = self._split(factor)
        for f in num:
            self.emit(InPlace(holder, "mul", (self.operand(f),)))
        for f in den:
            self.emit(InPlace(holder, "div", (self.operand(f, hint="denom"),)))
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

    def _bound_by(self, holder: str, expr, others) -> None:
        """holder = max/min(holder, others...)."""
        fn = "maximum" if isinstance(expr, sympy.Max) else "minimum"
        scalars = [a for a in others if self.p.is_scalar(a)]
        for other in others:
            if other not in scalars:
                self.emit(InPlace(holder, fn, (self.operand(other),)))
        if scalars:
            limit = scalars[0] if len(scalars) == 1 else expr.func(*scalars)
            self.emit(InPlace(holder, "clamp", (), {"min" if fn == "maximum" else "max": S(limit)}))

    # ------------------------------------------------------------------ new tensors
    def operand(self, expr, hint: str | None = None):
        if self.p.is_scalar(expr):
            return S(expr)
        if expr.is_Symbol:
            return T(self.st.display[expr.name], self.p.kinds.get(expr.name) != "device_uniform")
        if expr in self.st.memo:
            return T(self.st.memo[expr], self.p.kind(expr) != "device_uniform")
        ir = self.absorbed_names.get(expr)
        if ir is None and hint is None:
            holder = self._reuse(None, expr)  # a temporary with no name of its own: keep the reused one's
            if holder is not None:
                self.st.memo[expr] = holder
                return T(holder, self.p.kind(expr) != "device_uniform")
        base = self.base[ir] if ir else hint or _name_for(expr, self.base)
        name = base if ir and self._free_to_rebind(base, expr) else self._new_name(base)
        self.fresh(name, expr, top=True)
        self.st.memo[expr] = name
        return T(name, self.p.kind(expr) != "device_uniform")

    def fresh(self, name: str, expr, top: bool = False) -> None:
        """A new tensor `name` = expr."""
        expr = self.fold(expr)
        if isinstance(expr, sympy.Piecewise) and self._host_condition(expr.args[0].cond):
            cond, a, b = self._split_piecewise(expr)
            self.branch(cond, lambda: self.fresh(name, a, top), lambda: self.fresh(name, b, top))
            return
        if expr.is_Symbol:
            source = self.st.display[expr.name]
            if source != name:
                self.emit(Alias(name, source))
                self.st.owned[name] = False
                self.st.buffers[name] = set(self.st.buffers.get(source, set()))
            return
        if self.p.is_scalar(expr):
            self.emit(New(name, "full_like", (T(self.st.display[PARAM]), S(expr))))
            self._fresh_buffer(name)
            return
        if self._mixes_shapes(expr):
            self.emit(Eval(name, expr))
            self._fresh_buffer(name)
            return
        if top and self._reuse(name, expr):
            return
        kind = self.p.kind(expr)
        if kind in ("device", "device_uniform") and not self.foreach or not self._fresh_shape(name, expr):
            self.emit(Eval(name, expr))
        self._fresh_buffer(name)

    def _reuse(self, name: str | None, expr) -> str | None:
        """Compute in place over a temporary that dies here (`denom.add_(...)`); the name
        holding the result (the temporary's own when `name` is None)."""
        if not self.foreach and self.p.kind(expr) != "element":
            return None  # a 0-d value reads better as one expression
        for s in self._tensor_symbols(expr):
            holder = self.st.display.get(s.name)
            if not holder or not self.st.owned.get(holder) or not self._dead(s.name) or self._aliased(holder, s.name):
                continue
            if self.value_expr.count(s) != expr.count(s):
                continue  # the rest of this value still reads it
            if self.p.kinds.get(s.name) != self.p.kind(expr):
                continue
            start, outer = self.snapshot(), self.out
            self.out = []
            self.into(holder, s.name, expr)
            ops = self.out
            if any(isinstance(op, InPlace) and op.fn == "copy" and op.target == holder for op in ops):
                self.st, self.out = start, outer
                continue
            self.out = outer + ops
            if name is None or name == holder:
                return holder
            self.emit(Alias(name, holder))
            self.st.owned[holder] = False
            self.st.owned[name] = True
            self.st.buffers[name] = set(self.st.buffers.get(holder, set()))
            return name
        return None

    def _fresh_shape(self, name: str, expr) -> bool:
        if isinstance(expr, sympy.Add):
            self._fresh_add(name, expr)
        elif isinstance(expr, sympy.Mul):
            self._fresh_mul(name, expr)
        elif isinstance(expr, sympy.Pow) and self.p.is_scalar(expr.exp):
            self._fresh_from(name, expr.base, _pow_fn(expr.exp))
        elif type(expr) in _UNARY:
            self._fresh_from(name, expr.args[0], (_UNARY[type(expr)], ()))
        elif isinstance(expr, (sympy.Max, sympy.Min)):
            self._fresh_minmax(name, expr)
        else:
            return False
        return True

    def _fresh_owned(self, name: str, expr) -> None:
        """A new tensor that this code may then update in place (never an alias)."""
        if expr.is_Symbol:
            self.emit(New(name, "clone", (self.operand(expr),)))
            self._fresh_buffer(name)
            return
        self.fresh(name, expr)
        if not self.st.owned.get(name):
            self.emit(New(name, "clone", (T(name, self.p.kind(expr) != "device_uniform"),)))
            self._fresh_buffer(name)

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
                self.add_term(name, term)
        if scalars != 0:
            self.emit(InPlace(name, "add", (S(scalars),)))

    def _fresh_binary(self, name: str, terms) -> bool:
        """Two terms in one out-of-place primitive: add(Y, Z, alpha), lerp, addcmul, addcdiv."""
        (s1, p1), (s2, p2) = (self._coefficient(t) for t in terms)
        for (sa, pa), (sb, pb), tb in (((s1, p1), (s2, p2), terms[1]), ((s2, p2), (s1, p1), terms[0])):
            if sa != 1 or len(pa) != 1 or not pa[0].is_Symbol or self.p.kind(pa[0]) != self.p.kind(tb):
                continue  # the first operand is the one of the result's shape
            base = self.operand(pa[0])
            scale, num, den = self._split(tb)
            if not den and len(num) == 1 and not (self.foreach and self.p.per_tensor(scale)):
                self.emit(New(name, "add", (base, self.operand(num[0])), _alpha(scale)))
            elif not den and len(num) == 2:
                self.emit(New(name, "addcmul", (base, self.operand(num[0]), self.operand(num[1])), _value(scale)))
            elif len(num) == 1 and len(den) == 1:
                self.emit(
                    New(
                        name, "addcdiv", (base, self.operand(num[0]), self.operand(den[0], hint="denom")), _value(scale)
                    )
                )
            else:
                continue
            return True
        symbols = len(p1) == 1 == len(p2) and p1[0].is_Symbol and p2[0].is_Symbol
        if symbols and self._uniform(s1) and self._uniform(s2) and sympy.expand(s1 + s2 - 1) == 0:
            self.emit(New(name, "lerp", (self.operand(p1[0]), self.operand(p2[0]), S(s2))))
            return True
        return False

    def _fresh_mul(self, name: str, expr) -> None:
        scale, num, den = self._split(expr)
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
            first, num = self.operand(num[0]), num[1:]
            if num:
                self.emit(New(name, "mul", (first, self.operand(num[0]))))
                num = num[1:]
            elif den:
                self.emit(New(name, "div", (first, self.operand(den[0], hint="denom"))))
                den = den[1:]
            else:
                top, bottom = sympy.fraction(scale)
                if scale == -1:
                    self.emit(New(name, "neg", (first,)))
                elif top == 1:
                    self.emit(New(name, "div", (first, S(bottom))))
                else:
                    self.emit(New(name, "mul", (first, S(scale))))
                scale = sympy.Integer(1)
        self._fresh_buffer(name)
        rest = sympy.Mul(*num) / sympy.Mul(*den) * scale
        self.mul_by(name, rest)

    def _computed_here(self, factor, expr) -> bool:
        """A factor that only this product needs (sqrt(acc_delta + eps)): computed straight
        into the product's buffer, which the other factors then multiply in place, rather
        than into a temporary of its own (one tensor list less at the peak)."""
        return not factor.is_Symbol and factor not in self.st.memo and self.p.kind(factor) == self.p.kind(expr)

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
            self._fresh_buffer(name)
            return
        else:
            self._fresh_owned(name, first)
        self._fresh_buffer(name)
        self._bound_by(name, expr, others)

    # ------------------------------------------------------------------ helpers
    def _uniform(self, expr) -> bool:
        return self.p.is_scalar(expr) and not self.p.per_tensor(expr)

    def _coefficient(self, term):
        """term = scale * product(parts), scale a host scalar."""
        scale, parts = sympy.Integer(1), []
        for f in sympy.Mul.make_args(term):
            if self.p.is_scalar(f):
                scale *= f
            else:
                parts.append(f)
        return scale, parts

    def _split(self, term):
        """term = scale * product(num) / product(den), num and den tensors."""
        scale, num, den = sympy.Integer(1), [], []
        for f in sympy.Mul.make_args(term):
            if self.p.is_scalar(f):
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
        element_first = lambda e: self.p.kind(e) != "element"
        return scale, sorted(num, key=element_first), sorted(den, key=element_first)


def _read_after_rebinding(ops: list, name: str) -> bool:
    """Whether an op reads tensor `name` other than the ones that make it anew."""
    for op in ops:
        if isinstance(op, If):
            if _read_after_rebinding(op.body, name) or _read_after_rebinding(op.orelse, name):
                return True
            continue
        if isinstance(op, New) and op.target == name:
            continue
        args = op.args if isinstance(op, (New, InPlace)) else (op.source,) if isinstance(op, Reduce) else ()
        if any(isinstance(a, T) and a.name == name for a in args) or (
            isinstance(op, (New, InPlace)) and op.target == name and op.fn in _UNARY.values()
        ):
            return True
        if isinstance(op, (Eval, Alias)) and name in (
            getattr(op, "source", None),
            *map(str, getattr(op, "expr", sympy.S(0)).free_symbols),
        ):
            return True
    return False


def _take_side(expr, conds: tuple, i: int):
    """expr with every where(...) on `conds` replaced by its i-th side."""

    def same(e):
        return isinstance(e, sympy.Piecewise) and tuple(p.cond for p in e.args) == conds

    return expr.replace(same, lambda e: e.args[i].expr)


def _symbol_in(expr, name: str):
    """The symbol called `name` in expr (symbols match by name: their assumptions differ)."""
    return next((s for s in expr.free_symbols if s.name == name), None)


def _count(expr, name: str) -> int:
    return sum(1 for s in sympy.preorder_traversal(expr) if s.is_Symbol and s.name == name)


def _clamps_on_one_side_each(last, op) -> bool:
    return (
        isinstance(op, InPlace)
        and isinstance(last, InPlace)
        and op.fn == last.fn == "clamp"
        and last.target == op.target
        and not set(last.kw) & set(op.kw)
    )


def _pow_fn(exp) -> tuple:
    if exp == sympy.Rational(1, 2):
        return ("sqrt", ())
    if exp == -sympy.Rational(1, 2):
        return ("rsqrt", ())
    if exp == -1:
        return ("reciprocal", ())
    if exp == 2:
        return ("square", ())
    return ("pow", (S(exp),))


def _value(scale) -> dict:
    return {} if scale == 1 else {"value": S(scale)}


def _alpha(scale) -> dict:
    return {} if scale == 1 else {"alpha": S(scale)}


def _name_for(expr, base: dict) -> str:
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


def _merge_branches(last, op) -> bool:
    """Append `op`, an If on the same host condition as `last` (or its negation), to `last`'s
    branches. Host conditions are fixed for the whole step, so the merge keeps the order of
    every op on each side."""
    if not (isinstance(last, If) and isinstance(op, If) and last.per_tensor == op.per_tensor):
        return False
    if op.cond == last.cond:
        last.body.extend(op.body)
        last.orelse.extend(op.orelse)
    elif op.cond == sympy.Not(last.cond) or last.cond == sympy.Not(op.cond):
        last.body.extend(op.orelse)
        last.orelse.extend(op.body)
    else:
        return False
    return True


def _shapes(p: Prepared) -> dict:
    """IR name -> shape class, when the program has axis structure (else empty: nothing to
    check, and the schedule of an elementwise program is unchanged)."""
    program = p.program
    if not program.has_axes:
        return {}
    shapes = {name: ELEMENT for name, scope in program.input_scopes.items() if scope == "element"}
    shapes.update({s.name: Shape(frozenset(s.axes)) for s in program.states if s.scope == "element"})
    shapes.update({v.name: v.shape for v in p.values})
    return shapes
