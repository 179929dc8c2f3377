"""Matrix blocks (optgen/matrix.py) in the torch paths.

The for-loop path runs a block on each (2-D) parameter; `beta * M + alpha * P @ Q` is one torch.addmm, as torch.optim.Muon writes its
Newton-Schulz step. The foreach path groups the tensors by shape, stacks each group
(torch.stack) and runs the block once per group, so a matmul is one torch.bmm (baddbmm) for
all of them rather than one small matmul per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.printing.precedence import PRECEDENCE

from ...expr import ReduceSum
from ...limits import MAX_REPEAT
from ...matrix import COLS, ROWS, BFloat16, MatrixProduct, Transposed
from .prepare import plural
from .printer import TensorPrinter
from .statements import Block, Line

_DIMS = "dim=(-2, -1), keepdim=True"


@dataclass
class MatrixOp:
    """`target` = a matrix block run on its operands.

    tensors  operand IR name -> the Python name holding it (a tensor, or a list in foreach)
    views    operands shaped like the parameter: read through their matrix view
    locals   block-local name -> Python name (the result's is `target` in the for-loop path)
    stacked  operand IR name -> the name of its stack (foreach)
    """

    target: str
    block: object
    tensors: dict
    views: set
    locals: dict
    stacked: dict
    scalars: set
    result_param_shaped: bool
    ir: str = ""  # the IR value it computes


class MatrixPrinter(TensorPrinter):
    """Tensor arithmetic over matrices (or stacks of them: the same text runs on both)."""

    def __init__(self, text, is_scalar, host_text, batched: bool):
        super().__init__(text, is_scalar, host_text)
        self.batched = batched

    def top(self, expr) -> str:
        text = self.doprint(expr)
        if isinstance(expr, MatrixProduct) and text.startswith("("):
            return text[1:-1]
        return text

    def _print_MatrixProduct(self, expr):
        left, right = expr.args
        a = self.parenthesize(left, PRECEDENCE["Mul"])
        b = (
            self._print(right)
            if right.is_Symbol or isinstance(right, (MatrixProduct, Transposed))
            else f"({self._print(right)})"
        )
        return f"({a} @ {b})"

    def _print_Transposed(self, expr):
        arg = expr.args[0]
        inner = self._print(arg) if arg.is_Symbol or isinstance(arg, MatrixProduct) else f"({self._print(arg)})"
        return f"{inner}.mT"

    def _print_BFloat16(self, expr):
        return f"{self._operand(expr.args[0])}.bfloat16()"

    def _print_ReduceSum(self, expr):
        return f"{self._operand(expr.args[0])}.sum({_DIMS})"

    def _print_ReduceMin(self, expr):
        return f"{self._operand(expr.args[0])}.amin({_DIMS})"

    def _print_ReduceMax(self, expr):
        return f"{self._operand(expr.args[0])}.amax({_DIMS})"

    def _operand(self, expr) -> str:
        return self._print(expr) if expr.is_Symbol else f"({self._print(expr)})"

    def _print_Pow(self, expr, rational=False):
        base = expr.base
        if (
            expr.exp == sympy.Rational(1, 2)
            and isinstance(base, ReduceSum)
            and isinstance(base.args[0], sympy.Pow)
            and base.args[0].exp == 2
        ):
            return f"torch.linalg.vector_norm({self._print(base.args[0].base)}, {_DIMS})"
        return super()._print_Pow(expr, rational)

    def _print_Add(self, expr, order=None):
        fused = self._addmm(expr)
        return fused if fused is not None else super()._print_Add(expr, order)

    def _addmm(self, expr) -> str | None:
        """beta * M + alpha * P @ Q as torch.addmm(M, P, Q, beta=beta, alpha=alpha)
        (torch.baddbmm on stacks)."""
        if len(expr.args) != 2:
            return None
        products = [t for t in expr.args if isinstance(self._split(t)[1], MatrixProduct)]
        if len(products) != 1:
            return None
        (product,) = products
        (other,) = [t for t in expr.args if t is not product]
        alpha, prod = self._split(product)
        beta, m = self._split(other)
        left_scale, left = self._split(prod.args[0])
        right_scale, right = self._split(prod.args[1])
        alpha = alpha * left_scale * right_scale
        if self.is_scalar(m) or isinstance(m, sympy.Number):
            return None
        fn = "torch.baddbmm" if self.batched else "torch.addmm"
        kw = "" if beta == 1 else f", beta={self.host(beta)}"
        kw += "" if alpha == 1 else f", alpha={self.host(alpha)}"
        return f"{fn}({self._print(m)}, {self._print(left)}, {self._print(right)}{kw})"

    def _split(self, term):
        """(scalar factor, tensor factor) of a product term."""
        if isinstance(term, sympy.Mul):
            scalars = [f for f in term.args if self.is_scalar(f)]
            tensors = [f for f in term.args if not self.is_scalar(f)]
            return sympy.Mul(*scalars), sympy.Mul(*tensors)
        return sympy.S.One, term


def count_check(count, host) -> list:
    """A loop count read from the param group is checked each step, before any update: a
    loop is bounded."""
    if count.is_Integer:
        return []
    text = host(count)
    return [
        Block(
            f"if not (0 <= {text} <= {MAX_REPEAT} and {text} == int({text})):",
            [Line(f'raise ValueError(f"the loop count must be an integer in [0, {MAX_REPEAT}]; got {{{text}}}")')],
        )
    ]


MATRIX_RANKS = frozenset({2})  # what a matrix block's parameter must be


def ndim_check(param: str) -> Block:
    """A parameter that is not 2-D is a ValueError, as in torch.optim.Muon."""
    message = f'f"a matrix operation needs a 2-D parameter; got shape {{tuple({param}.shape)}}"'
    return Block(f"if {param}.ndim != 2:", [Line(f"raise ValueError({message})")])


def single_lines(op: MatrixOp, printer: MatrixPrinter, host, checked: bool = False) -> list:
    """The block for one parameter tensor (the for-loop path); `checked`: the parameter is
    known to be 2-D here."""
    block = op.block
    lines: list = []
    if op.views and block.has_matmul and not checked:
        lines.append(ndim_check("param"))
    body = [(op.locals[n], e) for n, e in block.body]
    for local, source in block.init.items():
        start = printer.doprint(source)
        if start != op.locals[local]:  # a loop may carry the name it starts from
            lines.append(Line(f"{op.locals[local]} = {start}"))
    loop = [Line(f"{name} = {printer.top(expr)}") for name, expr in body]
    if block.count is None:
        lines += loop
    else:  # the count was checked up front (count_check)
        lines.append(Block(f"for _ in range({_count_text(block.count, host)}):", loop))
    result = op.locals[block.result]
    # the matrix view back to the parameter's shape (nothing to do on a parameter known 2-D)
    end = f"{result}.reshape_as(param)" if op.result_param_shaped and block.has_matmul and not checked else result
    if block.promote:  # read outside the blocks: back to the parameter's dtype
        end += ".to(param.dtype)"
    if end != op.target:
        lines.append(Line(f"{op.target} = {end}"))
    return lines


def _count_text(count, host) -> str:
    return str(int(count)) if count.is_Integer else f"int({host(count)})"


def batched_lines(
    ops: list[MatrixOp], printers: list[MatrixPrinter], host, keys: list[str], kept: set, checked: bool = False
) -> list:
    """Consecutive blocks once per group of same-shaped tensors, on stacks (the foreach
    path): a block reads what an earlier one made from its stack, not restacked. `keys`:
    per-tensor host operands (texts of lists), which the groups also split on; `kept`: the
    blocks whose results are read after the run (unstacked into lists); `checked`: every
    parameter is known to be 2-D here."""
    key = ", ".join(["params[i].shape"] + [f"{k}[i]" for k in keys])
    lines: list = [Line("# tensors of one shape are stacked: each matmul is one batched matmul for all of them")]
    if any(op.views and op.block.has_matmul for op in ops) and not checked:
        lines.append(Block("for param in params:", [ndim_check("param")]))
    lines += [Line(f"{op.stacked['__out__']} = [None] * len(params)") for op in ops if op.ir in kept]
    lines += [
        Line("groups = {}"),
        Block(
            "for i in range(len(params)):", [Line(f"groups.setdefault(({key}{',' if not keys else ''}), []).append(i)")]
        ),
    ]
    inner: list = []
    made: set[str] = set()
    stacked: set[str] = set()  # operands stacked once for the whole run
    rounded = _read_only_rounded(ops)
    unstack: list = []
    for op, printer in zip(ops, printers):
        block = op.block
        starts = _stacked_starts(op, ops, rounded, made | stacked)
        for ir, name in op.tensors.items():
            if ir in made or ir in stacked:
                continue
            stacked.add(ir)
            view = ".bfloat16()" if ir in rounded else ""
            shape = ".view(-1, 1, 1)" if ir in op.scalars else ""
            target = op.locals[starts[ir]] if ir in starts else op.stacked[ir]
            inner.append(Line(f"{target} = torch.stack([{plural(name)}[i]{view} for i in idx]){shape}"))
        for local, source in block.init.items():
            if local in starts.values():
                continue
            start = printer.doprint(source)
            if start != op.locals[local]:  # a loop may carry the stack it starts from
                inner.append(Line(f"{op.locals[local]} = {start}"))
        unround = {BFloat16(s): s for s in block.operands if s.name in rounded}
        body = block.body[1:] if _leading(block) and block.body[0][0] in starts.values() else block.body
        loop = [Line(f"{op.locals[n]} = {printer.top(e.xreplace(unround))}") for n, e in body]
        if block.count is None:
            inner += loop
        else:  # the count was checked up front (count_check)
            inner.append(Block(f"for _ in range({_count_text(block.count, host)}):", loop))
        made.add(op.ir)
        if op.ir not in kept:
            continue
        shaped = ".reshape_as(params[i])" if op.result_param_shaped and block.has_matmul and not checked else ""
        shaped += ".to(params[i].dtype)" if block.promote else ""
        unstack.append(Line(f"{op.stacked['__out__']}[i] = {op.locals[block.result]}[j]{shaped}"))
    inner.append(Block("for j, i in enumerate(idx):", unstack))
    lines.append(Block("for idx in groups.values():", inner))
    return lines


def _stacked_starts(op: MatrixOp, ops: list[MatrixOp], rounded: set[str], done: set[str]) -> dict[str, str]:
    """The operands (IR name -> local) whose stack only starts a local of `op` (`X = G`, or
    `X = bfloat16(G)` with G stacked in bfloat16: a loop's start, or the first statement of a
    block without a loop) and that nothing else in the run reads: the stack is made under the
    local's name, with no copy line."""
    exprs = [e for o in ops for _, e in o.block.body] + [v for o in ops for v in o.block.init.values()]
    starts = list(op.block.init.items()) + _leading(op.block)
    out: dict[str, str] = {}
    for local, source in starts:
        if isinstance(source, BFloat16) and source.args[0].is_Symbol and source.args[0].name in rounded:
            source = source.args[0]
        ir = source.name if source.is_Symbol else None
        if ir not in op.tensors or ir in done or ir in op.scalars or ir in out:
            continue
        if sum(1 for e in exprs if e.has(source)) == 1:
            out[ir] = local
    return out


def _leading(block) -> list:
    """The first statement of a block without a loop (nor a loop's start), as a list."""
    return block.body[:1] if block.count is None and not block.init else []


def _read_only_rounded(ops: list[MatrixOp]) -> set[str]:
    """Operands that the run's blocks read only as bfloat16(x): stacked in bfloat16 at once
    (converting each tensor, then stacking half the bytes, rather than a float32 stack)."""
    out: set[str] = set()
    for ir in {ir for op in ops for ir in op.tensors}:
        symbols = [s for op in ops for s in op.block.operands if s.name == ir]
        exprs = [e for op in ops for _, e in op.block.body] + [v for op in ops for v in op.block.init.values()]
        hidden = sympy.Dummy()
        if all(not e.xreplace({BFloat16(s): hidden for s in symbols}).has(*symbols) for e in exprs):
            out.add(ir)
    return out


def matrix_runs(ops: list) -> list:
    """Consecutive matrix blocks as one list (the foreach path runs them in one pass over
    the shape groups)."""
    out: list = []
    for op in ops:
        if isinstance(op, MatrixOp) and out and isinstance(out[-1], list):
            out[-1].append(op)
        elif isinstance(op, MatrixOp):
            out.append([op])
        else:
            out.append(op)
    return [MatrixRun(op) if isinstance(op, list) else op for op in out]


@dataclass
class MatrixRun:
    ops: list

    @property
    def target(self) -> str:
        return self.ops[-1].target


def shape_text(name: str, batched: bool) -> str | None:
    """rows(param) and cols(param) of a (2-D) parameter."""
    param = "params[idx[0]]" if batched else "param"
    return {ROWS: f"{param}.size(-2)", COLS: f"{param}.size(-1)"}.get(name)
