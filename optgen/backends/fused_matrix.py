"""The fused path for specs with matrix operations (optgen/matrix.py): elementwise stages as
fused kernels (C++ on CPU, Triton elsewhere), matrix blocks through torch between them.

One setting of a spec's options is lowered once and split into stages at its matrix values:

- stage k is every elementwise or per-tensor value that reads matrix results of blocks run
  after stage k - 1 at most. It is compiled as a spec of its own (`Stage.spec`, the lowered
  values as its update) by the backend's kernel generator, unchanged: what a later stage or
  a block reads is a scratch state it stores (`exports`), and what it reads of earlier stages
  and blocks are extra inputs (`inputs`, per element) or snapshot states (per tensor).
- after stage k, torch runs the matrix blocks that read nothing later (`Stage.blocks`), each
  once per group of same-shaped parameters, stacked: a matmul is one bmm for the group, as
  the foreach path runs them (optgen/backends/torch/matrix_ops.py has the same semantics:
  `beta * M + alpha * P @ Q` is one baddbmm, `sqrt(sum(X**2))` is torch.linalg.vector_norm,
  bfloat16() rounds with .bfloat16() and the block carries on in bfloat16).

A state is stored by the stage that computes its new value (the stage after the block, for
a matrix value); a later stage or block that reads its value from before the step reads a
copy stage 0 exports (`<name>_before`). rows(param) and cols(param) are per-tensor snapshot
states the runner fills (the stage kernels read them as any per-tensor state).
Matrix operations need whole 2-D tensors: DTensor (FSDP2) parameters are refused.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import sympy
import torch
from torch import Tensor

from .. import catalog
from ..expr import COLS, GRAD, NDIM, NUMEL, PARAM, ROWS, STEP, ReduceMax, ReduceMin, ReduceSum, symbol
from ..ir import Program, Value
from ..limits import MAX_REPEAT
from ..matrix import PARAM_SHAPE, BFloat16, MatrixProduct, Transposed, matrix_location
from ..spec import Assign, InputDecl, Spec, StateDecl, TensorIf

_REDUCE = {"sum": ReduceSum, "min": ReduceMin, "max": ReduceMax}
_NOT_2D = "a matrix operation needs a 2-D parameter; got shape"


# --------------------------------------------------------------------------- what runs
def refusal(spec: Spec) -> str:
    """What of a matrix spec the fused path does not run ("" when it runs all of it): axis
    reductions and reduced states no one (outer, rows, cols) view of a tensor gives
    (optgen/shapes.py's fused_refusal, through loops too). Sums over all parameters, group
    states, rank rules and axis reductions run (see `plan`)."""
    from ..shapes import fused_refusal as shapes_refusal

    return shapes_refusal(spec) or ""


def is_matrix_spec(spec: Spec) -> bool:
    return matrix_location(spec) is not None


# --------------------------------------------------------------------------- the plan
@dataclass
class Stage:
    """One fused kernel, then the matrix blocks torch runs after it."""

    spec: Spec
    states: list[str]  # the spec's own states it reads or stores
    exports: dict[str, str]  # scratch it stores: name -> "element" | "tensor"
    inputs: list[str]  # per-element arrays it reads (scratch, block results, copies)
    tensor_reads: list[str]  # per-tensor scratch it reads (never stores)
    blocks: list[Value] = field(default_factory=list)


@dataclass
class Plan:
    program: Program
    stages: list[Stage]
    scratch: dict[str, str]  # every scratch name -> "element" | "tensor"
    results: set[str]  # block results a stage reads (param-shaped, one tensor per param)
    renamed: dict[str, str]  # a raw input read after its store -> the copy that is read
    stored: dict[str, int]  # output -> the stage that stores it
    has_matmul: bool
    # the sums over all parameters: the optimizer computes them before the step (as for any
    # fused step); the stages and blocks read each as a per-tensor value the runner fills
    sums: list[str] = field(default_factory=list)
    # scratch of a value reduced over axes (keepdim: size 1 along them), as a reduced state
    scratch_axes: dict[str, frozenset] = field(default_factory=dict)


def plan(spec: Spec, options: dict[str, bool], ranks: frozenset | None = None) -> Plan:
    """The stages of one option setting, for the tensors of one rank class (`ranks`, of
    optgen/backends/fused_axes.spec_rank_classes; None: a spec without rank rules)."""
    from ..lower import lower

    program = lower(spec, options)
    if ranks is not None:
        program = _for_ranks(program, min(ranks))
    by_name = program.by_name
    taken = set(spec.symbols) | set(by_name) | set(program.input_scopes)
    fresh = _Fresh(taken)
    sizes = {ROWS: fresh(f"param_{ROWS}"), COLS: fresh(f"param_{COLS}")}
    stage_of = _stages(program)
    count = 1 + max((stage_of[v.name] for v in program.values if _in_stages(v)), default=0)
    # where each output is stored: the stage computing it (after its block, for a matrix value)
    stored = {}
    for out, name in program.writes.items():
        stored[out] = stage_of[name] + (1 if by_name[name].matrix is not None else 0)
    # a raw state (or param) read after it was stored reads stage 0's copy
    count = max(count, 1 + max(stored.values(), default=0))  # a block's result only stored: one more stage
    renamed = {}
    readers = [(2 * stage_of[v.name] + (1 if v.matrix is not None else 0), v) for v in program.values]
    for time, v in readers:
        if v.scope in ("host", "global"):
            continue
        for s in v.expr.free_symbols:
            if s.name in stored and time > 2 * stored[s.name]:
                renamed.setdefault(s.name, fresh(f"{s.name}_before"))
    stages = [
        _Builder(program, spec, k, stage_of, stored, renamed, sizes, options, ranks).build() for k in range(count)
    ]
    for v in program.values:
        if v.matrix is not None:
            stages[stage_of[v.name]].blocks.append(v)
    scratch = {n: scope for st in stages for n, scope in st.exports.items()}
    results = {n for st in stages for n in st.inputs if n in by_name and by_name[n].matrix is not None}
    has_matmul = any(v.matrix.has_matmul for v in program.values if v.matrix is not None)
    sums = [v.name for v in program.values if v.scope == "global" and v.is_reduction]
    axes = {n: _axes(by_name[n]) for n in scratch if n in by_name and _axes(by_name[n])}
    return Plan(program, stages, scratch, results, {**renamed, **sizes}, stored, has_matmul, sums, axes)


def _axes(v: Value) -> frozenset:
    """The axes a value is reduced over (a row statistic: -1), as a reduced state's."""
    return frozenset(v.shape.axes or ()) if v.shape is not None else frozenset()


def _for_ranks(program: Program, rank: int) -> Program:
    """`program` for tensors of rank `rank` (and of the ranks its rules treat alike): the
    values of the other side of each `if ndim(param) ...:` and the states that do not exist
    for them left out, ndim(param) a number (so a join picks its side)."""

    def kept(v: Value) -> bool:
        return v.guard is None or rank in v.guard

    states = [s for s in program.states if s.ranks is None or rank in s.ranks]
    gone = {s.name for s in program.states} - {s.name for s in states}
    values = []
    for v in program.values:
        if kept(v) and v.var not in gone:
            ndim = {s: sympy.Integer(rank) for s in v.expr.free_symbols if s.name == NDIM}
            values.append(replace(v, expr=v.expr.xreplace(ndim), guard=None))
    outputs = {out: name for out, name in program.outputs.items() if out == PARAM or out in {s.name for s in states}}
    return replace(program, values=values, states=states, outputs=outputs)


def _in_stages(v: Value) -> bool:
    """Whether a stage kernel computes `v` in its passes: not a host value or a value of the
    sums over all parameters (the prologue of every stage that reads it), a sum over all
    parameters (the optimizer's, before the step) or a matrix value (a block)."""
    return v.scope not in ("host", "global") and v.matrix is None


def _prologue(v: Value) -> bool:
    """A host value, or one computed from sums over all parameters (and host values)."""
    return v.scope == "host" or (v.scope == "global" and not v.is_reduction)


def stage_specs(spec: Spec, every_setting: bool = False) -> list[Spec]:
    """The specs of a matrix spec's stages: of its default options (what `optgen build`
    writes, for reading), or of every setting (what `optgen check` renders); of each rank
    class where the spec has rank rules."""
    from .fused_axes import spec_rank_classes

    settings = spec.option_combinations() if every_setting else [spec.default_options()]
    return [
        stage.spec
        for options in settings
        for ranks in spec_rank_classes(spec, options)
        for stage in plan(spec, options, ranks).stages
    ]


class _Fresh:
    def __init__(self, taken: set[str]):
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _stages(program: Program) -> dict[str, int]:
    """Each value's stage: a block runs after the stage of what it reads; a value that reads a
    block's result is in the next stage."""
    by_name = program.by_name
    out: dict[str, int] = {}
    for v in program.values:
        k = 0
        for s in v.expr.free_symbols:
            d = by_name.get(s.name)
            if d is None or d.scope in ("host", "global"):  # ready before the step
                continue
            k = max(k, out[d.name] + (1 if d.matrix is not None and v.matrix is None else 0))
        out[v.name] = k
    return out


class _Builder:
    """The spec of stage k: its values as assignments, with scratch states and inputs."""

    def __init__(self, program, spec, k, stage_of, stored, renamed, sizes, options, ranks):
        self.program, self.spec, self.k, self.ranks = program, spec, k, ranks
        self.stage_of, self.stored, self.renamed, self.sizes = stage_of, stored, renamed, sizes
        self.options = options
        self.by_name = program.by_name

    def build(self) -> Stage:
        program, k = self.program, self.k
        mine = [v for v in program.values if _in_stages(v) and self.stage_of[v.name] == k]
        later = [
            v
            for v in program.values
            if v.scope not in ("host", "global")
            and (self.stage_of[v.name] > k or (v.matrix is not None and self.stage_of[v.name] == k))
        ]
        later_reads = {s.name for v in later for s in v.expr.free_symbols}
        exports = {v.name: v.scope for v in mine if v.name in later_reads}
        if k == 0:  # copies of the raw inputs that later stages and blocks read after their store
            exports.update({copy: "element" for copy in self.renamed.values()})
        stores = {out: name for out, name in program.writes.items() if self.stored[out] == k}
        body, reads = self._body(mine, stores)
        inputs, tensor_reads, states = [], [], []
        for name in sorted(reads):
            v = self.by_name.get(name)
            if v is not None and (_in_stages(v) or v.matrix is not None):
                if v.matrix is not None or self.stage_of[name] < k:  # a reduced one: a state
                    (inputs if v.scope == "element" and not _axes(v) else tensor_reads).append(name)
            elif (name in self.renamed.values() and k > 0) or name in self.spec.inputs:
                inputs.append(name)
            elif name in self.sizes.values() or (v is not None and v.scope == "global" and v.is_reduction):
                tensor_reads.append(name)
        states = [s.name for s in program.states if s.name in reads or s.name in stores]
        return Stage(self._spec(body, states, exports, inputs, tensor_reads), states, exports, inputs, tensor_reads)

    def _body(self, mine: list[Value], stores: dict[str, str]) -> tuple[list[Assign], set[str]]:
        loc = self.spec.loc
        host = self._host_needed(mine)
        body = [Assign(v.name, v.expr, loc, loc) for v in host]
        if self.k == 0:  # copies first: before this stage assigns what they copy
            body += [Assign(copy, symbol(raw), loc, loc) for raw, copy in self.renamed.items()]
        subs = {n: c for n, c in self.renamed.items() if self.stored[n] < self.k}
        subs.update(self.sizes)
        for v in mine:
            expr = _REDUCE[v.reduce](v.expr) if v.reduce and v.over == "tensor" else v.expr
            # by name: rows(param) is an integer symbol, the scratch that replaces it a real one
            expr = expr.xreplace({s: symbol(subs[s.name]) for s in expr.free_symbols if s.name in subs})
            body.append(Assign(v.name, expr, loc, loc))
        for out, name in stores.items():
            body.append(Assign(out, symbol(name), loc, loc))
        if PARAM not in stores:  # a spec assigns param: here to itself (stored unchanged)
            body.append(Assign(PARAM, symbol(PARAM), loc, loc))
        reads = {s.name for a in body for s in a.expr.free_symbols} | set(stores)
        return body, reads

    def _host_needed(self, mine: list[Value]) -> list[Value]:
        need = {s.name for v in mine for s in v.expr.free_symbols}
        host = [v for v in self.program.values if _prologue(v)]
        for v in reversed(host):
            if v.name in need:
                need |= {s.name for s in v.expr.free_symbols}
        return [v for v in host if v.name in need]

    def _spec(self, body, states, exports, inputs, tensor_reads) -> Spec:
        spec, loc = self.spec, self.spec.loc
        decls = {s: replace(spec.state[s], when=None, ranks=None) for s in states}
        # a group state the stage reads: a host scalar of the kernel, as on the fused path
        # without matrices (its new value is the optimizer's, after the step)
        read = {s.name for a in body for s in a.expr.free_symbols}
        decls.update({n: replace(d, when=None) for n, d in spec.state.items() if d.scope == "group" and n in read})
        for name in [*exports, *tensor_reads]:
            v = self.by_name.get(name)
            axes = _axes(v) if v is not None else frozenset()
            scope = "element" if axes else exports.get(name) or "tensor"
            decls[name] = StateDecl(name, sympy.Integer(0), scope, loc, name, axes=axes)
        names = {a.target for a in body} | set(decls) | set(inputs)
        text = "\n".join(
            [f"stage {self.k} of {spec.module_name}, options {sorted(self.options.items())}"]
            + [f"{a.target} = {a.expr}" for a in body]
            + [f"state {n}: {d.scope}" for n, d in decls.items()]
            + [f"input {n}" for n in inputs]
        )
        return replace(
            spec,
            name=f"{spec.name}_{self.k}",
            catalog_name=spec.module_name,  # generated code names the spec it came from
            summary=f"{spec.summary} Stage {self.k} of the fused path (optgen/backends/fused_matrix.py).",
            options={},
            state=decls,
            update=self._for_ranks(body),
            inputs={n: InputDecl(n, loc) for n in inputs},
            symbols={**spec.symbols, **{n: symbol(n) for n in names}},
            source_texts=[*spec.source_texts, text],
            claims=[],
            modes=None,
        )

    def _for_ranks(self, body: list[Assign]) -> list:
        """The body, under `if <the rank class>:` for a class of a spec with rank rules (an
        axis reduction there needs the ranks it runs for)."""
        from ..shapes import ALL_RANKS, guard_condition

        if self.ranks is None or self.ranks == ALL_RANKS:
            return body
        return [TensorIf(guard_condition(self.ranks), body, [], self.spec.loc)]


# --------------------------------------------------------------------------- running
_MATRIX_KEYS: dict[str, Spec] = {}  # keys from register() of matrix specs
_CATALOG: dict[str, Spec | None] = {}  # catalog key -> its spec when it is a matrix spec
_PLANS: dict[tuple, tuple[Plan, list[str]]] = {}
_CLASSES: dict[tuple, list] = {}  # (spec key, options) -> its rank classes


def register(spec: Spec) -> str:
    key = f"{spec.module_name}#matrix{len(_MATRIX_KEYS)}"
    _MATRIX_KEYS[key] = spec
    return key


def matrix_spec(spec_key: str) -> Spec | None:
    """The spec of a key when it is a matrix spec (registered here, or a catalog one)."""
    if spec_key in _MATRIX_KEYS:
        return _MATRIX_KEYS[spec_key]
    if spec_key not in _CATALOG:
        path = catalog.path_of(spec_key) if "@" not in spec_key else None
        found = None
        if path is not None:
            from ..parse import load_path

            spec = load_path(path)
            found = spec if is_matrix_spec(spec) else None
        _CATALOG[spec_key] = found
    return _CATALOG[spec_key]


def fused_step(
    backend,
    spec: Spec,
    spec_key: str,
    *,
    params: list[Tensor],
    grads: list[Tensor],
    states: dict[str, list[Tensor]],
    steps: list[int],
    hyper: dict[str, float],
    options: dict[str, bool],
    global_values: dict[str, Tensor],
    maximize: bool,
    inputs: dict[str, list[Tensor]] | None = None,
) -> None:
    """One step of a matrix spec: each stage's kernel through `backend` (the C++ or Triton
    runtime module: its fused_step and register), the blocks in torch between them."""
    if not params:
        return
    from .fused_shards import Shards

    if Shards.of(params) is not None:
        raise ValueError(
            f"{spec.name} uses matrix operations, which need whole tensors: sharded (DTensor) parameters are not supported"
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"{spec.name} has no option(s) {', '.join(unknown)}")
    options = {n: bool(options.get(n, o.default)) for n, o in spec.options.items()}
    from .fused_axes import rank_split, spec_rank_classes

    classes = _CLASSES.get((spec_key, *options.items()))
    if classes is None:
        classes = _CLASSES[(spec_key, *options.items())] = spec_rank_classes(spec, options)
    given = {**states, **(inputs or {})}
    split = list(rank_split(classes, params, grads, given, steps))
    for ranks, (members, *_) in split:  # every class checked before any tensor is updated
        if _planned(backend, spec, spec_key, options, ranks)[0].has_matmul:
            for p in members:
                if p.dim() != 2:
                    raise ValueError(f"{_NOT_2D} {tuple(p.shape)}")
    for ranks, arrays in split:
        _step_class(
            backend, *_planned(backend, spec, spec_key, options, ranks), *arrays, hyper, global_values, maximize
        )


def _step_class(backend, the_plan, keys, params, grads, given, steps, hyper, global_values, maximize) -> None:
    """The stages and blocks of one rank class's plan, for its tensors."""
    run = _Run(the_plan, params, grads, given, steps, hyper, maximize)
    run.fill_sums(global_values)
    for k, (stage, key) in enumerate(zip(the_plan.stages, keys)):
        backend.fused_step(
            key,
            params=params,
            grads=grads,
            states={n: run.tensors(n) for n in [*stage.states, *stage.exports, *stage.tensor_reads]},
            inputs={n: run.tensors(n) for n in stage.inputs} if stage.inputs else None,
            steps=steps,
            hyper=hyper,
            options={},
            global_values={},
            maximize=maximize,
        )
        for block in stage.blocks:
            run.block(block, k)


def _planned(backend, spec: Spec, spec_key: str, options: dict[str, bool], ranks) -> tuple[Plan, list[str]]:
    key = (backend.__name__, spec_key, tuple(sorted(options.items())), ranks)
    if key not in _PLANS:
        the_plan = plan(spec, options, ranks)
        _PLANS[key] = (the_plan, [backend.register(stage.spec) for stage in the_plan.stages])
    return _PLANS[key]


class _Buffers:
    """What a plan needs beside the caller's tensors, for one set of params: scratch, the
    rows/cols tables, and the blocks' results (stacked per group of same-shaped params, the
    kernels reading views of them). Kept across steps, so that the kernels' tables (cached by
    the tensors' addresses) are built once, as for any other fused step."""

    def __init__(self, the_plan: Plan, params: list[Tensor]):
        self.named: dict[str, list[Tensor]] = {}
        for name, scope in the_plan.scratch.items():
            self.named[name] = [_scratch(p, scope, the_plan.scratch_axes.get(name)) for p in params]
        for name in the_plan.sums:
            self.named[name] = [_scratch(p, "tensor") for p in params]
        for raw, dim in ((ROWS, -2), (COLS, -1)):
            self.named[the_plan.renamed[raw]] = [
                torch.tensor(float(_size(p, dim)), dtype=torch.float64, device=p.device) for p in params
            ]
        self.groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            # on CPU a group per tensor: stacking copies every operand, and a batched matmul
            # gains nothing there over one matmul per matrix (BENCHMARKS.md, fused Muon)
            alone = (i,) if p.device.type == "cpu" else ()
            self.groups.setdefault((tuple(p.shape), p.dtype, p.device, *alone), []).append(i)
        self.stacks: dict[tuple, Tensor] = {}  # (block result, group) -> its stacked buffer

    def result(self, name: str, group: tuple, index: list[int], value: Tensor, total: int) -> None:
        key = (name, group)
        if key not in self.stacks or self.stacks[key].dtype != value.dtype:
            self.stacks[key] = torch.empty(value.shape, dtype=value.dtype, device=value.device)
            out = self.named.setdefault(name, [None] * total)
            for j, i in enumerate(index):
                out[i] = self.stacks[key][j]
        self.stacks[key].copy_(value)


_BUFFERS: OrderedDict = OrderedDict()
_MAX_BUFFERS = 8


def _buffers(the_plan: Plan, params: list[Tensor]) -> _Buffers:
    key = (id(the_plan), *(p.data_ptr() for p in params), *(tuple(p.shape) for p in params))
    found = _BUFFERS.get(key)
    if found is None:
        found = _BUFFERS[key] = _Buffers(the_plan, params)
        if len(_BUFFERS) > _MAX_BUFFERS:
            _BUFFERS.popitem(last=False)
    _BUFFERS.move_to_end(key)
    return found


class _Run:
    """One step's tensors: the caller's, scratch, and the blocks' results, by name."""

    def __init__(self, the_plan: Plan, params, grads, given: dict[str, list[Tensor]], steps, hyper, maximize):
        self.plan, self.params, self.steps, self.hyper = the_plan, params, steps, hyper
        self.buffers = _buffers(the_plan, params)
        self.named = {PARAM: params, GRAD: grads, **given}
        self.maximize = maximize
        self.stacks: dict[tuple, dict[str, object]] = {g: {} for g in self.buffers.groups}
        self.sources: dict[tuple, dict[str, str]] = {}  # group -> the tensor each operand was read from

    def fill_sums(self, global_values: dict[str, Tensor]) -> None:
        """The sums over all parameters, as every param's per-tensor value (NaN: one the
        optimizer left out, which this setting does not read; as the kernels take it)."""
        for name in self.plan.sums:
            value = global_values.get(name)
            for t in self.buffers.named[name]:
                t.fill_(float("nan") if value is None else float(value))

    def tensors(self, name: str) -> list[Tensor]:
        return self.named[name] if name in self.named else self.buffers.named[name]

    def block(self, value: Value, stage: int) -> None:
        """`value`'s block (run after `stage`) for every group of same-shaped params, stacked."""
        for group, index in self.buffers.groups.items():
            env = self.stacks[group]
            sources = self.sources.setdefault(group, {})
            for s in value.expr.free_symbols:
                stored = self.plan.stored.get(s.name, len(self.plan.stages))
                source = self.plan.renamed[s.name] if stored <= stage else s.name
                # an operand may be a view of its buffer (a CPU group of one): a state's buffer
                # holds its new value once its stage stored it, so the old one is read anew,
                # from the copy
                if s.name not in env or sources.get(s.name, source) != source:
                    env[s.name] = self._operand(source, index, group)
                    sources[s.name] = source
            result = _run_block(value.matrix, env, self.params[index[0]])
            env[value.name] = result
            if value.name in self.plan.results:
                self.buffers.result(value.name, group, index, result, len(self.params))

    def _operand(self, name: str, index: list[int], group: tuple):
        shape, dtype, device = group[:3]
        if name == ROWS:
            return float(_size_of(shape, -2))
        if name == COLS:
            return float(_size_of(shape, -1))
        if name == NUMEL:
            return float(math.prod(shape))
        if name == NDIM:
            return float(len(shape))
        if name == STEP:
            values = {self.steps[i] for i in index}
            if len(values) == 1:
                return float(values.pop())
            return torch.tensor([self.steps[i] for i in index], dtype=dtype, device=device).view(-1, 1, 1)
        by_name = self.plan.program.by_name
        if name in by_name and _prologue(by_name[name]):
            v = by_name[name]
            env = {s.name: self._operand(s.name, index, group) for s in v.expr.free_symbols}
            return _evaluate(v.expr, env)
        if name in self.hyper:
            return float(self.hyper[name])
        tensors = [self.tensors(name)[i] for i in index]
        if tensors[0].dim() == 0:  # a per-tensor value
            return torch.stack(tensors).to(dtype).view(-1, 1, 1)
        stacked = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)  # one: a view
        return -stacked if name == GRAD and self.maximize else stacked


