"""Cross-parameter values and `scope: group` states.

A `scope: group` state is one number per param group. It lives in the param group dict
under its key (as pytorch_optimizer.Prodigy keeps `d` and `d_max` there), so
`state_dict()["param_groups"]` carries it and a checkpoint moves to and from the reference.
Its init reads constants and hyperparameters only; its new value reads host values
(hyperparameters, `step`, other group states) and cross-parameter reductions, never a
per-tensor or per-element value. Every tensor of the group reads the value the state had
before the step, unless the update reads it after assigning it.

A cross-parameter reduction (`global_sum(x)`, `global_norm(x)`) sums over every parameter
with a gradient in every param group (pytorch_optimizer.Prodigy accumulates d_numerator
and d_denom over all groups; torch's clip_grad_norm_ does the same). It runs as its own
pass over all tensors, from the param and states as they are before the step, before any
tensor is updated. Its argument may read param, grad, the step inputs, element states,
group states, hyperparameters and `step`; not a per-tensor reduction or another
cross-parameter value (that would need a second pass over all tensors first).
"""

from __future__ import annotations

from .errors import CompileError, SpecError
from .ir import SCOPE_RANK, Program, Value
from .spec import StateDecl


def split_group_states(states: list[StateDecl]) -> tuple[list[StateDecl], list[StateDecl]]:
    """(the group states, the per-tensor states), each in declaration order."""
    return [s for s in states if s.scope == "group"], [s for s in states if s.scope != "group"]


def check_group_states(
    group_states: list[StateDecl],
    by_name: dict[str, Value],
    outputs: dict[str, str],
    scopes: dict[str, str],
    step_count: str = "per_tensor",
) -> None:
    from .lower import _scope

    for s in group_states:
        if _scope(s.init, scopes) != "host" or "step" in {x.name for x in s.init.free_symbols}:
            raise SpecError(
                s.loc, f"state `{s.name}` is per param group (scope: group): its init may read only hyperparameters"
            )
        value = by_name.get(outputs[s.name])
        if value is not None and step_count == "per_tensor" and _reads_step(value, by_name):
            raise SpecError(
                value.loc,
                f"state `{s.name}` is per param group (scope: group), but its new value reads `step`, which "
                "counts per tensor here: declare `step: per_group`, or read step inside the global_sum",
            )
        if value is not None and SCOPE_RANK[value.scope] > SCOPE_RANK["global"]:
            raise SpecError(
                value.loc,
                f"state `{s.name}` is per param group (scope: group), but is assigned a per-{value.scope} value "
                "(reduce it over all parameters with global_sum or global_norm)",
            )


def _reads_step(value: Value, by_name: dict[str, Value]) -> bool:
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v.name in seen:
            continue
        seen.add(v.name)
        for x in v.expr.free_symbols:
            if x.name == "step":
                return True
            if x.name in by_name and not by_name[x.name].is_reduction:
                stack.append(by_name[x.name])
    return False


def check_global_reduction(program: Program, red: Value) -> None:
    """What a cross-parameter reduction's argument may read (see the module docstring)."""
    by_name = program.by_name
    stack, seen = [red.expr.name], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        v = by_name.get(name)
        if v is None:
            if program.input_scopes.get(name) == "tensor":
                raise CompileError(
                    red.loc,
                    f"a cross-parameter reduction may not read the per-tensor value `{name}`: it runs over "
                    "all tensors before any per-tensor work",
                )
            continue
        if v.matrix is not None:  # the sums run before any block (every path), on what the step reads
            raise CompileError(
                red.loc,
                f"a cross-parameter reduction may not read a matrix operation's result (`{name}`): it runs "
                "over all tensors before any per-tensor work",
            )
        if v.is_reduction:
            what = "per-tensor reduction" if v.over == "tensor" else "cross-parameter reduction"
            raise CompileError(
                red.loc,
                f"a cross-parameter reduction may not read a {what} (`{name}`): it runs as one pass over "
                "all tensors before any other reduction",
            )
        stack.extend(s.name for s in v.expr.free_symbols)
