"""One setting of a spec's options -> the passes of its C++ kernel, as lines of code.

The same phase plan as the Triton kernels (optgen/ir.py): a program with n phases runs
n - 1 reduction passes, each reducing per tensor, then the update pass, the only one that
stores; a global reduction (a gradient norm over all parameters) is its own pass the
caller runs first, over every param group. Each pass is a function over one block of one
tensor, in three parts:

- prologue: per-tensor scalars (host values from the tensor's row of the host table,
  reductions of earlier passes, numel, per-tensor states) and the tensor-scope values
  computed from them;
- loop: `#pragma omp simd` over the block's elements: load each array once, compute in
  `real` (float; double for float64 params), accumulate this pass's reductions, store;
- epilogue: the block's partial reductions, and a per-tensor state (by the tensor's first
  block).

Unlike the Triton module, which merges every setting into one kernel under constexpr
guards, each setting (and dtype combination) is its own small C++ source, compiled lazily
the first time a setting runs: a setting nobody uses is never compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import CompileError
from ...expr import GRAD, NDIM, NUMEL, PARAM, STEP
from ...ir import Program, Value
from ...lower import lower
from ...spec import Spec
from .. import fused_axes
from ..fused_groups import host_inputs
from ..triton.host import HostScope, HostTable
from .config import CPP_KEYWORDS, KERNEL_LOCALS
from .printer import CppPrinter, HostPrinter

IDENTITY = {"sum": "0", "min": "INFINITY", "max": "-INFINITY"}
_SIMD_OP = {"sum": "+", "min": "min", "max": "max"}


class CppHostTable(HostTable):
    """The Triton backend's host table, printing each host value as C++ double arithmetic."""

    def define(self, meaning, preferred: str, expr, scope: HostScope) -> str:
        known = meaning in self.by_meaning
        name = super().define(meaning, preferred, expr, scope)
        if not known:
            _, reads = self.lines[name]
            printed = HostPrinter(scope.printable).doprint(expr.xreplace(scope.constants))
            self.lines[name] = (printed, reads)
        return name


@dataclass
class RowLoop:
    """A pass that loops over a block row by row, then over the row's elements (cpp/axes.py):
    `head` runs once per row, `tail` after the row; the inner loop runs the pass's `loop` then
    `alone` (one thread: plain stores into axis slots) or, when `shared` is not empty, `shared`
    on several threads (atomic stores; that loop runs without `#pragma omp simd`)."""

    head: list[str]
    alone: list[str]
    shared: list[str]
    tail: list[str]


@dataclass
class Pass:
    """One pass over every block: `role` is "global_sums", "reduce_<k>" or "update"."""

    role: str
    doc: str
    prologue: list[str]
    loop: list[str]
    epilogue: list[str]
    simd: str  # the `#pragma omp simd` clause list (reductions)
    arrays: list[str]  # arrays this pass touches (pointer declarations)
    slots: list[tuple[int, str]] = field(default_factory=list)  # (reduction slot, op) it fills
    rows: RowLoop | None = None  # loop row by row (passes of shaped tensors, cpp/axes.py)
    axis_fills: list[tuple[int, str]] = field(default_factory=list)  # (axis slot, identity) set first


@dataclass
class Kernel:
    """Everything the template prints for one setting of one spec."""

    spec: Spec
    options: dict[str, bool]
    program: Program
    arrays: list[str]  # param, grad, element states
    tensor_states: list[str]
    hypers: list[str]  # the order of the `hyper` array
    host_names: list[str]  # the columns of a tensor's host row
    host_lines: list[tuple[str, str]]  # (name, C++ double expression), in definition order
    reductions: list[Value]  # per-tensor reductions, in slot order
    global_sums: list[Value]
    passes: list[Pass] = field(default_factory=list)
    # axis reductions and reduced states (optgen/backends/fused_axes.py, cpp/axes.py): the
    # rank class this kernel runs for (None: every rank), its slot vectors (name, tag,
    # sum/min/max/store) and its reduced-state arrays (name -> tag)
    ranks: frozenset | None = None
    axis_slots: list[tuple[str, str, str]] = field(default_factory=list)
    reduced_arrays: dict[str, str] = field(default_factory=dict)

    @property
    def reduce_passes(self) -> list[Pass]:
        return [p for p in self.passes if p.role.startswith("reduce")]

    @property
    def update(self) -> Pass:
        return next(p for p in self.passes if p.role == "update")

    @property
    def global_pass(self) -> Pass | None:
        return next((p for p in self.passes if p.role == "global_sums"), None)

    @property
    def partial_width(self) -> int:
        """Doubles of partial reductions per block (shared by the global pass)."""
        return max(len(self.reductions), len(self.global_sums), 1)