def _scratch(p: Tensor, scope: str, axes: frozenset | None = None) -> Tensor:
    if axes:  # keepdim, as the optimizer's reduced states
        index = tuple(slice(0, 1) if -k in axes else slice(None) for k in range(max(-a for a in axes), 0, -1))
        return torch.empty_like(p[(..., *index)], memory_format=torch.contiguous_format)
    if scope == "element":
        return torch.empty_like(p, memory_format=torch.contiguous_format)
    return torch.zeros((), dtype=torch.float64, device=p.device)


def _size(p: Tensor, dim: int) -> int:
    return _size_of(tuple(p.shape), dim)


def _size_of(shape: tuple, dim: int) -> int:
    sizes = (1, 1, *shape)
    return sizes[dim]


def _run_block(block, env: dict, param: Tensor) -> Tensor:
    local = dict(env)
    for name, source in block.init.items():
        local[name] = local[source.name]
    count = 1
    if block.count is not None:
        n = _evaluate(block.count, local)
        if n != int(n) or not 0 <= n <= MAX_REPEAT:
            raise ValueError(f"the loop count must be an integer in [0, {MAX_REPEAT}]; got {n}")
        count = int(n)
    for _ in range(count):
        for name, expr in block.body:
            local[name] = _evaluate(expr, local)
    out = local[block.result]
    if block.promote:
        out = out.to(param.dtype)
    if block.shape == PARAM_SHAPE:
        out = out.reshape(-1, *param.shape)
    return out


