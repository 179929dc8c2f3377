"""One spec -> one Python module: the optimizer class, the functional dispatcher and its
for-loop, foreach and fused implementations (the shape of torch/optim/adam.py).

This module fills the template; the parts come from beside it: the class's docstring
(docstring.py), its constructor and range checks (constructor.py), per-tensor state
(state_init.py), cross-parameter sums (global_sums.py), and the update bodies (schedule/
plans them, emit.py prints them)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jinja2

from ... import catalog, shapes
from ...errors import CompileError
from ...expr import GRAD, NUMEL
from ...fused_support import fused_refusal
from ...lower import lower
from ...matrix import matrix_location
from ...spec import Spec
from .. import format_python
from ..fused_groups import group_value_lines
from . import config, cross, names
from .constructor import ctor_args, unpack, validation
from .docstring import class_docstring, escape, input_doc, wrap
from .emit import elementwise, multi_body, single_body, whole_tensors_only
from .global_sums import global_functions
from .modes import mode_context
from .prepare import Prepared, plural, prepare
from .reduce_pass import reduce_passes
from .schedule import Scheduler
from .state_init import scalar_state_restore, state_init, states_on_device
from .statements import Line, merge_variants, render


@dataclass
class Variant:
    options: dict[str, bool]
    prepared: Prepared


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
    globals_ = global_functions(spec, variants)
    group_states = [s.name for s in cross.group_states(spec)]
    kwargs = list(spec.scalar_hypers) + list(spec.options) + group_states + ["maximize"] + [g.name for g in globals_]
    bodies = _bodies(spec, variants, lists, kwargs, taken)
    return {
        "stamp": stamp,
        "name": spec.name,
        "fn": fn,
        "headline": escape(wrap(f"{spec.name}: {spec.summary}", 96, "")),
        "paper": escape(wrap(spec.paper, 96, "")),
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
            {"name": i, "key": d.public, "list": plural(i), "doc": input_doc(d)} for i, d in spec.inputs.items()
        ],
        "spec_key": "_spec_key[register]" if compiled else f'"{fn}"',
        "hyper_names": list(spec.scalar_hypers),
        "hyper_keys": list(zip(public.scalar_hypers, spec.scalar_hypers)),
        "option_keys": list(zip(public.options, spec.options)),
        "per_group_step": spec.step_count == "per_group",
        "step_key": spec.step_key,
        "step_key_source": _count_source(spec),
        "parity": spec.parity,
        "fused_refusal": fused_refusal(public),
        # group states go to the fused kernels as host scalars; their new values come back
        "fused_group_keys": [(k, p) for k, p in zip(public.state, spec.state) if spec.state[p].scope == "group"],
        "fused_group_values": group_value_lines(variants, list(spec.options)),
        "whole_tensors": _whole_tensors(spec),
        **_class_context(public, spec, variants, globals_),
        **mode_context(public, spec),
        **bodies,
        "multi_signature": _signature(spec, lists, globals_, bodies["multi_extra"]),
    }


def _class_context(public: Spec, spec: Spec, variants: list[Variant], globals_) -> dict:
    captured = {k: h.captured for k, h in spec.hyperparameters.items() if h.captured}
    device_states = states_on_device(variants)
    return {
        "docstring": class_docstring(public, bool(globals_)),
        "ctor_args": ctor_args(spec),
        "ctor_keys": [k for k, h in spec.hyperparameters.items() if h.captured is None]
        + [o.public for o in spec.options.values()],
        "validation": validation(spec, public),
        "fused_refusal": fused_refusal(public),
        "captured": [f'param_group.setdefault("{k}", param_group["{src}"])' for k, src in captured.items()],
        "captured_setstate": [f'group.setdefault("{k}", group["{src}"])' for k, src in captured.items()],
        "init_uses_grad": any(GRAD in {x.name for x in s.init.free_symbols} for s in cross.per_tensor_states(spec)),
        "state_init": [state_init(spec, s, device_states) for s in cross.per_tensor_states(spec)],
        "scalar_state_restore": scalar_state_restore(spec, device_states),
        "restore_reads_param": any("p.dtype" in line for line in scalar_state_restore(spec, device_states)),
        "uses_state_dtype": any(s.scope == "element" for s in spec.state.values()),
        "splits_large": any(elementwise(v.prepared.program) for v in variants),
        "unpack": unpack(spec),
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


# --------------------------------------------------------------------------- the functional API
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
    (a spec that reduces over axes or multiplies matrices refuses sharded tensors instead)."""
    if any(whole_tensors_only(v.prepared.program) for v in variants):
        return False
    return any(v.prepared.program.reductions("tensor") for v in variants)


def _per_tensor_keywords(variants: list[Variant]) -> list[str]:
    return (["numels"] if _uses_numel(variants) else []) + (["shard_groups"] if _shard_reductions(variants) else [])


def _whole_tensors(spec: Spec) -> str:
    """What makes each tensor's update need the whole tensor ("" when a shard can run it)."""
    if matrix_location(spec) is not None:
        return "uses matrix operations, which need whole tensors"
    if shapes.axis_constructs(spec):
        return "reduces over axes or tests ndim(param), which need whole tensors"
    return ""


def _count_source(spec: Spec) -> str:
    """Where a group's step count as a Python number comes from (the count's docstring)."""
    if spec.step_key == "step":
        return "an older optgen state dict"
    package = spec.parity.split(".")[0] if spec.parity else "the reference package's"
    return f"a {package} state dict"
