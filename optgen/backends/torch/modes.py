"""The torch class's train() and eval() for a spec with `modes:` (optgen/modes.py).

Switching modes is not a step: every path (for-loop, foreach and fused, whose kernels only
step) switches with the same code, torch._foreach_* ops over a group's tensors, or one
tensor at a time where the group would not take foreach ops. Each map is affine with host
coefficients, so it is one lerp_, or mul_ and add_ calls."""

from __future__ import annotations

import sympy

from ...modes import ModeMap
from ...spec import Spec
from .prepare import plural
from .printer import HostPrinter


def mode_context(public: Spec, spec: Spec) -> dict:
    """`spec` under its Python names, `public` as written (the docstrings)."""
    if spec.modes is None:
        return {"modes": None}
    methods = []
    for mode, doc in (("train", "their training values"), ("eval", "their evaluation values")):
        methods.append(
            {
                "name": mode,
                "doc": _doc(public.modes.maps[mode], doc, mode),
                "body": _body(spec, spec.modes.maps[mode], mode == "train"),
            }
        )
    return {"modes": {"start_train": spec.modes.start == "train", "methods": methods}}


def mode_docstring(spec: Spec) -> str:
    """The class docstring's paragraph on modes."""
    start = spec.modes.start
    return (
        "Modes: the parameters hold the training sequence in train mode and the evaluation "
        "sequence in eval mode. Call ``optimizer.train()`` before training and "
        "``optimizer.eval()`` before evaluating or saving the model; step() in eval mode is a "
        f"RuntimeError. A new optimizer is in {start} mode; the mode is kept in each param "
        "group's ``train_mode`` (and so in the state dict)."
    )


def _doc(m: ModeMap, what: str, mode: str) -> str:
    other = "eval" if mode == "train" else "train"
    lerp = m.lerp
    formula = f"lerp(param, {lerp[0]}, {sympy.sstr(lerp[1])})" if lerp else sympy.sstr(m.expr)
    return (
        f"Switch to {mode} mode: the parameters become {what},\n"
        f"        param <- {formula}.\n\n"
        f"        Only groups in {other} mode change (calling it twice is calling it once); a parameter\n"
        "        without state (never updated) keeps its value."
    )


def _body(spec: Spec, m: ModeMap, train_mode: bool) -> list[str]:
    host = HostPrinter(lambda n: n)
    states = list(m.terms)
    lines = [
        "for group in self.param_groups:",
        f'    if {"" if train_mode else "not "}group["train_mode"]:',
        "        continue",
    ]
    for name in sorted(m.hyper_names, key=list(spec.scalar_hypers).index):
        h, i = spec.scalar_hypers[name]
        key = f'group["{h.key}"][{i}]' if h.is_tuple else f'group["{h.key}"]'
        lines.append(f"    {name} = float({key})")
    lines.append('    params = [p for p in group["params"] if self.state.get(p)]')
    for s in states:
        key = spec.state[s].key
        lines.append(f'    {plural(s)} = [self.state[p]["{key}"].to(p.device, p.dtype) for p in params]')
    each = ", ".join(["param", *states])
    lists = ", ".join(["params", *(plural(s) for s in states)])
    lines.append("    if _mode_foreach(group, params):")
    lines += ["        " + line for line in _ops(m, host, foreach=True)]
    lines.append("    else:")
    lines.append(f"        for {each} in zip({lists}):" if states else "        for param in params:")
    lines += ["            " + line for line in _ops(m, host, foreach=False)]
    lines.append(f'    group["train_mode"] = {train_mode}')
    return lines


def _ops(m: ModeMap, host: HostPrinter, foreach: bool) -> list[str]:
    """param <- a * param + sum(b * state) + c as in-place torch calls."""

    def call(fn: str, *args: str) -> str:
        if foreach:
            mapped = ["params", *(plural(a) if a in m.terms else a for a in args)]
            return f"torch._foreach_{fn}_({', '.join(mapped)})"
        return f"param.{fn}_({', '.join(args)})"

    lerp = m.lerp
    if lerp is not None:
        state, weight = lerp
        return [call("lerp", state, host.doprint(weight))]
    out = []
    if m.param_coeff != 1:
        out.append(call("mul", host.doprint(m.param_coeff)))
    for state, coeff in m.terms.items():
        out.append(call("add", state) if coeff == 1 else call("add", state, f"alpha={host.doprint(coeff)}"))
    if m.constant != 0:
        out.append(call("add", host.doprint(m.constant)))
    return out
