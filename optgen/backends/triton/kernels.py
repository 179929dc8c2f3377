"""Spec -> the kernels of its Triton module, as lines of code.

Every setting of the options (and of `maximize`) is lowered to its own IR program, whose
passes become straight-line kernel statements: loads, fp32 arithmetic, block reductions,
stores. Then the settings are merged statement by statement into one kernel per pass; a
statement only some settings run sits under a `tl.constexpr` guard (`if AMSGRAD:`).
Filtering a merged kernel by one setting gives back exactly that setting's statements, in
order, so the merge cannot change what any setting computes.

Passes (see optgen/ir.py): a program with n phases runs n - 1 reduction passes, each ending
in per-tensor block reductions accumulated with atomics, then the update pass, the only
one that stores. Global reductions (a gradient norm over all parameters) are a separate
kernel the caller runs first, for all param groups.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import CompileError
from ...expr import GRAD, NDIM, NUMEL, PARAM
from ...ir import Program, Value
from ...lower import lower
from ...shapes import format_axes
from ...spec import Spec
from .. import fused_axes
from ..torch.names import identifiers
from .host import HostScope, HostTable
from .merge import Guarded, merge
from .printer import TritonPrinter

MAXIMIZE = "maximize"
_IDENTITY = {"sum": "0.0", "min": 'float("inf")', "max": '-float("inf")'}
_ATOMIC = {"sum": "atomic_add", "min": "atomic_min", "max": "atomic_max"}


@dataclass
class Statement:
    """One kernel line. `defines` and `reads` are SSA names (for renaming); `render` prints
    the line given the identifier chosen for each SSA name."""

    render: Callable[[dict[str, str]], str]
    defines: str | None = None
    var: str = ""
    reads: frozenset = frozenset()


def _line(text: str, defines: str | None = None, reads=()) -> Statement:
    return Statement(lambda names: text, defines, defines or "", frozenset(reads))


@dataclass
class Setting:
    """One setting of the options: its program and where its reductions live."""

    options: dict[str, bool]
    program: Program
    host: HostScope
    reductions: list[Value]  # per-tensor reductions, in slot order
    global_sums: list[Value]
    # axis reductions and reduced states (fused_axes.py, triton/axes.py): slot vectors
    # (name, tag, sum/min/max/store) and reduced states (name -> tag)
    axis_slots: list[tuple[str, str, str]] = field(default_factory=list)
    reduced: dict[str, str] = field(default_factory=dict)

    @property
    def options_key(self) -> tuple[bool, ...]:
        return tuple(self.options.values())

    @property
    def reduction_passes(self) -> list[list[str]]:
        return [[r.reduce for r in self.reductions if r.phase == k] for k in range(self.program.num_phases - 1)]


class PassBuilder:
    """The statements of one pass of one setting."""

    def __init__(self, setting: Setting, arrays: list[str], tensor_states: list[str], maximize: bool):
        self.setting = setting
        self.program = setting.program
        self.by_name = setting.program.by_name
        self.arrays = arrays
        self.tensor_states = tensor_states
        self.maximize = maximize
        self.blocks = {PARAM, GRAD, *self.program.input_names}
        self.blocks |= {s.name for s in self.program.states if s.scope == "element"}
        self.blocks |= {v.name for v in self.program.values if v.scope == "element"}
        self.lifted = {
            v.name: setting.host.lift(v.expr) for v in self.program.values if v.scope != "host" and not v.is_reduction
        }

    def build(self, targets: list[str], stores: bool) -> list[Statement]:
        need = self.program.pass_closure(targets)
        values = [v for v in self.program.values if v.name in need and v.scope != "host"]
        loaded = [v for v in values if v.is_reduction and v.name not in targets]
        computed = [v for v in values if v not in loaded]
        outputs = self.program.writes if stores else {}
        reads = {s for v in computed for s in self._reads(v)} | set(outputs.values())
        body = self._scalar_loads(computed, loaded)
        body += self._input_loads(reads, set(outputs))
        body += [self._reduce(v) if v.is_reduction else self._compute(v) for v in computed]
        body += [self._store(state, value) for state, value in outputs.items()]
        return body

    def _reads(self, v: Value) -> set[str]:
        expr = v.expr if v.is_reduction else self.lifted[v.name]
        return {s.name for s in expr.free_symbols}

    def _scalar_loads(self, computed: list[Value], loaded: list[Value]) -> list[Statement]:
        table = self.setting.host.table
        used = {s for v in computed for s in self._reads(v)}
        out = []
        columns = [c for c in table.columns if c in used]
        if columns:
            out.append(Statement(lambda names: "step_row = step_scalars + tensor" + _times(len(table.columns))))
        out += [_line(f"{c} = tl.load(step_row + {table.columns.index(c)})", c) for c in columns]
        sums = [g.name for g in self.setting.global_sums]
        out += [
            _line(f"{v.name} = tl.load(global_values + {sums.index(v.name)})", v.name)
            for v in loaded
            if v.over == "global"
        ]
        per_tensor = [v for v in loaded if v.over == "tensor"]
        if per_tensor or any(v.is_reduction and v.over == "tensor" for v in computed):
            out.append(_line("tensor_reductions = reductions + tensor * NUM_REDUCTIONS"))
        slots = [r.name for r in self.setting.reductions]
        out += [_line(f"{v.name} = tl.load(tensor_reductions + {slots.index(v.name)})", v.name) for v in per_tensor]
        return out

    def _input_loads(self, reads: set[str], stored: set[str]) -> list[Statement]:
        out = []
        if NDIM in reads:
            out.append(_line("ndim = tl.load(ndims + tensor)", NDIM))
        if NUMEL in reads:  # the whole tensor's numel: a shard's (masking the blocks) is less
            out.append(_line("numel = tl.load(whole_numels + tensor).to(tl.float32)", NUMEL))
        out += [
            _line(f"{s} = tl.load({s}_before + tensor).to(tl.float32)", s) for s in self.tensor_states if s in reads
        ]
        for a in self.arrays:
            if a in reads or a in stored:
                out.append(
                    _line(f"{a}_ptrs = {a}_ptr + tl.multiple_of(tl.load({a}_offsets + tensor), ALIGN) + offsets")
                )
            if a in reads:
                out.append(_line(f"{a} = tl.load({a}_ptrs, mask=mask).to(tl.float32)", a))
            if a == GRAD and a in reads and self.maximize:
                out.append(Statement(lambda names: "grad = -grad", GRAD, GRAD, frozenset({GRAD})))
        return out

    def _compute(self, v: Value) -> Statement:
        expr = self.lifted[v.name]

        def render(names: dict[str, str]) -> str:
            return f"{names.get(v.name, v.name)} = {TritonPrinter(names, self.blocks).doprint(expr)}"

        return Statement(render, v.name, v.var, frozenset(s.name for s in expr.free_symbols))

    def _reduce(self, v: Value) -> Statement:
        arg = v.expr.name
        if v.over == "global":
            where = f"global_values + {[g.name for g in self.setting.global_sums].index(v.name)}"
        else:
            where = f"tensor_reductions + {[r.name for r in self.setting.reductions].index(v.name)}"

        def render(names: dict[str, str]) -> str:
            block = f"tl.{v.reduce}(tl.where(mask, {names.get(arg, arg)}, {_IDENTITY[v.reduce]}), axis=0)"
            return f'tl.{_ATOMIC[v.reduce]}({where}, {block}, sem="relaxed")'

        return Statement(render, None, "", frozenset({arg}))

    def _store(self, state: str, value: str) -> Statement:
        scope = self.by_name[value].scope

        def render(names: dict[str, str]) -> str:
            new = names.get(value, value)
            if state in self.tensor_states:
                ptr = f"{state}_ptr + tl.load({state}_offsets + tensor)"
                return f"tl.store({ptr}, {new}.to({state}_ptr.dtype.element_ty), mask=block == 0)"
            if scope != "element":
                new = f"(tl.zeros([BLOCK_SIZE], tl.float32) + {new})"
            return f"tl.store({state}_ptrs, {new}.to({state}_ptr.dtype.element_ty), mask=mask)"

        return Statement(render, None, "", frozenset({value}))


def rename(statements: list[Statement]) -> dict[str, str]:
    """SSA name -> identifier. A new version of a spec variable takes the variable's own name
    (`grad = grad + weight_decay * param`) unless a version it hides is read later."""
    printed: dict[str, str] = {}
    visible: dict[str, list[str]] = {}  # identifier -> SSA names printed as it, in order
    for i, st in enumerate(statements):
        if not st.defines:
            continue
        name = st.defines
        if st.var and st.var != name:
            hidden = set(visible.get(st.var, []))
            later = set().union(*(s.reads for s in statements[i + 1 :]))
            if not hidden & later:
                printed[name] = st.var
        visible.setdefault(printed.get(name, name), []).append(name)
    return printed


# --------------------------------------------------------------------------- the module model
@dataclass
class Kernel:
    name: str
    role: str  # "global", "reduce", "update"
    doc: list[str]
    body: list[str]  # lines, indented relative to the kernel body


@dataclass
class Module:
    """What the template prints for one spec."""

    spec: Spec
    option_names: list[str]
    arrays: list[str]  # param, grad, element states: base pointer + offsets each
    tensor_states: list[str]
    uses_ndim: bool
    uses_numel: bool
    host: HostTable
    settings: list[Setting]
    kernels: list[Kernel] = field(default_factory=list)
    constexprs: list[str] = field(default_factory=list)
    has_reductions: bool = False
    has_global: bool = False
    uses_sign: bool = False
    public: dict[str, str] = field(default_factory=dict)  # identifier -> the key callers use, where they differ
    # rank rules (fused_axes.py): a constexpr flag per rank class, set by the runtime for the
    # tensors of that class; and whether any setting reduces over axes or reads rows/cols
    rank_flags: list[str] = field(default_factory=list)
    rank_classes: list[frozenset] = field(default_factory=list)
    has_axes: bool = False
    has_views: bool = False  # some setting views its tensors as other rows and cols (fused_axes.py)

    @property
    def flag_names(self) -> list[str]:
        """The options, then the rank-class flags: what a setting's key is made of."""
        return self.option_names + self.rank_flags

    def key(self, name: str) -> str:
        """The name the runtime and the torch class pass `name` by (hyper, states, options
        and global_values keys): the spec's, whatever identifier the module gives it."""
        return self.public.get(name, name)

    @property
    def scalar_args(self) -> list[str]:
        """Hyperparameters the kernels read as they are, then those computed from them."""
        return [h for h in self.host.hypers if h in self.host.kernel_hypers] + self.host.scalars