# --------------------------------------------------------------------------- expressions
_RELATIONS = {
    sympy.StrictLessThan: operator.lt,
    sympy.LessThan: operator.le,
    sympy.StrictGreaterThan: operator.gt,
    sympy.GreaterThan: operator.ge,
    sympy.Eq: operator.eq,
    sympy.Ne: operator.ne,
}
_DIMS = {"dim": (-2, -1), "keepdim": True}


def _evaluate(expr, env: dict):
    """`expr` on Python numbers and stacked matrices ([n, rows, cols]; a per-tensor value is
    [n, 1, 1]), with torch's operations: the evaluation rules of the foreach path's blocks."""
    if expr.is_Symbol:
        return env[expr.name]
    if expr.is_Number:
        return float(expr)
    if expr is sympy.true or expr is sympy.false:
        return bool(expr)
    if isinstance(expr, sympy.Add):
        fused = _addmm(expr, env)
        if fused is not None:
            return fused
        terms = [_evaluate(a, env) for a in expr.args]
        return _sum(terms)
    if isinstance(expr, sympy.Mul):
        return _product(expr, env)
    if isinstance(expr, sympy.Pow):
        return _pow(expr, env)
    if isinstance(expr, MatrixProduct):
        a, b = (_evaluate(x, env) for x in expr.args)
        return _matmul(a, b)
    if isinstance(expr, Transposed):
        return _evaluate(expr.args[0], env).mT
    if isinstance(expr, BFloat16):
        return _evaluate(expr.args[0], env).bfloat16()
    if isinstance(expr, ReduceSum):
        return _evaluate(expr.args[0], env).sum(**_DIMS)
    if isinstance(expr, ReduceMin):
        return _evaluate(expr.args[0], env).amin(**_DIMS)
    if isinstance(expr, ReduceMax):
        return _evaluate(expr.args[0], env).amax(**_DIMS)
    if isinstance(expr, (sympy.Max, sympy.Min)):
        return _extremum(expr, env)
    if isinstance(expr, sympy.Piecewise):
        return _piecewise(expr, env)
    if type(expr) in _RELATIONS:
        a, b = (_evaluate(x, env) for x in expr.args)
        return _RELATIONS[type(expr)](a, b)
    if isinstance(expr, (sympy.And, sympy.Or)):
        parts = [_evaluate(a, env) for a in expr.args]
        op = operator.and_ if isinstance(expr, sympy.And) else operator.or_
        out = parts[0]
        for p in parts[1:]:
            out = op(out, p)
        return out
    if isinstance(expr, sympy.Not):
        x = _evaluate(expr.args[0], env)
        return ~x if torch.is_tensor(x) else not x
    return _function(expr, env)


