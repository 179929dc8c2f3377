"""Hyperparameters that default to 0 (weight_decay, momentum): work they switch off.

torch.optim skips a pass when such a hyperparameter is 0 (`if weight_decay != 0:`), and
so does the generated code: a table per hyperparameter gives the group values that become
constants at 0, and an op that those constants make a no-op runs under an `if`.
"""

from __future__ import annotations

import sympy

from ..ops import InPlace, S
from ..prepare import Prepared


def zero_tables(p: Prepared) -> dict[str, dict]:
    """For each hyperparameter defaulting to 0: the group values that become constants."""
    tables = {}
    for name, (h, i) in p.program.spec.scalar_hypers.items():
        if h.captured is not None or h.default[i] != 0 or not h.range.contains(0.0) or name not in p.kinds:
            continue
        table = {name: sympy.Integer(0)}
        for v in p.values:
            if p.kinds[v.name] in ("uniform", "device_uniform"):
                e = at_zero(v.expr, table)
                if e.is_number or e in (sympy.true, sympy.false):
                    table[v.name] = e
        tables[name] = table
    return tables


def at_zero(expr, table: dict):
    """expr with the table's values put in."""
    return expr.xreplace({s: table[s.name] for s in expr.free_symbols if s.name in table})


def switched_off_by(op, tables: dict[str, dict]) -> str | None:
    """The zero-default hyperparameter (weight_decay) that makes an in-place op a no-op:
    `param.mul_(1 - lr * weight_decay)` runs only when weight_decay != 0."""
    found = _scalar_and_identity(op)
    if found is None:
        return None
    scalar, identity = found
    for h, table in tables.items():
        zero = at_zero(scalar, table)
        if zero != scalar and zero == identity:
            return h
    return None


def _scalar_and_identity(op):
    """The host scalar an in-place op applies, and the value of it that changes nothing."""
    if not isinstance(op, InPlace):
        return None
    if op.fn in ("mul", "div") and isinstance(op.args[0], S):
        return op.args[0].expr, 1
    if op.fn in ("add", "addcmul", "addcdiv") and set(op.kw) & {"alpha", "value"}:
        return (op.kw.get("alpha") or op.kw.get("value")).expr, 0
    if op.fn == "add" and isinstance(op.args[0], S):
        return op.args[0].expr, 0
    return None
