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

from dataclasses import dataclass

import sympy

from ....shapes import ALL_RANKS, guard_condition
from ..matrix_ops import MATRIX_RANKS
from ..ops import Alias, Eval, HostAssign, If, InPlace, New, Reduce, T
from ..prepare import Prepared, inline
from .bindings import Bindings
from .branches import Branches
from .fresh import FreshWriter
from .inplace import InPlaceWriter
from .matrix_value import MatrixValues, needs_matrix
from .shape_classes import ShapeClasses
from .stream import OpStream
from .terms import UNARY, fold_denominator_scales, symbol_in
from .zero_defaults import zero_tables


@dataclass
class Schedule:
    group: list  # once per param group (uniform host values, cross-parameter values)
    per_tensor_host: list  # Python floats per tensor (bias corrections)
    work: list  # the update, per tensor (for-loop) or per list (foreach)
    branch_conditions: list  # per-tensor host conditions (foreach batches are split on them)
    display: dict  # IR name -> Python name
    uses_step: bool
    # the ranks every tensor has once the implementation's first check passed: {2} when a
    # matrix block runs on every tensor (a tensor of another rank is a ValueError up front)
    ranks: frozenset | None = None


class Scheduler:
    """Value by value, in program order: host values as Python floats, a new version of
    param or a state into its buffer, any other value into a new (or reused) tensor."""

    def __init__(self, p: Prepared, foreach: bool, reserved: set[str]):
        self.p = p
        self.foreach = foreach
        self.names = Bindings(p, foreach, reserved)
        self.stream = OpStream(zero_tables(p))
        self.branches = Branches(p, foreach, self.names, self.stream)
        shapes = ShapeClasses(p)
        self.inplace = InPlaceWriter(p, foreach, self.names, self.stream, self.branches, shapes)
        self.fresh = FreshWriter(p, foreach, self.names, self.stream, self.branches, shapes, self.inplace)
        self.inplace.fresh = self.fresh  # each builds on the other: a temporary, a term in place
        self.matrix = MatrixValues(p, foreach, self.names, self.stream)

    @property
    def taken(self) -> set[str]:
        """Every Python name in use once the schedule is made (the reserved ones and its own)."""
        return self.names.taken

    def run(self) -> Schedule:
        group, host = [], []
        for i, v in enumerate(self.p.values):
            self.names.index = i
            self.names.st.memo = {}
            kind = self.p.kinds[v.name]
            if kind == "uniform":
                group.append(HostAssign(self.names.host_name(v), v.expr, False))
            elif kind == "host":
                host.append(HostAssign(self.names.host_name(v), v.expr, True))
            elif kind == "device_uniform":
                group.append(Eval(self.names.host_name(v), v.expr))
            elif v.name not in self.p.absorbed:
                self._guarded_value(v)
        self.names.index = len(self.p.values)
        self._copy_chains_home()
        names = {s.name for v in self.p.values for s in v.expr.free_symbols}
        return Schedule(
            group,
            host,
            self.stream.ops,
            self.stream.conditions,
            dict(self.names.st.display),
            uses_step="step" in names,
            ranks=MATRIX_RANKS if any(needs_matrix(op) for op in self.stream.ops) else None,
        )

    def _copy_chains_home(self) -> None:
        """A param or state whose last version was computed aside is copied into its buffer."""
        st = self.names.st
        for chain in self.p.chains:
            holder = st.display[st.current[chain]]
            if holder != chain:
                self.stream.emit(InPlace(chain, "copy", (T(holder),)))

    def _guarded_value(self, v) -> None:
        """A value of an `if ndim(param) ...:` body runs for those tensors only: its ops go
        under a per-tensor `if` (the foreach path splits its batches on it)."""
        if v.guard is None:
            self._value(v)
            return
        _, body = self.stream.capture(lambda: self._value(v))
        if not body:
            return
        cond = guard_condition(v.guard)
        other = guard_condition(ALL_RANKS - v.guard)  # the same split of a foreach group
        conditions = self.stream.conditions
        if cond not in conditions and other not in conditions:
            conditions.append(cond)
        self.stream.emit(If(cond, body, [], True))

    def _value(self, v) -> None:
        expr = fold_denominator_scales(self.p, inline(self.p, v.expr))
        self.names.value_expr = expr
        if v.matrix is not None:
            self.matrix.schedule(v)
            if v.var in self.p.chains and not self._partial_version(v):
                # a state's (or param's) new value made by a block: copied home at the end
                self.names.st.current[v.var] = v.name
        elif v.is_reduction:
            source = self.fresh.operand(v.expr)
            name = self.names.temp_name(v)
            self.stream.emit(Reduce(name, v.reduce, source))
            self.names.bind(v.name, name)
        elif v.var in self.p.chains and not self._partial_version(v):
            self._chain_value(v, v.var, expr)
        elif self.p.kinds[v.name] == "scalar":
            self.stream.emit(HostAssign(self.names.host_name(v), v.expr, True))
        else:
            self._tensor_value(v, expr)

    def _tensor_value(self, v, expr) -> None:
        """A new tensor for v, under its spec variable's name where that name is free."""
        kind = self.p.kinds[v.name]
        name = self.names.temp_name(v)
        held = self.names.st.bound.get(name)
        start, taken, conds = self.names.snapshot(), set(self.names.taken), list(self.stream.conditions)
        mark = self.stream.mark()
        self._fresh_value(name, expr, kind)
        reads_held = held is not None and symbol_in(expr, held) is not None
        if reads_held and _read_after_rebinding(self.stream.added_since(mark), name):
            # `name` held a value this one reads: rebinding it is safe when only the op that
            # makes the new tensor reads the old one (grad = grad.add(param, alpha=wd).mul_(r)),
            # not when a later op would read the new tensor under the old name
            self.names.st, self.names.taken, self.stream.conditions = start, taken, conds
            self.stream.rewind(mark)
            name = self.names.new_name(self.names.base[v.name])
            self._fresh_value(name, expr, kind)
        self.names.bind_as(v.name, name)

    def _fresh_value(self, name: str, expr, kind: str) -> None:
        if kind == "element":
            self.branches.guarded(expr, lambda e: self.fresh.fresh(name, e, top=True))
        else:
            self.fresh.fresh(name, expr, top=True)

    def _partial_version(self, v) -> bool:
        """A version of param (or of a state) computed for some ranks only, which a
        where(ndim(param) ..., a, b) joins afterwards: a temporary, not an in-place update."""
        if v.guard is None:
            return False
        states = {s.name: s for s in self.p.program.states}
        ranks = states[v.var].ranks if v.var in states else None
        return ranks is None or not ranks <= v.guard

    def _chain_value(self, v, chain: str, expr) -> None:
        """A new version of param or a state: into its buffer when the old version is dead
        and nothing else shares the storage."""
        names = self.names
        current = names.st.current[chain]
        holder = names.st.display[current]
        in_place = (
            (holder == chain or names.st.owned.get(holder))
            and names.dead(current)
            and not names.aliased(holder, current)
        )
        if chain in self.p.scalar_states:
            self.inplace.scalar_state(holder, current, expr)
            names.st.display[v.name] = holder
        elif in_place:
            self.inplace.into(holder, current, expr)
            names.st.display[v.name] = holder
            names.st.bound[holder] = v.name
        else:  # the old value is read later: compute aside, copy in at the end
            name = names.new_name(f"new_{chain}")
            self.fresh.fresh(name, expr)
            names.bind_as(v.name, name)
        names.st.current[chain] = v.name


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
            isinstance(op, (New, InPlace)) and op.target == name and op.fn in UNARY.values()
        ):
            return True
        if isinstance(op, (Eval, Alias)) and name in (
            getattr(op, "source", None),
            *map(str, getattr(op, "expr", sympy.S(0)).free_symbols),
        ):
            return True
    return False