def build(spec: Spec, reserved: frozenset[str] = frozenset(), public: dict[str, str] | None = None) -> Module:
    """The module for `spec`, whose names are already free of `reserved` (the identifiers
    the module uses itself, see names.py); `public` maps renamed names back to their keys."""
    if spec.gradient_at is not None:
        raise CompileError(
            spec.loc,
            f"{spec.name} takes its gradient at a shifted point (a paper form for proofs): it has no Triton kernel",
        )
    combos = spec.option_combinations()
    classes = fused_axes.module_rank_classes(spec, combos)
    flags = [fused_axes.class_stem(c) for c in classes] if classes != [None] else []
    keyed = [
        ({**combo, **{f: c == ranks for f, c in zip(flags, classes)}}, combo, ranks)
        for combo in combos
        for ranks in classes
    ]
    programs = [_program(spec, combo, ranks) for _, combo, ranks in keyed]
    taken = {v.name for p in programs for v in p.values if v.scope != "host"} | set(reserved)
    taken |= {n for p in programs for n in p.input_scopes}
    taken |= {d for n in identifiers(spec) for d in derived(n)}  # host scalars keep off `m_ptr`
    host = HostTable(spec, taken)
    settings = []
    for (options, _, _), program in zip(keyed, programs):
        setting = Setting(
            options, program, host.scope(program), program.reductions("tensor"), program.reductions("global")
        )
        if fused_axes.uses_axes(program):
            setting.reduced = fused_axes.reduced_tags(program)
            setting.axis_slots = fused_axes.slots_of(program, setting.reduced)
        settings.append(setting)
    states = {s.name: s for p in programs for s in p.states}
    element_states = [s for s in spec.state if s in states and states[s].scope == "element"]
    tensor_states = [s for s in spec.state if s in states and states[s].scope == "tensor"]
    module = Module(
        spec=spec,
        option_names=list(spec.options),
        arrays=[PARAM, GRAD, *spec.inputs, *element_states],  # inputs are read like grad, never stored
        tensor_states=tensor_states,
        uses_ndim=any(_reads_input(p, NDIM) for p in programs),
        uses_numel=any(_reads_input(p, NUMEL) for p in programs),
        host=host,
        settings=settings,
        public=dict(public or {}),
        rank_flags=flags,
        rank_classes=[c for c in classes if c is not None],
        has_axes=any(fused_axes.uses_axes(p) for p in programs),
        has_views=any(p.axis_view != (1, 1) for p in programs),
    )
    _check_names(spec, reserved)
    module.kernels = _kernels(module)
    text = "\n".join(line for k in module.kernels for line in k.body)
    module.uses_sign = "_sign(" in text
    module.has_reductions = any(s.reductions or s.program.num_phases > 1 for s in settings)
    module.has_global = any(s.global_sums for s in settings)
    guards = " ".join(line for k in module.kernels for line in k.body if line.lstrip().startswith(("if ", "elif ")))
    module.constexprs = [o for o in module.flag_names if re.search(rf"\b{_flag(o)}\b", guards)]
    return module


