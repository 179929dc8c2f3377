"""Python `if`s: a `where` on a host condition (a hyperparameter, the step) and the work a
zero-default hyperparameter switches off.

Each side of a branch is scheduled from the same knowledge of the buffers; afterwards a
name is a temporary of this code's own only if it is one on both sides, and may share the
storage it shares on either. On the foreach path a per-tensor condition splits the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import sympy

from ....errors import CompileError
from ..ops import If, tensor_op_count
from ..prepare import Prepared
from .bindings import Bindings
from .stream import OpStream
from .terms import split_piecewise, take_side
from .zero_defaults import at_zero


class Branches:
    def __init__(self, p: Prepared, foreach: bool, names: Bindings, stream: OpStream):
        self.p = p
        self.foreach = foreach
        self.names = names
        self.stream = stream

    def branch(self, cond, build_true: Callable[[], None], build_false: Callable[[], None]) -> None:
        per_tensor = self._per_tensor(cond)
        start, taken = self.names.snapshot(), set(self.names.taken)
        _, body = self.stream.capture(build_true)
        after_true, taken_true = self.names.st, self.names.taken
        self.names.st, self.names.taken = start, taken  # the branches may reuse names
        _, orelse = self.stream.capture(build_false)
        self._join(after_true, taken_true)
        if not body and not orelse:
            return
        if not body:
            body, orelse, cond = orelse, [], sympy.Not(cond)
        self.stream.emit(If(cond, body, orelse, per_tensor))

    def split(self, expr, build: Callable[[sympy.Expr], None]) -> bool:
        """Whether expr is a `where` on a host condition, built as an `if` over its sides."""
        if not (isinstance(expr, sympy.Piecewise) and self.host_condition(expr.args[0].cond)):
            return False
        cond, a, b = split_piecewise(expr)
        self.branch(cond, partial(build, a), partial(build, b))
        return True

    def guarded(self, expr, build: Callable[[sympy.Expr], None]) -> None:
        """Skip a new tensor that a zero-default hyperparameter (weight_decay) makes a copy
        of a name: `if weight_decay != 0: grad = grad.add(param, alpha=weight_decay)`."""
        for h, table in self.stream.zero_tables.items():
            zero = at_zero(expr, table)
            if zero == expr or not zero.is_Symbol:
                continue  # in-place work is switched off op by op (see OpStream.emit)
            if self._cost(build, zero) < self._cost(build, expr):
                self.branch(sympy.Ne(sympy.Symbol(h, real=True), 0), partial(build, expr), partial(build, zero))
                return
        build(expr)

    def host_condition(self, cond) -> bool:
        """A condition the code can branch on with a Python `if`. On the foreach path a
        scalar state is read tensor by tensor, after the batch is formed: there a `where`
        on it stays an elementwise select."""
        if self.foreach and self._reads_scalar_state(cond):
            return False
        return self.p.is_scalar(cond)

    def fold(self, expr):
        """Lift a `where` on a host condition to the top: where(c, a, b) * x -> where(c, a*x, b*x).
        Every `where` on the same conditions takes the same side (d - d*d with d = where(...))."""
        if isinstance(expr, sympy.Piecewise) and all(self.host_condition(p.cond) for p in expr.args):
            return expr
        for sub in sympy.preorder_traversal(expr):
            if isinstance(sub, sympy.Piecewise) and all(self.host_condition(p.cond) for p in sub.args):
                conds = tuple(p.cond for p in sub.args)
                pieces = [(take_side(expr, conds, i), cond) for i, cond in enumerate(conds)]
                return sympy.Piecewise(*pieces)
        return expr

    def _per_tensor(self, cond) -> bool:
        """Whether cond differs from tensor to tensor; on the foreach path such a condition
        splits the batch, so it is recorded."""
        per_tensor = self.p.per_tensor(cond)
        if per_tensor and self.foreach:
            if self._reads_scalar_state(cond):
                values = self.p.values
                where = values[min(self.names.index, len(values) - 1)].loc if values else None
                raise CompileError(where, f"the foreach path cannot branch on a state read per tensor: {cond}")
            if cond not in self.stream.conditions:
                self.stream.conditions.append(cond)
        return per_tensor

    def _reads_scalar_state(self, cond) -> bool:
        return any(self.p.kinds.get(s.name) == "scalar" for s in cond.free_symbols)

    def _join(self, after_true, taken_true: set) -> None:
        """The knowledge after either side: names taken on either, a temporary only if one
        on both, storage shared as on either."""
        st = self.names.st
        self.names.taken |= taken_true
        for name, owned in list(st.owned.items()):
            st.owned[name] = owned and after_true.owned.get(name, False)
        for name, ids in after_true.buffers.items():
            st.buffers[name] = st.buffers.get(name, set()) | ids
        st.memo = {}

    def _cost(self, build: Callable[[sympy.Expr], None], expr) -> int:
        """How many tensor ops build(expr) takes, leaving no trace."""
        start, taken, conds = self.names.snapshot(), set(self.names.taken), list(self.stream.conditions)
        _, ops = self.stream.capture(partial(build, expr))
        self.names.st, self.names.taken, self.stream.conditions = start, taken, conds
        return tensor_op_count(ops)
