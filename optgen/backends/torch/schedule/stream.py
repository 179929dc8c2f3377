"""The ops scheduled so far, in order.

Appending an op tidies as a person would: an op that a zero hyperparameter makes a no-op
goes under `if weight_decay != 0:`, two `if`s on one host condition in a row become one,
and clamp_(min=a) then clamp_(max=b) become clamp_(a, b).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import sympy

from ....shapes import ALL_RANKS, guard_of
from ..ops import If, InPlace
from .zero_defaults import switched_off_by


class OpStream:
    def __init__(self, zero_tables: dict[str, dict]):
        self.ops: list = []
        self.conditions: list = []  # per-tensor host conditions (foreach batches are split on them)
        self.zero_tables = zero_tables

    def emit(self, op) -> None:
        off = switched_off_by(op, self.zero_tables)
        last = self.ops[-1] if self.ops else None
        if off is not None:
            cond = sympy.Ne(sympy.Symbol(off, real=True), 0)
            if isinstance(last, If) and last.cond == cond and not last.orelse:
                last.body.append(op)
            else:
                self.ops.append(If(cond, [op], [], False))
        elif _merge_branches(last, op):  # two `if momentum > 0:` in a row: one
            pass
        elif _clamps_on_one_side_each(last, op):  # clamp_(min=a) then clamp_(max=b): clamp_(a, b)
            last.kw = {"min": (last.kw | op.kw)["min"], "max": (last.kw | op.kw)["max"]}
        else:
            self.ops.append(op)

    def capture(self, build: Callable[[], object]) -> tuple[object, list]:
        """Run `build` on an empty list of ops (its first op merges with nothing before it);
        what it returned and the ops it emitted, which the caller keeps or drops."""
        outer, self.ops = self.ops, []
        try:
            result = build()
            return result, self.ops
        finally:
            self.ops = outer

    def mark(self) -> tuple[int, list]:
        """A point to rewind to (with a copy of the last op: a later emit may merge into it)."""
        return len(self.ops), copy.deepcopy(self.ops[-1:])

    def rewind(self, mark: tuple[int, list]) -> None:
        at, last = mark
        self.ops = self.ops[: at - len(last)] + last

    def added_since(self, mark: tuple[int, list]) -> list:
        return self.ops[mark[0] :]


def _clamps_on_one_side_each(last, op) -> bool:
    return (
        isinstance(op, InPlace)
        and isinstance(last, InPlace)
        and op.fn == last.fn == "clamp"
        and last.target == op.target
        and not set(last.kw) & set(op.kw)
    )


def _merge_branches(last, op) -> bool:
    """Append `op`, an If on the same host condition as `last` (or its negation), to `last`'s
    branches. Host conditions are fixed for the whole step, so the merge keeps the order of
    every op on each side."""
    if not (isinstance(last, If) and isinstance(op, If) and last.per_tensor == op.per_tensor):
        return False
    if op.cond == last.cond:
        last.body.extend(op.body)
        last.orelse.extend(op.orelse)
    elif op.cond == sympy.Not(last.cond) or last.cond == sympy.Not(op.cond) or _other_ranks(last.cond, op.cond):
        last.body.extend(op.orelse)
        last.orelse.extend(op.body)
    else:
        return False
    return True


def _other_ranks(a, b) -> bool:
    """`ndim(param) >= 2` and `ndim(param) <= 1`: conditions on the rank that split the
    tensors between them (an `if` and its `else`)."""
    try:
        return guard_of(a) == ALL_RANKS - guard_of(b)
    except ValueError:  # not conditions on ndim(param) alone
        return False