def _program(spec: Spec, options: dict[str, bool], ranks: frozenset | None) -> Program:
    """One setting's program; for the tensors of rank class `ranks` where the spec has
    rank rules, its axis reductions values of their own (fused_axes.prepare)."""
    program = lower(spec, options)
    return fused_axes.prepare(program, ranks) if fused_axes.uses_axes(program) else program


def _reads_input(program: Program, name: str) -> bool:
    return any(name in {s.name for s in v.expr.free_symbols} for v in program.values)


def _check_names(spec: Spec, reserved: frozenset[str]) -> None:
    """An internal invariant: the caller renamed every spec name, and every name the module
    makes from one, away from the module's own identifiers."""
    ours = {d for n in identifiers(spec) for d in {n} | derived(n)}
    clash = ours & set(reserved)
    assert not clash, f"spec names the Triton module uses itself: {sorted(clash)}"


def _flag(option: str) -> str:
    return option.upper()


def derived(name: str) -> set[str]:
    """The identifiers the module makes from a spec name: an array's pointer, offsets and
    addresses, a per-tensor state's values before the step, an option's constexpr flag."""
    return {f"{name}_{suffix}" for suffix in ("ptr", "ptrs", "offsets", "before")} | {_flag(name)}


def _kernels(module: Module) -> list[Kernel]:
    """Merge every setting's passes into one kernel per pass."""
    stem = module.spec.module_name
    built: dict[str, list[tuple[tuple, list[Statement]]]] = {}
    flags = module.flag_names + [MAXIMIZE]
    for setting in module.settings:
        for maximize in (False, True):
            if setting.axis_slots or setting.reduced or fused_axes.uses_axes(setting.program):
                from .axes import AxisPassBuilder

                args = (setting.axis_slots, setting.reduced)
                builder = AxisPassBuilder(setting, module.arrays, module.tensor_states, maximize, *args)
            else:
                builder = PassBuilder(setting, module.arrays, module.tensor_states, maximize)
            key = tuple(setting.options[o] for o in module.flag_names) + (maximize,)
            for role, statements in _passes(setting, builder):
                built.setdefault(role, []).append((key, statements))
    # render only now: the step table's width is known once every setting is lifted
    roles = {role: [(key, _render(statements)) for key, statements in runs] for role, runs in built.items()}
    kernels = []
    for role in sorted(roles, key=_role_order):
        merged = merge(roles[role])
        body = Guarded(flags, [_flag(f) for f in flags], {k for k, _ in roles[role]}).lines(merged)
        name = f"{stem}_{role}"
        kernels.append(Kernel(name, role.split("_")[0], _kernel_doc(module, role), body))
    return kernels


