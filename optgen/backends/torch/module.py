"""One spec -> one Python module: the optimizer class, the functional dispatcher and its
for-loop, foreach and fused implementations (the shape of torch/optim/adam.py)."""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass

import jinja2
import sympy
from sympy.logic.boolalg import simplify_logic

from ... import catalog, shapes
from ...errors import CompileError
from ...expr import GRAD, NDIM, NUMEL, PARAM
from ...fused_support import fused_refusal
from ...lower import lower
from ...matrix import matrix_location
from ...shapes import guard_condition
from ...spec import Spec, StateDecl
from .. import format_python
from . import config, cross, names
from .emit import elementwise, multi_body, single_body
from .modes import mode_context, mode_docstring
from .prepare import Prepared, plural, prepare
from .printer import HostPrinter, TensorPrinter, host_printer, number
from .reduce_pass import reduce_passes
from .schedule import Scheduler
from .statements import Line, merge_variants, render


@dataclass
class Variant:
    options: dict[str, bool]
    prepared: Prepared


@dataclass
class GlobalFunction:
    """A cross-parameter reduction: the class sums it over every group before updating."""

    name: str
    helper: str
    doc: str
    needed_group: str
    needed_local: str
    group_kwargs: str
    local_kwargs: str
    helper_signature: str
    helper_body: str
    # staged (reads states, group states or step): the lists the helper takes after params
    # and grads, as the class and the functional pass them
    helper_lists: str = ""
    staged: bool = False


def render_module(spec: Spec, stamp: str, compiled: bool = False, formatted: bool = True) -> str:
    """The module text; formatted=False skips ruff (`optgen check` only compiles it)."""
    if spec.gradient_at is not None:
        raise CompileError(
            spec.loc,
            f"{spec.name} takes its gradient at {spec.gradient_at} (a paper form, for proofs): "
            "only a spec whose gradient is taken at `param` compiles to an optimizer",
        )
    # what the module uses for itself: rendered with placeholders for every spec name
    # (less the temporaries the scheduler named: it names them around whatever is taken)
    marked = names.renamed(spec, names.placeholders(spec), public=False)
    text, made = _render(marked, marked, stamp, compiled, set())
    taken = names.module_names(text) - made
    _check_keywords(spec, names.own_keywords(text))
    python_names = names.python_names(spec, taken)
    local = names.renamed(spec, python_names)
    global_keys = names.public_globals(spec, local, python_names)
    text = _render(spec, local, stamp, compiled, taken, global_keys)[0]
    return format_source(text) if formatted else text


def _render(
    spec: Spec, local: Spec, stamp: str, compiled: bool, taken: set[str], global_keys: dict[str, str] | None = None
) -> tuple[str, set[str]]:
    """The module's text, and the names the scheduler made for temporaries. `local` is the
    spec under its Python names (the same spec where every name is free), `spec` the one
    the docstring shows; `global_keys` the fused path's key of each global reduction renamed."""
    variants = [Variant(combo, prepare(lower(local, combo))) for combo in local.option_combinations()]
    context = _context(spec, local, variants, stamp, compiled, taken)
    context["global_keys"] = global_keys or {}
    text = _with_math_import(_environment().get_template("optimizer.py.j2").render(**context))
    return text, context["made"]


def _check_keywords(spec: Spec, own: set[str]) -> None:
    """A constructor keyword is public, so it cannot be renamed: one that the class has
    itself (`state_dtype`, found in the rendered constructor) is an error."""
    for key, h in spec.hyperparameters.items():
        if key in own:
            raise CompileError(
                h.loc, f"`{key}` is a keyword of every optgen optimizer; name the hyperparameter otherwise"
            )
    for name, opt in spec.options.items():
        if name in own:
            raise CompileError(opt.loc, f"`{name}` is a keyword of every optgen optimizer; name the option otherwise")


def _with_math_import(text: str) -> str:
    """`import math` beside `import torch`, only in a module whose host arithmetic takes a
    log (HostPrinter prints `math.log`; `math` is a reserved name in specs)."""
    if "math.log(" not in text:
        return text
    return text.replace("\nimport torch\n", "\nimport math\n\nimport torch\n", 1)


@functools.cache  # one Environment, so each template is compiled once per process
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(catalog.templates_dir() / config.NAME)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["format_is_tensor"] = lambda name: f"torch.is_tensor({name})"
    return env


