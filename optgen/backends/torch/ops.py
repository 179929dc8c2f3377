"""The schedule: torch primitives over named buffers, the same for the for-loop and the
foreach path (each prints them its own way: `exp_avg.lerp_(grad, w)` or
`torch._foreach_lerp_(exp_avgs, grads, w)`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy


@dataclass(frozen=True)
class T:
    """A tensor operand: a buffer by its (singular) name. `per_tensor` is False for a 0-d
    tensor shared by the whole group (a cross-parameter reduction)."""

    name: str
    per_tensor: bool = True


@dataclass(frozen=True)
class S:
    """A scalar operand: an expression over host values (IR names), a Python float."""

    expr: sympy.Expr


Arg = T | S


@dataclass
class HostAssign:
    name: str
    expr: sympy.Expr
    per_tensor: bool


@dataclass
class New:
    """`target = fn(args)`: a new tensor."""

    target: str
    fn: str
    args: tuple
    kw: dict = field(default_factory=dict)


@dataclass
class InPlace:
    """`target.fn_(args)`."""

    target: str
    fn: str
    args: tuple
    kw: dict = field(default_factory=dict)


@dataclass
class Alias:
    target: str
    source: str


@dataclass
class Eval:
    """`target = <expression>`, printed by the tensor printer (per tensor in foreach)."""

    target: str
    expr: sympy.Expr


@dataclass
class Reduce:
    target: str
    fn: str  # sum | norm | min | max
    source: T


@dataclass
class Fill:
    """A scalar state (a 0-d CPU tensor) set from a host expression."""

    target: str
    expr: sympy.Expr


@dataclass
class If:
    cond: sympy.Basic
    body: list
    orelse: list
    per_tensor: bool  # depends on step/numel/ndim: the foreach path splits its batches on it


Op = HostAssign | New | InPlace | Alias | Eval | Reduce | Fill | If


def tensor_op_count(ops: list) -> int:
    """Passes over memory (roughly): every primitive on a tensor counts one."""
    n = 0
    for op in ops:
        if isinstance(op, If):
            n += max(tensor_op_count(op.body), tensor_op_count(op.orelse))
        elif isinstance(op, (New, InPlace, Eval, Reduce)) or hasattr(op, "block"):
            n += 1  # `block`: a matrix block (matrix_ops.MatrixOp)
    return n