def _product(expr: sympy.Mul, env: dict):
    """Numbers first, then each matrix factor; a factor x**-1 divides (X / n, not X * (1/n):
    in bfloat16 the two round differently)."""
    over = [a.base for a in expr.args if isinstance(a, sympy.Pow) and a.exp == -1]
    factors = [_evaluate(a, env) for a in expr.args if not (isinstance(a, sympy.Pow) and a.exp == -1)]
    numbers = [f for f in factors if not torch.is_tensor(f)]
    out = math.prod(numbers) if numbers else None
    for f in (f for f in factors if torch.is_tensor(f)):
        out = f if out is None else (f * out if not torch.is_tensor(out) else out * f)
    for d in over:
        out = (1.0 if out is None else out) / _evaluate(d, env)
    return out


def _sum(terms: list):
    # Python numbers first: a bfloat16 matrix plus numbers stays bfloat16
    numbers = [t for t in terms if not torch.is_tensor(t)]
    tensors = [t for t in terms if torch.is_tensor(t)]
    out = sum(numbers) if numbers else None
    for t in tensors:
        out = t if out is None else (t + out if not torch.is_tensor(out) else out + t)
    return out


_FUNCTIONS = {
    sympy.Abs: (abs, torch.abs),
    sympy.sign: (lambda x: float((x > 0) - (x < 0)), torch.sign),
    sympy.exp: (math.exp, torch.exp),
    sympy.log: (math.log, torch.log),
}