def format_source(text: str) -> str:
    return format_python(text, config.LINE_LENGTH)


# --------------------------------------------------------------------------- context
def _context(public: Spec, spec: Spec, variants: list[Variant], stamp: str, compiled: bool, taken) -> dict:
    """`spec` under its Python names; `public` as written (the docstring, the fused path's keys)."""
    fn = spec.module_name
    lists = ["params", "grads"] + [plural(i) for i in spec.inputs]
    lists += [plural(s.name) for s in cross.per_tensor_states(spec)] + ["state_steps"]
    globals_ = _globals(spec, variants)
    group_states = [s.name for s in cross.group_states(spec)]
    kwargs = list(spec.scalar_hypers) + list(spec.options) + group_states + ["maximize"] + [g.name for g in globals_]
    bodies = _bodies(spec, variants, lists, kwargs, taken)
    return {
        "stamp": stamp,
        "name": spec.name,
        "fn": fn,
        "headline": _escape(_wrap(f"{spec.name}: {spec.summary}", 96, "")),
        "paper": _escape(_wrap(spec.paper, 96, "")),
        "compiled": compiled,
        "lists": lists,
        "globals": globals_,
        "signature_public": _signature(spec, lists, globals_),
        "signature": _signature(spec, lists, globals_, _per_tensor_keywords(variants)),
        "numels": _uses_numel(variants),
        "shard_reductions": _shard_reductions(variants),
        "tensor_reduce_fns": {v.reduce for var in variants for v in var.prepared.program.reductions("tensor")},
        "sharded_lists": lists[:-1],
        "forward_kwargs": [f"{k}={k}" for k in kwargs],
        "states": [
            {"name": s, "list": plural(p)} for s, p in zip(public.state, spec.state) if spec.state[p].scope != "group"
        ],
        "staged": any(g.staged for g in globals_),
        "group_states": group_states,
        "group_init": cross.group_init(spec, "param_group"),
        "group_init_setstate": cross.group_init(spec, "group"),
        # the functional returns a group's new group-state values (None: nothing to update)
        "returns": "dict[str, float] | None" if group_states else "None",
        "inputs": [
            {"name": i, "key": d.public, "list": plural(i), "doc": _input_doc(d)} for i, d in spec.inputs.items()
        ],
        "spec_key": "_spec_key[register]" if compiled else f'"{fn}"',
        "hyper_names": list(spec.scalar_hypers),
        "hyper_keys": list(zip(public.scalar_hypers, spec.scalar_hypers)),
        "option_keys": list(zip(public.options, spec.options)),
        "per_group_step": spec.step_count == "per_group",
        "parity": spec.parity,
        "fused_refusal": fused_refusal(public),
        "whole_tensors": _whole_tensors(spec),
        **_class_context(public, spec, variants, globals_),
        **mode_context(public, spec),
        **bodies,
        "multi_signature": _signature(spec, lists, globals_, bodies["multi_extra"]),
    }


def _class_context(public: Spec, spec: Spec, variants: list[Variant], globals_) -> dict:
    captured = {k: h.captured for k, h in spec.hyperparameters.items() if h.captured}
    device_states = _device_states(variants)
    return {
        "docstring": _docstring(public, bool(globals_)),
        "ctor_args": _ctor_args(spec),
        "ctor_keys": [k for k, h in spec.hyperparameters.items() if h.captured is None]
        + [o.public for o in spec.options.values()],
        "validation": _validation(spec, public),
        "fused_refusal": fused_refusal(public),
        "captured": [f'param_group.setdefault("{k}", param_group["{src}"])' for k, src in captured.items()],
        "captured_setstate": [f'group.setdefault("{k}", group["{src}"])' for k, src in captured.items()],
        "init_uses_grad": any(GRAD in {x.name for x in s.init.free_symbols} for s in cross.per_tensor_states(spec)),
        "state_init": [_state_init(spec, s, device_states) for s in cross.per_tensor_states(spec)],
        "scalar_state_restore": _scalar_state_restore(spec, device_states),
        "restore_reads_param": any("p.dtype" in line for line in _scalar_state_restore(spec, device_states)),
        "uses_state_dtype": any(s.scope == "element" for s in spec.state.values()),
        "splits_large": any(elementwise(v.prepared.program) for v in variants),
        "unpack": _unpack(spec),
        "call_kwargs": _call_kwargs(spec, globals_),
        # scalar constructor keywords that may be 1-element tensors (torch.optim's tensor lr)
        "tensor_keys": [k for k, h in spec.hyperparameters.items() if h.captured is None and not h.is_tuple],
        "foreach_scalar_keys": [k for k, h in spec.hyperparameters.items() if h.tensor == "not_with_foreach"],
        "foreach_scalar_names": [h.names[0] for h in spec.hyperparameters.values() if h.tensor == "not_with_foreach"],
    }