def build(spec: Spec, options: dict[str, bool], ranks: frozenset | None = None) -> Kernel:
    """The kernel of one setting; `ranks`: the rank class it runs for, when the spec has
    rank rules (fused_axes.rank_classes)."""
    from . import axes as cpp_axes  # (it builds on PassBuilder below)

    if spec.gradient_at is not None:
        raise CompileError(
            spec.loc,
            f"{spec.name} takes its gradient at a shifted point (a paper form for proofs): it has no C++ kernel",
        )
    program = lower(spec, options)
    axes = fused_axes.uses_axes(program)
    if axes:
        program = fused_axes.prepare(program, ranks)
    taken = {v.name for v in program.values if v.scope != "host"} | set(KERNEL_LOCALS) | set(program.input_scopes)
    host = CppHostTable(spec, taken)
    scope = host.scope(program)
    states = {s.name: s for s in program.states}
    kernel = Kernel(
        spec=spec,
        options=dict(program.options),
        program=program,
        arrays=[
            PARAM,
            GRAD,
            *spec.inputs,  # read like grad, never stored
            *[s for s in spec.state if s in states and states[s].scope == "element"],
        ],
        tensor_states=[s for s in spec.state if s in states and states[s].scope == "tensor"],
        hypers=host_inputs(spec),  # the scalar hyperparameters, then the group states
        host_names=[],
        host_lines=[],
        reductions=program.reductions("tensor"),
        global_sums=program.reductions("global"),
        ranks=ranks,
    )
    _check_names(kernel)
    if axes:
        kernel.reduced_arrays = cpp_axes.reduced_states(program)
        kernel.axis_slots = cpp_axes.slots_of(program, kernel.reduced_arrays)
    builder = (cpp_axes.AxisPassBuilder if axes else PassBuilder)(kernel, scope)
    if kernel.global_sums:
        kernel.passes.append(builder.build("global_sums", [g.name for g in kernel.global_sums], stores=False))
    last = program.num_phases - 1
    for k in range(last):
        targets = [r.name for r in program.reductions() if r.over != "global" and r.phase == k]
        kernel.passes.append(builder.build(f"reduce_{k + 1}", targets, stores=False))
    kernel.passes.append(builder.build("update", list(program.outputs.values()), stores=True))
    kernel.host_names = [h for h in kernel.hypers if h in host.kernel_hypers] + host.scalars + host.columns
    kernel.host_lines = host.needed_lines(host.scalars + host.columns)
    return kernel


def _check_names(kernel: Kernel) -> None:
    program = kernel.program
    ours = (
        set(KERNEL_LOCALS)
        | set(CPP_KEYWORDS)
        | {f"{a}_{x}" for a in kernel.arrays + kernel.tensor_states for x in ("ptr", "t")}
    )
    theirs = (set(kernel.spec.symbols) | {v.name for v in program.values}) - {NUMEL, NDIM, STEP}
    clash = sorted(ours & theirs)
    if clash:
        raise CompileError(
            kernel.spec.locations.get(clash[0], kernel.spec.loc),
            f"the C++ kernels use the name(s) {', '.join(clash)} for themselves; rename them in the spec",
        )


