"""Cross-parameter sums that read states, and `scope: group` states, in the torch module.

A sum over all parameters whose argument reads a state, a group state or `step` is
*staged*: the optimizer first makes every group's states (and counts its step), then sums
over every group from the param and states as they are before the step, then updates each
group. Its helper takes the group's state lists beside params and grads. A group state is
a float in the param group dict: the functional takes it as a keyword and returns the
group's new values, which the optimizer writes back (see group_state.py)."""

from __future__ import annotations

import sympy
from sympy.logic.boolalg import simplify_logic

from ...expr import GRAD, PARAM, STEP
from ...spec import Spec
from .prepare import plural
from .printer import TensorPrinter, host_printer


def group_states(spec: Spec) -> list:
    return [s for s in spec.state.values() if s.scope == "group"]


def per_tensor_states(spec: Spec) -> list:
    return [s for s in spec.state.values() if s.scope != "group"]


def is_staged(spec: Spec, arg: sympy.Expr) -> bool:
    """Whether a cross-parameter sum of `arg` (over inputs only) reads more than param,
    grad and hyperparameters."""
    names = {s.name for s in arg.free_symbols}
    return bool(names & ({s.name for s in spec.state.values()} | {STEP} | set(spec.inputs)))


def staged_lists(spec: Spec, args: list[sympy.Expr]) -> list[str]:
    """The lists a staged helper takes: params, grads, then the inputs and states it reads."""
    names = set().union(*({s.name for s in a.free_symbols} for a in args))
    arrays = [i for i in spec.inputs if i in names] + [s.name for s in per_tensor_states(spec) if s.name in names]
    return ["params", "grads"] + [plural(n) for n in arrays] + (["state_steps"] if STEP in names else [])


def staged_scalars(spec: Spec, args: list[sympy.Expr]) -> list[str]:
    """The floats a staged helper takes: hyperparameters and group states, spec order."""
    names = set().union(*({s.name for s in a.free_symbols} for a in args))
    return [h for h in spec.scalar_hypers if h in names] + [s.name for s in group_states(spec) if s.name in names]


def staged_body(spec: Spec, arms: list[tuple[sympy.Expr, sympy.Expr]], even: bool) -> str:
    """The helper's body: `arms` (condition over options, argument) in order, the last one
    taken whatever the options."""
    args = [a for _, a in arms]
    lists = staged_lists(spec, args)
    elements = {PARAM, GRAD, *spec.inputs, *(s.name for s in per_tensor_states(spec))}
    printer = TensorPrinter(lambda n: n, lambda e: not ({x.name for x in e.free_symbols} & elements))
    loop_names = (
        ["param", "grad"] + [n for n in _array_names(spec, args)] + (["step"] if "state_steps" in lists else [])
    )
    sources = ["params", "grads"] + lists[2:]
    lines = [] if even else ["    if maximize:", "        grads = torch._foreach_neg(grads)"]
    if "state_steps" in lists:
        lines.append("    steps = [step_t.item() + 1 for step_t in state_steps]  # the step being taken")
        sources[-1] = "steps"
    zipped = f"zip({', '.join(sources)})"
    for i, (cond, arg) in enumerate(arms):
        total = f"torch.stack([({printer.doprint(arg)}).sum() for {', '.join(loop_names)} in {zipped}]).sum()"
        if i < len(arms) - 1:
            lines += [f"    if {cond}:", f"        return {total}"]
        else:
            lines.append(f"    return {total}")
    return "\n".join(lines)


def _array_names(spec: Spec, args) -> list[str]:
    names = set().union(*({s.name for s in a.free_symbols} for a in args))
    return [i for i in spec.inputs if i in names] + [s.name for s in per_tensor_states(spec) if s.name in names]


def arms(found: list[tuple[sympy.Expr, list[dict[str, bool]]]], spell) -> list[tuple[str, sympy.Expr]]:
    """One (condition, argument) per distinct argument among the option settings that use
    the sum: the condition spelled by `spell` (a sympy condition over option symbols)."""
    out = []
    for arg, settings in found:
        terms = [
            sympy.And(*[sympy.Symbol(o) if on else sympy.Not(sympy.Symbol(o)) for o, on in s.items()]) for s in settings
        ]
        out.append((spell(simplify_logic(sympy.Or(*terms), form="dnf")), arg))
    return out


def group_init(spec: Spec, group: str) -> list[str]:
    """`group.setdefault("d", group["d0"])`: each group state's init, from the group's own
    hyperparameters."""
    hypers = spec.scalar_hypers

    def text(name: str) -> str:
        h, i = hypers[name]
        return f'{group}["{h.key}"]' + (f"[{i}]" if h.is_tuple else "")

    printer = host_printer(text)
    return [f'{group}.setdefault("{s.key}", {printer.doprint(s.init)})' for s in group_states(spec)]


def returned(spec: Spec, display: dict[str, str], program) -> str:
    """The functional's return: each group state's new value as a float, by its key."""
    items = []
    for s in program.group_states:
        value = display.get(program.group_outputs[s.name], program.group_outputs[s.name])
        items.append(f'"{s.key}": float({value})')
    return "return {" + ", ".join(items) + "}"


def check_group_outputs(prepared) -> None:
    """A group state's new value is one float for the group: what it reads must be the same
    for every tensor of the group (hyperparameters, group states, cross-parameter sums),
    not a per-tensor host value such as one computed from `step`."""
    from ...errors import CompileError

    by_name = {v.name: v for v in prepared.values}
    program = prepared.program
    for s in program.group_states:
        stack, seen = [program.group_outputs[s.name]], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            if prepared.kinds.get(name) not in ("uniform", "device_uniform"):
                raise CompileError(
                    by_name[name].loc,
                    f"the torch backend computes group state `{s.name}` once per param group, but its new "
                    f"value reads `{by_name[name].var or name}`, which is computed per tensor (it reads `step`?): "
                    "move the per-tensor part into the global_sum argument",
                )
            stack.extend(x.name for x in by_name[name].expr.free_symbols)
