"""A matrix block (optgen/matrix.py) as one MatrixOp: its operands, and the names its
result and locals take.

The for-loop path rebinds the spec variable's name as a hand-written loop does
(`X = X.mT if ... else X`, then the Newton-Schulz loop on `X`), so that option settings
that reach the same loop print it the same way and the variants merge. The foreach path
runs consecutive blocks on stacks within one loop over shape groups; a block's result
stack takes the name of the stack it replaces.
"""

from __future__ import annotations

import re

from ....matrix import PARAM_SHAPE
from ..matrix_ops import MatrixOp
from ..prepare import Prepared, plural
from .bindings import Bindings
from .stream import OpStream


class MatrixValues:
    def __init__(self, p: Prepared, foreach: bool, names: Bindings, stream: OpStream):
        self.p = p
        self.foreach = foreach
        self.names = names
        self.stream = stream

    def schedule(self, v) -> None:
        """Run the block whole on its operands into a new tensor (matrix_ops.py prints it)."""
        block, names = v.matrix, self.names
        tensors, views, scalars = self._operands(block)
        name = None if self.foreach else self._name(v, tensors)
        local = {n: names.new_name(_base(n)) for n in block.locals - {block.result}}
        # the for-loop path computes the result under the value's own name (a loop updates it)
        local[block.result] = self._stack_name(v, local) if self.foreach else name
        if self.foreach:  # a list only for a result read after the run
            name = local[block.result] if self._internal(v) else names.new_name(names.base[v.name])
        stacked = {ir: names.new_name(f"{text}_stack") for ir, text in tensors.items()} if self.foreach else {}
        stacked["__out__"] = plural(name)
        result_shaped = block.shape == PARAM_SHAPE
        self.stream.emit(MatrixOp(name, block, tensors, views, local, stacked, scalars, result_shaped, v.name))
        if self.foreach:  # unstacked from a new stack: its own storage
            names.fresh_buffer(name)
            names.bind(v.name, name)
        else:  # may be a view of an operand (X.mT, or no iteration at all): never updated in place
            shared = set().union(*(names.st.buffers.get(t, {f"home:{t}"}) for t in tensors.values()))
            names.bind(v.name, name, owned=False, buffers=shared)

    def _operands(self, block):
        """The block's tensor operands (IR name -> Python name), those read as a matrix
        view of a param-shaped tensor, and the 0-d device ones."""
        tensors, views, scalars = {}, set(), set()
        for s in block.operands:
            kind = self.p.kinds.get(s.name, "uniform")
            if kind not in ("element", "device"):
                continue
            tensors[s.name] = self.names.st.display[s.name]
            source = self.p.program.by_name.get(s.name)
            if kind == "device":
                scalars.add(s.name)
            elif source is None or source.matrix is None or source.matrix.shape == PARAM_SHAPE:
                views.add(s.name)
        return tensors, views, scalars

    def _name(self, v, tensors: dict) -> str:
        """The for-loop path rebinds the spec variable's name when what it holds is dead and
        the block reads it only before rebinding it."""
        names = self.names
        base = names.base[v.name]
        held = names.st.bound.get(base)
        if held is None or base in self.p.chains or not names.dead(held):
            return names.new_name(base)
        if not rebinding_safe(v.matrix, {ir for ir, text in tensors.items() if text == base}):
            return names.new_name(base)
        return base

    def _stack_name(self, v, local: dict) -> str:
        """The foreach path's name for the block's result stack: the stack of an earlier
        block of the run that it replaces (dead, read only before the rebinding), else the
        spec variable's own name where no block of the run holds it. A stack lives inside
        the loop over shape groups, where the lists' singular names are not variables."""
        block, run = v.matrix, self._run()
        made = {op.ir: op.locals[op.block.result] for op in run}
        read = {s.name for s in block.operands}
        for ir, stack in made.items():
            if ir in read and self.names.dead(ir) and rebinding_safe(block, {ir}):
                return stack
        base = self.names.base[v.name]
        held = {n for op in run for n in (*op.locals.values(), *op.stacked.values())} | set(local.values())
        if v.var and base not in self.p.chains and base not in held:
            self.names.taken.add(base)  # no later local of the run takes it
            return base
        return self.names.new_name(_base(block.result))

    def _internal(self, v) -> bool:
        """Whether only the next block reads v (in the same run, so from its stack): then
        v needs no list, nor a name of its own."""
        values, i = self.p.values, self.names.index
        later = (w for w in values[i + 1 :] if w.name not in self.p.absorbed and self.p.kinds[w.name] in _WORK)
        nxt = next(later, None)
        if nxt is None or nxt.matrix is None or nxt.guard != v.guard:
            return False
        return self.p.last_use.get(v.name) == values.index(nxt)

    def _run(self) -> list:
        """The blocks just before this one, in the same list: the foreach path runs them in
        one loop over shape groups (matrix_ops.matrix_runs)."""
        run: list = []
        for op in reversed(self.stream.ops):
            if not isinstance(op, MatrixOp):
                break
            run.append(op)
        return run[::-1]


_WORK = ("element", "device", "scalar")  # kinds of value that run as ops of the update (not host values)


def rebinding_safe(block, held: set[str]) -> bool:
    """Whether a block whose result takes the name of the operands `held` reads them only
    before the name is bound: as the start of the loop that carries the result, or in the
    block's one statement."""
    if not held:
        return True
    reads = any(s.name in held for _, e in block.body for s in e.free_symbols)
    if block.init:
        start = block.init.get(block.result)
        return start is not None and start.name in held and not reads
    return (block.count is None and len(block.body) == 1) or not reads


def needs_matrix(op) -> bool:
    """A block that multiplies the parameter's matrix view (top-level ops run on every tensor)."""
    return isinstance(op, MatrixOp) and bool(op.views) and op.block.has_matmul


def _base(local: str) -> str:
    """A block local's readable name: its variable's (X_3 -> X)."""
    return re.sub(r"_[0-9]+$", "", local)
