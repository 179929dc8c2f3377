"""Per-tensor state as the class makes it on the first step (`_init_group`) and restores it
from a state dict: zeros, a fill, a copy, a reduced shape, or a 0-d tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...expr import GRAD, NDIM, PARAM
from ...shapes import guard_condition
from ...spec import Spec, StateDecl
from .constructor import group_text
from .prepare import plural
from .printer import HostPrinter, TensorPrinter, host_printer, number

if TYPE_CHECKING:
    from .module import Variant


def states_on_device(variants: list[Variant]) -> set[str]:
    """Tensor-scope states whose update reads a reduction: 0-d tensors on the device."""
    out = set()
    for v in variants:
        out |= {s.name for s in v.prepared.program.states if s.scope == "tensor"} - v.prepared.scalar_states
    return out


_STATE_DTYPE = "state_dtype"  # a local of _init_group


# Per-tensor scalar states that a parity reference keeps in torch's scalar dtype (like its
# `step`), whatever the parameter's dtype; a drop-in must round them the same way.
_SCALAR_DTYPE_STATES = {"torch.optim.NAdam": {"mu_product"}}


def _scalar_state_dtype(spec: Spec, s: StateDecl) -> str:
    """The dtype of a per-tensor state kept as a 0-d CPU tensor: never below the param's
    precision, except where the parity reference keeps it in torch's scalar dtype (float32
    unless that is the default)."""
    scalar = "_get_scalar_dtype()"
    if s.key in _SCALAR_DTYPE_STATES.get(spec.parity, ()):
        return scalar
    return f"torch.promote_types(p.dtype, {scalar})"


def scalar_state_restore(spec: Spec, device_states: set[str]) -> list[str]:
    """__setstate__ lines: Optimizer.load_state_dict casts every floating state but "step"
    to its param's dtype, so a 0-d CPU state comes back in its own dtype (a resumed run then
    rounds as the uninterrupted one did)."""
    lines = []
    for s in spec.state.values():
        if s.scope == "tensor" and s.name not in device_states:
            lines += [
                f'if torch.is_tensor(param_state.get("{s.key}")):',
                f'    param_state["{s.key}"] = param_state["{s.key}"].to({_scalar_state_dtype(spec, s)})',
            ]
    return lines


def state_init(spec: Spec, s: StateDecl, device_states: set[str]) -> str:
    text = group_text(spec)
    init = s.init
    names = {x.name for x in init.free_symbols}
    if s.scope == "tensor":
        value = number(float(init)) if init.is_number else host_printer(text).doprint(init)
        if s.name in device_states:
            make = f"torch.full((), {value}, dtype=p.dtype, device=p.device)"
        else:
            make = f"torch.tensor({value}, dtype={_scalar_state_dtype(spec, s)})"
    elif s.axes and init == 0:  # keepdim: size 1 along the reduced axes (p[..., :1] for axis -1)
        make = f"torch.zeros_like({_reduced_view(s.axes)}, dtype={_STATE_DTYPE})"
    elif s.axes:
        make = f"torch.full_like({_reduced_view(s.axes)}, {host_printer(text).doprint(init)}, dtype={_STATE_DTYPE})"
    elif init == 0:
        make = f"torch.zeros_like(p, dtype={_STATE_DTYPE}, memory_format=torch.preserve_format)"
    elif not names & {PARAM, GRAD, *spec.inputs}:
        value = host_printer(text).doprint(init)
        make = f"torch.full_like(p, {value}, dtype={_STATE_DTYPE}, memory_format=torch.preserve_format)"
    elif init.is_Symbol:
        source = text(init.name)
        make = f"{source}.to({_STATE_DTYPE} or {source}.dtype, copy=True)"
    else:
        tensors = {PARAM, GRAD, *spec.inputs}
        tensor = TensorPrinter(text, lambda e: not ({x.name for x in e.free_symbols} & tensors)).doprint(init)
        make = f"({tensor}).to({_STATE_DTYPE} or p.dtype)"
    lines = [
        f'if "{s.key}" not in state:',
        f'    state["{s.key}"] = {make}',
        f'{plural(s.name)}.append(state["{s.key}"])',
    ]
    if s.ranks is not None:  # `ndim: ">= 2"`: only these tensors have it (None in the list)
        cond = HostPrinter(lambda n: "p.ndim" if n == NDIM else n).doprint(guard_condition(s.ranks))
        lines = [f"if {cond}:"] + ["    " + line for line in lines] + ["else:", f"    {plural(s.name)}.append(None)"]
    if s.when is not None:
        public = {o: opt.public for o, opt in spec.options.items()}
        lines = [f"if {_condition(s.when, lambda o: f'group[{public[o]!r}]'.replace(chr(39), chr(34)))}:"] + [
            "    " + line for line in lines
        ]
    return "\n".join(" " * 12 + line for line in lines)


def _reduced_view(axes) -> str:
    """`p[..., :1]` (axis -1), `p[..., :1, :]` (axis -2): a view of p with size 1 along `axes`."""
    index = [":1" if -k in axes else ":" for k in range(max(-a for a in axes), 0, -1)]
    return f"p[..., {', '.join(index)}]"


def _condition(cond, spell) -> str:
    if isinstance(cond, str):
        return spell(cond)
    op, arg = cond
    if op == "not":
        return f"not {_condition(arg, spell)}"
    joined = f" {op} ".join(
        _condition(c, spell) if isinstance(c, str) or c[0] == "not" else f"({_condition(c, spell)})" for c in arg
    )
    return joined