def _function(expr, env: dict):
    for cls, (number, tensor) in _FUNCTIONS.items():
        if isinstance(expr, cls):
            x = _evaluate(expr.args[0], env)
            return tensor(x) if torch.is_tensor(x) else number(x)
    raise NotImplementedError(f"the fused path's matrix blocks do not evaluate {type(expr).__name__}: {expr}")


def _pow(expr, env: dict):
    base, exp = expr.args
    if (
        exp == sympy.Rational(1, 2)
        and isinstance(base, ReduceSum)
        and isinstance(base.args[0], sympy.Pow)
        and base.args[0].exp == 2
    ):  # norm(X): as torch's .norm(), accumulated in float32 for a bfloat16 X
        return torch.linalg.vector_norm(_evaluate(base.args[0].base, env), **_DIMS)
    b = _evaluate(base, env)
    if exp == sympy.Rational(1, 2):
        return torch.sqrt(b) if torch.is_tensor(b) else math.sqrt(b)
    if exp == -1:
        return 1.0 / b
    if exp.is_Integer and int(exp) == 2:
        return b * b
    return b ** _evaluate(exp, env)


def _extremum(expr, env: dict):
    take_max = isinstance(expr, sympy.Max)
    values = [_evaluate(a, env) for a in expr.args]
    numbers = [v for v in values if not torch.is_tensor(v)]
    tensors = [v for v in values if torch.is_tensor(v)]
    out = None
    for t in tensors:
        out = t if out is None else (torch.maximum(out, t) if take_max else torch.minimum(out, t))
    if numbers:
        bound = max(numbers) if take_max else min(numbers)
        if out is None:
            return bound
        out = out.clamp(min=bound) if take_max else out.clamp(max=bound)
    return out