def _bodies(spec: Spec, variants: list[Variant], lists: list[str], kwargs: list[str], taken: set[str]) -> dict:
    """The for-loop and foreach bodies: one schedule per setting of the options, merged."""
    fn = spec.module_name
    reserved = _reserved(spec, lists, kwargs, fn) | taken
    extra = _per_tensor_keywords(variants)
    planned, made = [], set()
    for v in variants:
        single, multi = Scheduler(v.prepared, False, reserved), Scheduler(v.prepared, True, reserved)
        schedule, multi_schedule = single.run(), multi.run()
        passes = reduce_passes(v.prepared, schedule, reserved) if "shard_groups" in extra else []
        planned.append((v, schedule, multi_schedule, passes))
        made |= (single.taken | multi.taken | {n for one in passes for n in one.made}) - reserved
    # a host-side branch splits a foreach group into batches: under sharding the group's
    # reductions are combined once before the split and handed to the batches (`combined`)
    if any(multi_schedule.branch_conditions and passes for _, _, multi_schedule, passes in planned):
        extra = [*extra, "combined"]
    recurse = (
        f"_multi_tensor_{fn}(*batch, {', '.join([f'{k}={k}' for k in kwargs] + [f'{k}=batch_{k}' for k in extra])})"
    )
    singles, multis = [], []
    for v, schedule, multi_schedule, passes in planned:
        single = single_body(v.prepared, schedule, passes)
        multi = multi_body(v.prepared, multi_schedule, recurse, lists, extra, passes)
        if v.prepared.program.group_states:  # the group's new values, for the optimizer to keep
            cross.check_group_outputs(v.prepared)
            single.append(Line(cross.returned(spec, schedule.display, v.prepared.program)))
            multi.append(Line(cross.returned(spec, multi_schedule.display, v.prepared.program)))
        singles.append((v.options, single))
        multis.append((v.options, multi))
    options = list(spec.options)
    single_text = render(merge_variants(singles, options), 1)
    multi_text = render(merge_variants(multis, options), 1)
    return {
        "single_body": single_text,
        "multi_body": multi_text,
        "multi_extra": extra,
        "uses_get_value": "_get_value(" in single_text + multi_text,
        "made": made,
    }


def _reserved(spec: Spec, lists: list[str], kwargs: list[str], fn: str) -> set[str]:
    names = set(lists) | set(kwargs) | set(spec.state) | set(spec.options)
    names |= {
        "param",
        "grad",
        "step",
        "step_t",
        "numel",
        "numels",
        "shard_groups",
        "batch_numels",
        "batch_shard_groups",
        "combined",
        "batch_combined",
        "values",
        "tensors",
        "steps",
        "keys",
        "chunk",
        "batch",
        "value",
        "x",
        "i",
        "p",
        "torch",
        "Tensor",
    }
    names |= {fn, f"_single_tensor_{fn}", f"_multi_tensor_{fn}", f"_fused_{fn}", "_batches", "foreach", "fused"}
    names |= {"_has_large_cpu_tensor", "_split_large", "_get_value"}
    return names


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _wrap(text: str, width: int, indent: str) -> str:
    return "\n".join(textwrap.wrap(_one_line(text), width, initial_indent=indent, subsequent_indent=indent))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


