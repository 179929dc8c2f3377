"""`optgen show`: the lowered program as a person reads it."""

from __future__ import annotations

from .ir import Program, Value
from .matrix import describe_block
from .shapes import format_axes, guard_text


def _line(v: Value) -> str:
    if v.is_reduction:
        where = "all parameters" if v.over == "global" else "the tensor"
        return f"{v.name} = {v.reduce}({v.expr}) over {where}"
    origin = f"    # {v.var}" if v.var and v.var != v.name else ""
    if v.matrix is not None:
        return f"{v.name} = {describe_block(v.matrix)}{origin}"
    notes = ([v.shape.describe()] if v.shape.is_reduced else []) + ([guard_text(v.guard)] if v.guard else [])
    return f"{v.name} = {v.expr}{origin}" + (f"    [{'; '.join(notes)}]" if notes else "")


def _state(s) -> str:
    shape = [f"reduced over axis {format_axes(s.axes)}"] if s.axes else []
    shape += [f"for {guard_text(s.ranks)}"] if s.ranks is not None else []
    return f"{s.name} [{', '.join([s.scope, *shape, f'init {s.init}'])}]"


def show(program: Program) -> str:
    spec = program.spec
    opts = ", ".join(f"{k}={v}" for k, v in program.options.items()) or "none"
    out = [f"{spec.name}  (options: {opts})", ""]
    hypers = ", ".join(program.hyper_names)
    given = "".join(f", {name}" for name in program.input_names)  # the spec's step() inputs
    out.append(f"inputs: param, grad{given}, step; hyperparameters: {hypers}")
    states = ", ".join(_state(s) for s in program.states) or "none"
    out.append(f"state: {states}")
    if program.group_states:  # one number per param group, in the group dict
        groups = ", ".join(
            f"{s.name} [init {s.init}, new {program.group_outputs[s.name]}]" for s in program.group_states
        )
        out.append(f"group states: {groups}")
    host = program.values_of_scope("host")
    if host:
        out.append("")
        out.append("host scalars (once per tensor per step, on the host):")
        out += [f"  {_line(v)}" for v in host]
    glob = program.values_of_scope("global")
    if glob:
        out.append("")
        out.append("before the update, across all parameters:")
        out += [f"  {_line(v)}" for v in glob]
    for phase in range(program.num_phases):
        work = [v for v in program.values if v.scope in ("tensor", "element") and v.phase == phase]
        last = phase == program.num_phases - 1
        out.append("")
        kind = "update pass" if last else "reduction pass"
        out.append(f"pass {phase + 1} of {program.num_phases} ({kind}):")
        for v in work:
            out.append(f"  [{v.scope:7}] {_line(v)}")
    out.append("")
    writes = ", ".join(f"{k} <- {v}" for k, v in program.writes.items())
    out.append(f"writes: {writes}")
    if spec.modes is not None:  # optgen/modes.py: not part of the step
        out.append("")
        out.append(f"modes (start: {spec.modes.start}; eval() and train() switch the parameters):")
        out += [f"  {mode}(): param <- {m.expr}" for mode, m in spec.modes.maps.items()]
    if program.notes:
        out.append("")
        out += [f"note: {n}" for n in program.notes]
    return "\n".join(out)