def _piecewise(expr, env: dict):
    pieces = list(expr.args)
    value, cond = pieces[-1].expr, pieces[-1].cond
    if cond is not sympy.true:
        raise NotImplementedError(f"a where(...) without a default in a matrix block: {expr}")
    out = None
    for piece in reversed(pieces[:-1]):
        c = _evaluate(piece.cond, env)
        if not torch.is_tensor(c):
            if c:
                out, value = None, piece.expr
            continue
        chosen = _evaluate(piece.expr, env)
        rest = out if out is not None else _evaluate(value, env)
        out = torch.where(c, chosen, rest)
    return out if out is not None else _evaluate(value, env)


def _addmm(expr: sympy.Add, env: dict):
    """beta * M + alpha * P @ Q as one torch.baddbmm, as torch.optim.Muon's addmm."""
    if len(expr.args) != 2:
        return None
    products = [t for t in expr.args if isinstance(_split(t, env)[1], MatrixProduct)]
    if len(products) != 1:
        return None
    (product,) = products
    (other,) = [t for t in expr.args if t is not product]
    alpha, prod = _split(product, env)
    beta, m = _split(other, env)
    left_scale, left = _split(prod.args[0], env)
    right_scale, right = _split(prod.args[1], env)
    scales = [_evaluate(s, env) for s in (alpha, beta, left_scale, right_scale)]
    if any(torch.is_tensor(s) for s in scales) or m.is_Number:
        return None
    alpha_v, beta_v = scales[0] * scales[2] * scales[3], scales[1]
    mv, pv, qv = (_evaluate(x, env) for x in (m, left, right))
    if not all(torch.is_tensor(x) and x.dim() == 3 for x in (mv, pv, qv)):
        return None
    if len(mv) == len(pv) == len(qv) == 1:  # one matrix: 2-D addmm reads a transpose in place
        return torch.addmm(mv[0], pv[0], qv[0], beta=beta_v, alpha=alpha_v).unsqueeze(0)
    return torch.baddbmm(mv, pv, qv, beta=beta_v, alpha=alpha_v)


def _matmul(a, b):
    """a @ b on stacks; a stack of one as a 2-D product, which reads a transposed operand
    (X.mT) in place where a batched matmul copies it first."""
    if torch.is_tensor(a) and torch.is_tensor(b) and a.dim() == b.dim() == 3 and len(a) == len(b) == 1:
        return (a[0] @ b[0]).unsqueeze(0)
    return a @ b


def _split(term, env: dict):
    """(scalar factor, matrix factor) of a product term."""
    if isinstance(term, sympy.Mul):
        scalars = [f for f in term.args if _is_number(f, env)]
        tensors = [f for f in term.args if not _is_number(f, env)]
        return sympy.Mul(*scalars), sympy.Mul(*tensors)
    return sympy.S.One, term


def _is_number(expr, env: dict) -> bool:
    return all(not torch.is_tensor(env.get(s.name)) for s in expr.free_symbols) and not expr.has(
        MatrixProduct, Transposed, BFloat16, ReduceSum, ReduceMin, ReduceMax
    )
