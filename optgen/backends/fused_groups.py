"""`scope: group` states and staged cross-parameter sums on the fused path (C++, Triton).

A group state is one number per param group (optgen/group_state.py). The kernels take it
as they take a hyperparameter: a host scalar of the group, by its spec name in `hyper`, so
every value computed from it (Prodigy's d_lr, schedule-free's ckp1) is a host scalar or,
when it also reads a sum over all parameters, a per-tensor scalar of the kernel's prologue.

A sum over all parameters that reads states, `step` or the step inputs (Prodigy's
d_numerator and d_denom) is staged as on the foreach path: the optimizer sums it over
every group, from the param and states as they are before the step, before any group is
updated (the torch module's `_partial_global_sum_*` helpers, as it sums Adan's gradient
norm for the fused path too), and the fused kernels read it from `global_values` like any
global reduction. A staged argument may read a state's new value (Prodigy's abs(s) after
s's update): the IR has inlined it into the argument, which reads the old state. The
kernels' own global pass computes the same sums (`fused_global` of either runtime, given
the states and steps: the kernel harness of tests/test_triton_harness.py runs it).

The group's new values are computed on the host by the generated `_fused_<name>` function
from the same host values and sums the kernels read, printed as the foreach path prints
them (`group_value_lines`), and returned to the optimizer, which writes them to the group
dict.
"""

from __future__ import annotations

from ..expr import STEP


def host_inputs(spec) -> list[str]:
    """The host scalars a fused kernel takes by name: the scalar hyperparameters, then the
    group states."""
    return list(spec.scalar_hypers) + [s.name for s in spec.state.values() if s.scope == "group"]


def group_value_lines(variants, options: list[str]) -> str:
    """The statements of `_fused_<name>` that compute the group's new group-state values and
    return them (after the kernels ran; what they read is unchanged): per option setting
    (`variants`, the torch backend's), the host values (Python floats) and the values of
    the sums over all parameters (0-d tensors) they read, merged over the settings as the
    foreach body is (`options`: the spec's option names)."""
    from .torch.statements import Line, merge_variants, render

    settings = [(v.options, [Line(text) for text in _variant_lines(v.prepared)]) for v in variants]
    return render(merge_variants(settings, options), 1)


def _variant_lines(prepared) -> list[str]:
    """One option setting's statements: each value the new group states read, in program
    order (the sums over all parameters are the function's arguments), then the return."""
    from .torch.printer import TensorPrinter, host_printer

    program = prepared.program
    by_name = {v.name: v for v in prepared.values}
    need, stack = set(), list(program.group_outputs.values())
    while stack:
        name = stack.pop()
        if name in need or name not in by_name:
            continue
        need.add(name)
        stack.extend(s.name for s in by_name[name].expr.free_symbols)
    # as the foreach path prints them: a value that reads a sum is a 0-d tensor (torch.where,
    # torch.clamp), the others Python floats
    host = host_printer(lambda name: name)
    tensor = TensorPrinter(lambda name: name, prepared.is_scalar)
    lines = []
    reads = {s.name for name in need for s in by_name[name].expr.free_symbols}
    if STEP in reads:  # a group state reads the step only where it counts per group
        lines.append("step = state_steps[0].item()  # the group's count, after the increment")
    for v in prepared.values:
        if v.name in need:
            printer = host if prepared.is_scalar(v.expr) else tensor
            lines.append(f"{v.name} = {printer.doprint(v.expr)}")
    items = [f'"{s.key}": float({program.group_outputs[s.name]})' for s in program.group_states]
    lines.append("return {" + ", ".join(items) + "}")
    return lines