# --------------------------------------------------------------------------- the class
def _docstring(spec: Spec, has_globals: bool) -> str:
    from ..latex.docstring import math_rst

    pad = "    "
    summary = _wrap(spec.summary, 92, pad).lstrip()
    parts = [summary, "", math_rst(spec, indent=pad), "", pad + "Args:"]
    parts.append(_arg("params (iterable)", "parameters to optimize, or dicts defining parameter groups."))
    for key, h in spec.hyperparameters.items():
        if h.captured is None:
            parts.append(_arg(f"{key} ({_type_of(h)}, optional)", _hyper_doc(spec, h)))
    for name, opt in spec.options.items():
        doc = opt.doc or "a compile-time option: the update is specialised to it"
        parts.append(_arg(f"{name} (bool, optional)", f"{doc.rstrip('.')} (default: {opt.default})."))
    parts.append(_arg("maximize (bool, optional)", "maximize the objective instead of minimizing it (default: False)."))
    parts.append(
        _arg(
            "foreach (bool, optional)",
            "update each group's tensors with torch._foreach_* kernels; None picks them on CUDA (default: None).",
        )
    )
    parts.append(
        _arg(
            "fused (bool, optional)",
            "update with optgen's fused kernels: C++ on CPU tensors, Triton on GPUs (default: None).",
        )
    )
    parts.append(
        _arg(
            "state_dtype (torch.dtype, optional)",
            "the dtype of the per-element state (torch.bfloat16 halves its memory; the fused kernels compute in float32 and round on store); None keeps it in the parameter's dtype, as torch.optim does. Only with fused=True (default: None).",
        )
    )
    parts.append(
        _arg(
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
                _wrap(
                    f"``{key}`` (:math:`{h.tex[0]}`) is not a keyword: it is set from the group's ``{h.captured}`` when the group is added, and stays fixed while an LR scheduler changes ``{h.captured}``.",
                    92,
                    pad,
                ),
            ]
    if spec.modes is not None:
        parts += ["", _wrap(mode_docstring(spec), 92, pad)]
    if spec.notes:
        parts += ["", _wrap(spec.notes, 92, pad)]
    parity = (
        "No public implementation: tested against an independent float64 implementation."
        if spec.parity == "independent"
        else f"Parity reference: ``{spec.parity}``."
    )
    parts += ["", _wrap(f"Paper: {spec.paper}", 92, pad), "", _wrap(parity, 92, pad)]
    text = "\n".join(parts)
    if '"""' in text or text.rstrip().endswith("\\"):
        raise CompileError(spec.loc, f"{spec.name}: the docstring text would end the docstring early")
    return text


def _arg(head: str, text: str) -> str:
    return textwrap.fill(f"{head}: {text}", 96, initial_indent=" " * 8, subsequent_indent=" " * 12)


def _input_doc(d) -> str:
    """step()'s Args entry for an input, indented as in step's docstring."""
    what = f"{d.doc.rstrip('.')}: " if d.doc else ""
    text = f"{what}a dict mapping each parameter that has a gradient to a tensor of its shape (required)."
    return textwrap.indent(_arg(f"{d.public} (dict)", text), "    ")


def _unpack(spec: Spec) -> list[str]:
    """Tuple hyperparameters into their names; a None component (`none: dtype_eps`) becomes
    the machine epsilon of the group's first parameter's dtype, as torch.optim.Adafactor's
    eps1=None does."""
    lines = []
    for k, h in spec.hyperparameters.items():
        if h.is_tuple:
            lines.append(f'{", ".join(h.names)} = group["{k}"]')
        for name, value in zip(h.names, h.default):
            if h.none is not None and value is None:
                if not h.is_tuple:
                    lines.append(f'{name} = group["{k}"]')
                lines += [f"if {name} is None and params:", f"    {name} = torch.finfo(params[0].dtype).eps"]
    return lines


def _type_of(h) -> str:
    kinds = ["float | None" if d is None else "float" for d in h.default]
    return f"tuple[{', '.join(kinds)}]" if h.is_tuple else kinds[0]


def _default(h) -> str:
    if h.is_tuple:
        return "(" + ", ".join("None" if x is None else number(x) for x in h.default) + ")"
    return "None" if h.default[0] is None else number(h.default[0])


def _hyper_doc(spec: Spec, h) -> str:
    from ..latex.algorithm import symbol_tex  # the symbol the formulas use (a default without `tex:`)

    symbols = [symbol_tex(spec, name) for name in h.names]
    what = h.doc.rstrip(".") + ", " if h.doc else ""
    if h.is_tuple:
        return (
            f"{what}:math:`({', '.join(symbols)})` ({', '.join(h.names)}), each in {h.range} (default: {_default(h)})."
        )
    return f"{what}:math:`{symbols[0]}`, in {h.range} (default: {_default(h)})."


def _ctor_args(spec: Spec) -> list[str]:
    out = [f"{k}: {_type_of(h)} = {_default(h)}" for k, h in spec.hyperparameters.items() if h.captured is None]
    return out + [f"{opt.public}: bool = {opt.default}" for opt in spec.options.values()]


def _validation(spec: Spec, public: Spec) -> list[str]:
    """Range checks, reading each value under its Python name; messages name it as the spec."""
    lines = []
    for (key, h), shown in zip(spec.hyperparameters.items(), public.hyperparameters.values()):
        if h.captured is not None:
            continue
        lines.append(f'{", ".join(h.names)} = param_group["{key}"]')
        for i, (name, label) in enumerate(zip(h.names, shown.names)):
            test = _range_test(name, h.range)
            if test is None:
                continue
            if h.none is not None and h.default[i] is None:
                test = f"({name} is None or {test})"
            label = f"{label} ({key}[{i}])" if h.is_tuple else label
            lines.append(f"if not {test}:")
            lines += _raise(f'f"Invalid {label}: {{{name}!r}}', f'(expected a value in {h.range})"')
    return lines


def _raise(head: str, tail: str) -> list[str]:
    """raise ValueError(message), the message split in two literals when one line is too long."""
    if len(head) + len(tail) < 72:
        return [f"    raise ValueError({head} {tail})"]
    return ["    raise ValueError(", f'        {head} "', f'        "{tail}', "    )"]


def _range_test(name: str, interval) -> str | None:
    parts = []
    if interval.lo != float("-inf"):
        parts.append(f"{number(interval.lo)} {'<' if interval.lo_open else '<='} ")
    parts.append(name)
    if interval.hi != float("inf"):
        parts.append(f" {'<' if interval.hi_open else '<='} {number(interval.hi)}")
    return "".join(parts) if len(parts) > 1 else None


def _group_text(spec: Spec):
    """Hyperparameters and options as read from a param group."""
    texts = {o: f'group["{opt.public}"]' for o, opt in spec.options.items()}
    for key, h in spec.hyperparameters.items():
        for i, name in enumerate(h.names):
            texts[name] = f'group["{key}"][{i}]' if h.is_tuple else f'group["{key}"]'
    texts.update({PARAM: "p", GRAD: "grad", "numel": "p.numel()", "ndim": "p.ndim"})
    texts.update({name: f"{plural(name)}[-1]" for name in spec.inputs})  # appended before the states
    return lambda name: texts.get(name, name)


def _device_states(variants: list[Variant]) -> set[str]:
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


def _scalar_state_restore(spec: Spec, device_states: set[str]) -> list[str]:
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


def _state_init(spec: Spec, s: StateDecl, device_states: set[str]) -> str:
    text = _group_text(spec)
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


def _call_kwargs(spec: Spec, globals_) -> list[str]:
    out = []
    for key, h in spec.hyperparameters.items():
        for name in h.names:
            out.append(f"{name}={name}" if h.is_tuple else f'{name}=group["{key}"]')
    out += [f'{o}=group["{opt.public}"]' for o, opt in spec.options.items()]
    out += [f'{s.name}=group["{s.key}"]' for s in cross.group_states(spec)]
    out.append('maximize=group["maximize"]')
    out += [f"{g.name}={g.name}" for g in globals_]
    return out


def _signature(spec: Spec, lists: list[str], globals_, per_tensor: list[str] = ()) -> str:
    """The functional API's signature; with `per_tensor` (numels, shard_groups), that of its
    for-loop, foreach and fused implementations."""
    lines = [f"    {name}: list[Tensor]," for name in lists]
    lines.append("    *,")
    lines += [f"    {name}: float," for name in spec.scalar_hypers]
    lines += [f"    {name}: bool," for name in spec.options]
    lines += [f"    {s.name}: float," for s in cross.group_states(spec)]
    lines.append("    maximize: bool,")
    lines += [f"    {g.name}: Tensor | None = None," for g in globals_]
    lines += [f"    {_PER_TENSOR_KEYWORDS[name]}," for name in per_tensor]
    return "\n".join(lines)


# the per-tensor lists the implementations take beside the tensors
_PER_TENSOR_KEYWORDS = {
    "numels": "numels: list[int]",  # each whole tensor's numel (a shard's is its own)
    "shard_groups": "shard_groups: list | None = None",  # each tensor's _shard_group
    # each tensor's reductions combined across shards, a tuple per tensor (the foreach path's
    # batches of a split group)
    "combined": "combined: list | None = None",
}


def _uses_numel(variants: list[Variant]) -> bool:
    return any(s.name == NUMEL for v in variants for x in v.prepared.program.values for s in x.expr.free_symbols)


def _shard_reductions(variants: list[Variant]) -> bool:
    """Whether the update reduces per tensor: then a sharded tensor's reductions are combined
    (a spec that reduces over axes refuses sharded tensors instead)."""
    if any(v.prepared.program.has_axes for v in variants):
        return False
    return any(v.prepared.program.reductions("tensor") for v in variants)


def _per_tensor_keywords(variants: list[Variant]) -> list[str]:
    return (["numels"] if _uses_numel(variants) else []) + (["shard_groups"] if _shard_reductions(variants) else [])


# --------------------------------------------------------------------------- global reductions
def _globals(spec: Spec, variants: list[Variant]) -> list[GlobalFunction]:
    staged = _staged_globals(spec, variants)
    found: dict[str, tuple] = {}
    for v in variants:
        for g in v.prepared.globals:
            if g.name in staged:
                continue
            if g.name in found and found[g.name][0] != g.arg:
                raise CompileError(spec.loc, f"the cross-parameter reduction {g.name} differs between option settings")
            found.setdefault(g.name, (g.arg, []))[1].append(v)
    out = []
    for name, (arg, users) in found.items():
        condition = _needed(name, users)
        hypers = sorted({s.name for s in arg.free_symbols} - {PARAM, GRAD}, key=list(spec.scalar_hypers).index)
        even = _even_in_grad(arg)
        kw = hypers + ([] if even else ["maximize"])
        group_kw = [
            f'{h}=group["{_hyper_key(spec, h)}"]'
            + (f"[{_hyper_index(spec, h)}]" if spec.scalar_hypers[h][0].is_tuple else "")
            for h in hypers
        ]
        group_kw += [] if even else ['maximize=group["maximize"]']
        out.append(
            GlobalFunction(
                name=name,
                helper=f"_partial_{name}",
                doc=f"The sum of {arg}",
                needed_group=_spell(condition, _group_text(spec)),
                needed_local=_spell(condition, lambda o: o),
                group_kwargs="".join(f", {k}" for k in group_kw),
                local_kwargs="".join(f", {k}={k}" for k in kw),
                helper_signature=(
                    "".join([", *"] + [f", {h}: float" for h in hypers] + ([] if even else [", maximize: bool"]))
                )
                if kw
                else "",
                helper_body=_global_body(arg, even),
            )
        )
    return out + list(staged.values())


def _staged_globals(spec: Spec, variants: list[Variant]) -> dict[str, GlobalFunction]:
    """The sums over all parameters that read states, group states or step (cross.py): the
    argument may differ between option settings (the helper then takes those options)."""
    found: dict[str, list] = {}
    users: dict[str, list] = {}
    for v in variants:
        for g in v.prepared.globals:
            if any(cross.is_staged(spec, w.arg) for w in v.prepared.globals if w.name == g.name):
                arms = found.setdefault(g.name, [])
                for arg, settings in arms:
                    if arg == g.arg:
                        settings.append(v.options)
                        break
                else:
                    arms.append((g.arg, [v.options]))
                users.setdefault(g.name, []).append(v)
    out = {}
    for name, arms in found.items():
        args = [a for a, _ in arms]
        conditions = cross.arms(arms, lambda c: c)
        options = sorted({x.name for c, _ in conditions[:-1] for x in c.free_symbols})
        scalars = cross.staged_scalars(spec, args) + options
        even = all(_even_in_grad(a) for a in args)
        kw = scalars + ([] if even else ["maximize"])
        condition = _needed(name, users[name])
        lists = cross.staged_lists(spec, args)
        group_kw = [_group_value(spec, n) for n in scalars] + ([] if even else ['maximize=group["maximize"]'])
        out[name] = GlobalFunction(
            name=name,
            helper=f"_partial_{name}",
            doc=f"The sum of {args[0]}" if len(args) == 1 else f"The sum of {name}'s argument (per option setting)",
            needed_group=_spell(condition, _group_text(spec)),
            needed_local=_spell(condition, lambda o: o),
            group_kwargs="".join(f", {k}" for k in group_kw),
            local_kwargs="".join(f", {k}={k}" for k in kw),
            helper_signature="".join(
                [", *"]
                + [f", {n}: bool" if n in spec.options else f", {n}: float" for n in scalars]
                + ([] if even else [", maximize: bool"])
            )
            if kw
            else "",
            helper_body=cross.staged_body(spec, [(_spell(c, lambda o: o), a) for c, a in conditions], even),
            helper_lists=", ".join(lists[2:]),
            staged=True,
        )
    return out


def _whole_tensors(spec: Spec) -> str:
    """What makes each tensor's update need the whole tensor ("" when a shard can run it)."""
    if matrix_location(spec) is not None:
        return "uses matrix operations, which need whole tensors"
    if shapes.axis_constructs(spec):
        return "reduces over axes or tests ndim(param), which need whole tensors"
    return ""


def _group_value(spec: Spec, name: str) -> str:
    """`name=group[...]`: a hyperparameter, option or group state as the class reads it."""
    if name in spec.options:
        return f'{name}=group["{spec.options[name].public}"]'
    if name in spec.state:
        return f'{name}=group["{spec.state[name].key}"]'
    return f'{name}=group["{_hyper_key(spec, name)}"]' + (
        f"[{_hyper_index(spec, name)}]" if spec.scalar_hypers[name][0].is_tuple else ""
    )


def _hyper_key(spec: Spec, name: str) -> str:
    return spec.scalar_hypers[name][0].key


def _hyper_index(spec: Spec, name: str) -> int:
    return spec.scalar_hypers[name][1]


def _even_in_grad(arg) -> bool:
    g = sympy.Symbol(GRAD, real=True)
    grads = [s for s in arg.free_symbols if s.name == GRAD]
    return not grads or sympy.simplify(arg.xreplace({grads[0]: -g}) - arg.xreplace({grads[0]: g})) == 0


def _global_body(arg, even: bool) -> str:
    for name, lst in ((GRAD, "grads"), (PARAM, "params")):
        if isinstance(arg, sympy.Pow) and arg.exp == 2 and arg.base.is_Symbol and arg.base.name == name:
            return f"    return torch.stack(torch._foreach_norm({lst})).square().sum()"
    printer = TensorPrinter(lambda n: n, lambda e: not ({x.name for x in e.free_symbols} & {PARAM, GRAD}))
    lines = [] if even else ["    if maximize:", "        grads = torch._foreach_neg(grads)"]
    lines.append(
        f"    return torch.stack([({printer.doprint(arg)}).sum() for param, grad in zip(params, grads)]).sum()"
    )
    return "\n".join(lines)


def _needed(name: str, users: list[Variant]):
    """When a param group needs the reduction: the option settings that have it, and the
    hyperparameters that switch it off at 0 (Adan's max_grad_norm)."""
    terms = []
    for v in users:
        literals = [sympy.Symbol(o) if on else sympy.Not(sympy.Symbol(o)) for o, on in v.options.items()]
        kills = [sympy.Symbol(f"nonzero__{h}") for h in _killers(v.prepared, name)]
        terms.append(sympy.And(*literals, *kills))
    return simplify_logic(sympy.Or(*terms), form="dnf")


def _killers(p: Prepared, name: str) -> list[str]:
    out = []
    spec = p.program.spec
    for h, (hp, _) in spec.scalar_hypers.items():
        if hp.captured is not None or not hp.range.contains(0.0) or h not in p.kinds:
            continue
        table = {h: sympy.Integer(0)}
        for v in p.values:
            if p.kinds[v.name] in ("uniform", "device_uniform"):
                e = v.expr.xreplace({s: table[s.name] for s in v.expr.free_symbols if s.name in table})
                if e.is_number:
                    table[v.name] = e
        live = set(p.program.outputs.values())
        for v in reversed(p.values):
            if v.name in live and v.name not in table:
                e = v.expr.xreplace({s: table[s.name] for s in v.expr.free_symbols if s.name in table})
                live |= {s.name for s in e.free_symbols}
        if name not in live:
            out.append(h)
    return out


def _spell(cond, option_text) -> str:
    if cond is sympy.true:
        return "True"
    if cond is sympy.false:
        return "False"
    if isinstance(cond, sympy.Symbol):
        if cond.name.startswith("nonzero__"):
            h = cond.name[len("nonzero__") :]
            return f"{option_text(h)} != 0"
        return option_text(cond.name)
    if isinstance(cond, sympy.Not):
        return f"not {_spell(cond.args[0], option_text)}"
    op = " and " if isinstance(cond, sympy.And) else " or "
    parts = [_spell(a, option_text) for a in sorted(cond.args, key=str)]
    if isinstance(cond, sympy.Or):
        parts = [f"({p})" if " and " in p else p for p in parts]
    return op.join(parts)