def _render(statements: list[Statement]) -> list[str]:
    names = rename(statements)
    return [st.render(names) for st in statements]


def _passes(setting: Setting, builder: PassBuilder):
    program = setting.program
    if setting.global_sums:
        yield "global_sums", builder.build([g.name for g in setting.global_sums], stores=False)
    last = program.num_phases - 1
    for k in range(last):
        targets = [r.name for r in program.reductions() if r.over != "global" and r.phase == k]
        yield f"reduce_{k + 1}", builder.build(targets, stores=False)
    yield "update", builder.build(list(program.writes.values()), stores=True)


def _role_order(role: str):
    return (0, 0) if role == "global_sums" else (2, 0) if role == "update" else (1, int(role.split("_")[1]))


def _kernel_doc(module: Module, role: str) -> list[str]:
    if role == "global_sums":
        sums = _unique(f"{g.name} = sum({g.expr.name})" for s in module.settings for g in s.global_sums)
        return [
            "Reductions over all parameters: each block adds its share of",
            *[f"    {x}" for x in sums],
            "into `global_values` (summed over every group by the caller).",
        ]
    if role == "update":
        stored = _unique(name for s in module.settings for name in s.program.writes)
        text = (
            f"The update pass: reads each element once, computes in float32, and writes {', '.join(stored)} "
            "back in their own dtypes (a per-tensor state by block 0 of its tensor)."
        )
        return textwrap.wrap(text, 88)
    k = int(role.split("_")[1])
    sums = _unique(
        f"{r.name} = {_REDUCE_WORD[r.reduce]}({r.expr.name}{_axes_text(r)})"
        for s in module.settings
        for r in s.program.reductions()
        if r.over != "global" and r.phase == k - 1
    )
    return [
        f"Reduction pass {k}: per tensor,",
        *[f"    {x}" for x in sums],
        "each block reducing its elements and combining with atomics into `reductions`.",
        "Nothing is stored: the update recomputes what it needs from unchanged memory.",
    ]


_REDUCE_WORD = {"sum": "sum", "min": "amin", "max": "amax"}


def _axes_text(r: Value) -> str:
    """`, axis=-1` of an axis reduction (into `axis_values`, see triton/axes.py)."""
    axes = getattr(r, "axes", None)
    return f", axis={format_axes(axes)}" if axes else ""


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def _times(n: int) -> str:
    return f" * {n}" if n > 1 else ""
