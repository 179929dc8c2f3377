"""The reduce-only passes of the for-loop path under sharding (FSDP2).

The for-loop updates one tensor at a time, so a per-tensor reduction of a local shard would
need a collective of its own, tensor by tensor. Instead, under sharding, a first loop over the
tensors computes every phase-0 per-tensor reduction's local partial, out of place from the
unchanged param and states (what the fused kernels' first pass does, ir.py), one
`_all_reduce_partials` combines them for the whole param group, and the update loop reads
the combined values. A later phase's loop does the same, reading the earlier phases'
combined values (no catalog spec has more than one phase). Unsharded, the update loop
reduces as it goes: one pass over memory, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ops import If, Reduce
from .prepare import Prepared, _absorb, _last_uses, plural
from .schedule import Schedule, Scheduler

_GROUP_KINDS = ("uniform", "device_uniform")  # computed once per group, before both loops


@dataclass
class _ReadOnly(Prepared):
    """The program of the reduce-only pass: nothing is updated in place (no chains), so
    each new version of param or a state is a temporary and memory stays unchanged."""

    @property
    def chains(self) -> list[str]:
        return []


@dataclass
class ReducePass:
    prepared: Prepared  # the reduce-only loop's program
    schedule: Schedule  # and its body
    lists: dict[str, str]  # a reduction's name in the update loop -> its list
    kinds: dict[str, str]  # list -> the reduction (norm, sum, min, max)
    reads: dict[str, str]  # an earlier phase's reduction the loop reads -> its list
    made: set[str]  # the names the reduce-only loop's temporaries took


def reduce_passes(p: Prepared, main: Schedule, taken: set[str]) -> list[ReducePass]:
    """One reduce-only pass per phase of per-tensor reductions of `p` (whose update loop is
    `main`), each reading the combined results of the earlier ones; they stop at a phase
    with a reduction under a per-tensor branch (its list would not line up with the
    tensors): that phase and later ones are combined tensor by tensor."""
    if any(v.matrix is not None for v in p.values):
        return []  # a matrix block needs whole tensors: sharded parameters are refused
    reductions = [v for v in p.values if v.is_reduction and v.over == "tensor"]
    lists = {v.name: plural(main.display[v.name]) for v in reductions}
    group = [v.name for v in p.values if p.kinds[v.name] in _GROUP_KINDS]
    taken = taken | set(lists.values()) | {main.display[n] for n in group + list(lists)}
    passes: list[ReducePass] = []
    for phase in range(max((v.phase for v in reductions), default=-1) + 1):
        targets = [v.name for v in reductions if v.phase == phase]
        done = [v.name for v in reductions if v.phase < phase]
        one = _reduce_pass(p, main, targets, group + done, lists, taken)
        if one is None:
            break
        passes.append(one)
    return passes


def _reduce_pass(p, main, targets, given, lists, taken) -> ReducePass | None:
    if _under_per_tensor_branch(main.work, {main.display[t] for t in targets}):
        return None
    need = _closure(p, targets)
    values = [v for v in p.values if v.name in need and v.name not in given]
    # a new version of a scalar state is a Python float here, not the state read with .item()
    inputs = {name: var for name, var in p.var_of.items() if name == var}
    pre = _ReadOnly(p.program, values, p.kinds, p.scalar_states, p.globals, {}, var_of=inputs)
    pre.absorbed = _absorb(pre)
    pre.last_use = _last_uses(pre)
    scheduler = Scheduler(pre, False, taken)
    for name in given:  # group values and earlier reductions: the update loop's names
        scheduler.names.st.display[name] = main.display[name]
    schedule = scheduler.run()
    if _under_per_tensor_branch(schedule.work, {schedule.display[t] for t in targets}):
        return None
    kinds = {lists[t]: next(r.fn for r in _reduces(main.work) if r.target == main.display[t]) for t in targets}
    # the reduce-only loop appends each result to the list the update loop reads
    _rename_reduces(schedule.work, {schedule.display[t]: lists[t] for t in targets})
    reads = {main.display[n]: lists[n] for n in given if n in lists and n in need}
    batched = {main.display[t]: lists[t] for t in targets}
    return ReducePass(pre, schedule, batched, kinds, reads, scheduler.taken - taken)


def _closure(p: Prepared, targets: list[str]) -> set[str]:
    """The values computing `targets` needs, host values with all their dependencies (the
    reduce-only loop computes its own), stopping at reductions that are not targets."""
    by_name = {v.name: v for v in p.values}
    need: set[str] = set()
    stack = list(targets)
    while stack:
        name = stack.pop()
        if name in need or name not in by_name:
            continue
        need.add(name)
        v = by_name[name]
        if v.is_reduction and name not in targets:
            continue
        stack.extend(s.name for s in v.expr.free_symbols)
    return need


def _reduces(ops: list):
    for op in ops:
        if isinstance(op, If):
            yield from _reduces(op.body)
            yield from _reduces(op.orelse)
        elif isinstance(op, Reduce):
            yield op


def _under_per_tensor_branch(ops: list, targets: set[str], under: bool = False) -> bool:
    for op in ops:
        if isinstance(op, If):
            inner = under or op.per_tensor
            if _under_per_tensor_branch(op.body, targets, inner) or _under_per_tensor_branch(op.orelse, targets, inner):
                return True
        elif isinstance(op, Reduce) and op.target in targets and under:
            return True
    return False


def _rename_reduces(ops: list, names: dict[str, str]) -> None:
    for op in _reduces(ops):
        if op.target in names:
            op.target = names[op.target]