class PassBuilder:
    def __init__(self, kernel: Kernel, host: HostScope):
        self.kernel = kernel
        self.program = kernel.program
        self.host = host
        self.lifted = {
            v.name: host.lift(v.expr) for v in self.program.values if v.scope != "host" and not v.is_reduction
        }

    def build(self, role: str, targets: list[str], stores: bool) -> Pass:
        need = self.kernel.program.pass_closure(targets)
        values = [v for v in self.program.values if v.name in need and v.scope != "host"]
        loaded = [v for v in values if v.is_reduction and v.name not in targets]
        computed = [v for v in values if v not in loaded]
        scalar = [v for v in computed if v.scope in ("tensor", "global") and not v.is_reduction]
        element = [v for v in computed if v not in scalar]
        outputs = self.program.outputs if stores else {}
        element_outputs = {s: v for s, v in outputs.items() if s not in self.kernel.tensor_states}
        tensor_outputs = {s: v for s, v in outputs.items() if s in self.kernel.tensor_states}
        reads = {s for v in computed for s in self._reads(v)} | set(outputs.values())
        loop_reads = {s for v in element for s in self._reads(v)} | set(element_outputs.values())

        prologue = self._scalar_loads(reads, loaded)
        prologue += [f"const real {v.name} = {self._print(v)};" for v in scalar]
        arrays = [a for a in self.kernel.arrays if a in loop_reads or a in element_outputs]
        loop = []
        for a in arrays:
            if a in loop_reads:
                sign = "_sign * " if a == GRAD else ""
                loop.append(f"const real {a} = {sign}to_real({a}_ptr[_i]);")
        simd, epilogue, slots = [], [], []
        sums = [g.name for g in self.kernel.global_sums]
        slot_names = [r.name for r in self.kernel.reductions]
        for v in element:
            if v.is_reduction:
                arg = v.expr.name
                if v.reduce == "sum":
                    loop.append(f"{v.name} += {arg};")
                else:
                    loop.append(f"{v.name} = std::{v.reduce}({v.name}, {arg});")
                prologue.append(f"real {v.name} = real({IDENTITY[v.reduce]});")
                simd.append(f"reduction({_SIMD_OP[v.reduce]} : {v.name})")
                slot = sums.index(v.name) if v.over == "global" else slot_names.index(v.name)
                epilogue.append(f"_partial[{slot}] = {v.name};")
                slots.append((slot, v.reduce))
            else:
                loop.append(f"const real {v.name} = {self._print(v)};")
        for state, value in element_outputs.items():
            loop.append(f"{state}_ptr[_i] = from_real<{state}_t>({value});")
        for state, value in tensor_outputs.items():
            epilogue.append(
                f"if (_first) static_cast<{state}_t*>(_c.tensor_states[{self._ts(state)} * _c.num_tensors + _t])[0] = "
                f"from_real<{state}_t>({value});"
            )
        return Pass(role, _doc(role, targets, outputs), prologue, loop, epilogue, " ".join(simd), arrays, slots)

    def _ts(self, state: str) -> int:
        return self.kernel.tensor_states.index(state)

    def _reads(self, v: Value) -> set[str]:
        expr = v.expr if v.is_reduction else self.lifted[v.name]
        return {s.name for s in expr.free_symbols}

    def _print(self, v: Value) -> str:
        return CppPrinter().doprint(self.lifted[v.name])

    def _scalar_loads(self, reads: set[str], loaded: list[Value]) -> list[str]:
        out = []
        table = self.host.table
        host_names = [h for h in self.kernel.hypers if h in table.kernel_hypers] + table.scalars + table.columns
        # host_names is final only after every pass is lifted (in __init__): indices are stable
        for name in host_names:
            if name in reads:
                out.append(f"const real {name} = real(_host[{host_names.index(name)}]);")
        sums = [g.name for g in self.kernel.global_sums]
        slots = [r.name for r in self.kernel.reductions]
        for v in loaded:
            if v.over == "global":
                out.append(f"const real {v.name} = real(_c.global_values[{sums.index(v.name)}]);")
            else:
                out.append(f"const real {v.name} = real(_c.reductions[_t * NUM_REDUCTIONS + {slots.index(v.name)}]);")
        if NUMEL in reads:
            out.append("const real numel = real(_c.numels[_t]);")
        if NDIM in reads:
            out.append("const real ndim = real(_c.ndims[_t]);")
        for s in self.kernel.tensor_states:
            if s in reads:
                out.append(f"const real {s} = real(_c.before[{self._ts(s)} * _c.num_tensors + _t]);")
        return out


def _doc(role: str, targets: list[str], outputs: dict[str, str]) -> str:
    if role == "global_sums":
        return f"Global reductions: this block's share of {', '.join(targets)} (summed over every group)."
    if role == "update":
        return f"The update: reads each element once, computes in `real`, writes {', '.join(outputs)}."
    return f"Reduction pass {role.split('_')[1]}: this block's partial {', '.join(targets)}; nothing is stored."
