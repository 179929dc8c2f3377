"""The optimizer class's docstring: the update in math, the constructor's Args, where the
paper and the parity reference are (the text of torch.optim's class docstrings)."""

from __future__ import annotations

import textwrap

from ...errors import CompileError
from ...spec import Spec
from .modes import mode_docstring
from .printer import number


def class_docstring(spec: Spec, has_globals: bool) -> str:
    from ..latex.docstring import math_rst

    pad = "    "
    summary = wrap(spec.summary, 92, pad).lstrip()
    parts = [summary, "", math_rst(spec, indent=pad), "", pad + "Args:"]
    parts.append(arg_doc("params (iterable)", "parameters to optimize, or dicts defining parameter groups."))
    for key, h in spec.hyperparameters.items():
        if h.captured is None:
            parts.append(arg_doc(f"{key} ({type_of(h)}, optional)", _hyper_doc(spec, h)))
    for name, opt in spec.options.items():
        doc = opt.doc or "a compile-time option: the update is specialised to it"
        parts.append(arg_doc(f"{name} (bool, optional)", f"{doc.rstrip('.')} (default: {opt.default})."))
    parts.append(
        arg_doc("maximize (bool, optional)", "maximize the objective instead of minimizing it (default: False).")
    )
    parts.append(
        arg_doc(
            "foreach (bool, optional)",
            "update each group's tensors with torch._foreach_* kernels; None picks them on CUDA (default: None).",
        )
    )
    parts.append(
        arg_doc(
            "fused (bool, optional)",
            "update with optgen's fused kernels: C++ on CPU tensors, Triton on GPUs (default: None).",
        )
    )
    parts.append(
        arg_doc(
            "state_dtype (torch.dtype, optional)",
            "the dtype of the per-element state (torch.bfloat16 halves its memory; the fused kernels compute in float32 and round on store); None keeps it in the parameter's dtype, as torch.optim does. Only with fused=True (default: None).",
        )
    )
    parts.append(
        arg_doc(
            "process_group (ProcessGroup, optional)",
            f"the ranks among which the parameters are partitioned, each rank optimizing its own part (ZeRO-1: pass functools.partial({spec.name}, process_group=group) as ZeroRedundancyOptimizer's optimizer_class): "
            + (
                "the cross-parameter reductions (a global gradient norm) sum over all its ranks. "
                if has_globals
                else "unused, as this update has no cross-parameter reduction. "
            )
            + "Not kept in param groups or the state dict. FSDP2's DTensor parameters need none: each rank updates its shards, and a per-tensor reduction sums (or takes the min or max) over the tensor's shard group (default: None).",
        )
    )
    for key, h in spec.hyperparameters.items():
        if h.captured is not None:
            parts += [
                "",
                wrap(
                    f"``{key}`` (:math:`{h.tex[0]}`) is not a keyword: it is set from the group's ``{h.captured}`` when the group is added, and stays fixed while an LR scheduler changes ``{h.captured}``.",
                    92,
                    pad,
                ),
            ]
    if spec.modes is not None:
        parts += ["", wrap(mode_docstring(spec), 92, pad)]
    if spec.notes:
        parts += ["", wrap(spec.notes, 92, pad)]
    parity = (
        "No public implementation: tested against an independent float64 implementation."
        if spec.parity == "independent"
        else f"Parity reference: ``{spec.parity}``."
    )
    parts += ["", wrap(f"Paper: {spec.paper}", 92, pad), "", wrap(parity, 92, pad)]
    text = "\n".join(parts)
    if '"""' in text or text.rstrip().endswith("\\"):
        raise CompileError(spec.loc, f"{spec.name}: the docstring text would end the docstring early")
    return text


def arg_doc(head: str, text: str) -> str:
    return textwrap.fill(f"{head}: {text}", 96, initial_indent=" " * 8, subsequent_indent=" " * 12)


def input_doc(d) -> str:
    """step()'s Args entry for an input, indented as in step's docstring."""
    what = f"{d.doc.rstrip('.')}: " if d.doc else ""
    text = f"{what}a dict mapping each parameter that has a gradient to a tensor of its shape (required)."
    return textwrap.indent(arg_doc(f"{d.public} (dict)", text), "    ")


def type_of(h) -> str:
    kinds = ["float | None" if d is None else "float" for d in h.default]
    return f"tuple[{', '.join(kinds)}]" if h.is_tuple else kinds[0]


def default_text(h) -> str:
    if h.is_tuple:
        return "(" + ", ".join("None" if x is None else number(x) for x in h.default) + ")"
    return "None" if h.default[0] is None else number(h.default[0])


def _hyper_doc(spec: Spec, h) -> str:
    from ..latex.algorithm import symbol_tex  # the symbol the formulas use (a default without `tex:`)

    symbols = [symbol_tex(spec, name) for name in h.names]
    what = h.doc.rstrip(".") + ", " if h.doc else ""
    if h.is_tuple:
        return f"{what}:math:`({', '.join(symbols)})` ({', '.join(h.names)}), each in {h.range} (default: {default_text(h)})."
    return f"{what}:math:`{symbols[0]}`, in {h.range} (default: {default_text(h)})."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def wrap(text: str, width: int, indent: str) -> str:
    return "\n".join(textwrap.wrap(_one_line(text), width, initial_indent=indent, subsequent_indent=indent))


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
