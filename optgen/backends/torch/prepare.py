"""The IR, as the torch backend sees it: what each value is at run time, which values fold
into their consumer, and where each value is last read.

Kinds (what holds a value in the generated code):
  uniform         a Python float, the same for every tensor of a param group (hyperparameters)
  host            a Python float per tensor (depends on `step`, `numel`, `ndim`): a list in foreach
  scalar          a Python float per tensor computed in program order (reads a scalar state)
  device_uniform  a 0-d tensor, the same for the group (from a cross-parameter reduction)
  device          a 0-d tensor per parameter tensor (a per-tensor reduction and what follows)
  element         a tensor shaped like the parameter

A `scope: tensor` state is a 0-d tensor: a *scalar state* (like torch's NAdam `mu_product`:
on the CPU, read with .item()) when its update needs no reduction, a device tensor otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import sympy

from ...expr import GRAD, NDIM, NUMEL, PARAM, SIZE_RANKS, STEP
from ...ir import Program, Value

PER_TENSOR = ("host", "scalar", "device", "element")
SCALAR_KINDS = ("uniform", "host", "scalar")
# An absorbed value is inlined into its consumer; past this many nodes it gets its own
# temporary instead (its definition would be copied into the consumer once per use).
MAX_INLINED_NODES = 400


@dataclass
class GlobalReduction:
    """A cross-parameter sum, computed over every param group before any update."""

    name: str
    reduce: str
    arg: sympy.Expr  # per element, over param, grad and hyperparameters


@dataclass
class Prepared:
    program: Program
    values: list[Value]  # what runs per param group, in order (global reductions removed)
    kinds: dict[str, str]  # IR name (inputs and values) -> kind
    scalar_states: set[str]  # tensor-scope states held on the CPU and read with .item()
    globals: list[GlobalReduction]
    absorbed: dict[str, sympy.Expr]  # single-use element values folded into their consumer
    last_use: dict[str, int] = field(default_factory=dict)  # IR name -> index in `values`
    var_of: dict[str, str] = field(default_factory=dict)  # IR name -> spec variable

    @property
    def chains(self) -> list[str]:
        """Variables updated in place: param and the states."""
        return [PARAM] + [s.name for s in self.program.states]

    def kind(self, expr: sympy.Basic) -> str:
        """The widest kind among the symbols of `expr`."""
        order = ("uniform", "host", "scalar", "device_uniform", "device", "element")
        kinds = [self.kinds.get(s.name, "uniform") for s in expr.free_symbols]
        if not kinds:
            return "uniform"
        if "element" in kinds:
            return "element"
        if "device" in kinds or ("device_uniform" in kinds and any(k in ("host", "scalar") for k in kinds)):
            return "device"
        return max(kinds, key=order.index)

    def is_scalar(self, expr: sympy.Basic) -> bool:
        return self.kind(expr) in SCALAR_KINDS

    def per_tensor(self, expr: sympy.Basic) -> bool:
        return any(self.kinds.get(s.name, "uniform") in PER_TENSOR for s in expr.free_symbols)


def prepare(program: Program) -> Prepared:
    values = [dataclasses.replace(v) for v in program.values]
    globals_ = _take_global_reductions(values)
    values = _dce(program, values)
    values = _norms(values)
    kinds, scalar_states = _kinds(program, values, globals_)
    var_of = {v.name: v.var for v in values if v.var}
    var_of.update({n: n for n in [PARAM, GRAD] + program.input_names + [s.name for s in program.states]})
    prepared = Prepared(program, values, kinds, scalar_states, globals_, {}, var_of=var_of)
    prepared.absorbed = _absorb(prepared)
    prepared.last_use = _last_uses(prepared)
    return prepared


# --------------------------------------------------------------------------- passes
def _take_global_reductions(values: list[Value]) -> list[GlobalReduction]:
    by_name = {v.name: v for v in values}
    out = []
    for v in [v for v in values if v.is_reduction and v.over == "global"]:
        arg = _expand(sympy.Symbol(v.expr.name, real=True), by_name)
        out.append(GlobalReduction(v.name, v.reduce, arg))
        values.remove(v)
    return out


def _expand(expr, by_name):
    """Inline element values until only inputs remain (global reduction arguments are
    computed on their own, before the update)."""
    while True:  # the IR is acyclic: at most one round per value
        subs = {s: by_name[s.name].expr for s in expr.free_symbols if s.name in by_name}
        if not subs:
            return expr
        expr = expr.xreplace(subs)


def _dce(program: Program, values: list[Value]) -> list[Value]:
    live = set(program.outputs.values()) | set(program.group_outputs.values())
    for v in reversed(values):
        if v.name in live:
            live |= {s.name for s in v.expr.free_symbols}
    return [v for v in values if v.name in live]


def _norms(values: list[Value]) -> list[Value]:
    """sum(y**2) over a tensor is norm(y)**2: one read of y, no y**2 temporary, and
    sqrt(sum(y**2)) becomes the norm itself (torch.linalg.vector_norm, torch._foreach_norm)."""
    uses = _use_counts(values)
    by_name = {v.name: v for v in values}
    for red in [v for v in values if v.reduce == "sum" and v.over == "tensor"]:
        arg = by_name.get(red.expr.name)
        if arg is None or uses.get(arg.name) != 1 or not _is_square_of_symbol(arg.expr):
            continue
        y = arg.expr.base
        sqrt_users = [v for v in values if v.expr == sympy.sqrt(red.symbol) and v.scope == "tensor"]
        name = sqrt_users[0].name if sqrt_users else f"{y.name}_norm"
        norm = sympy.Symbol(name, real=True, nonnegative=True)
        old = red.name
        values.remove(arg)
        if sqrt_users:
            values.remove(sqrt_users[0])
        red.name, red.expr, red.reduce = name, y, "norm"
        for v in values:
            v.expr = v.expr.xreplace({s: norm**2 for s in v.expr.free_symbols if s.name == old})
            v.expr = v.expr.xreplace({s: norm for s in v.expr.free_symbols if s.name == name and s != norm})
    return values


def _is_square_of_symbol(expr) -> bool:
    return isinstance(expr, sympy.Pow) and expr.exp == 2 and expr.base.is_Symbol


def _use_counts(values: list[Value]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        for s in v.expr.free_symbols:
            counts[s.name] = counts.get(s.name, 0) + 1
    return counts


def _kinds(program: Program, values: list[Value], globals_: list[GlobalReduction]):
    tensor_states = [s.name for s in program.states if s.scope == "tensor"]
    scalar_states = set(tensor_states)
    while True:
        kinds = _kinds_given(program, values, globals_, scalar_states)
        demoted = {s for s in scalar_states if any(v.var == s and kinds[v.name] not in SCALAR_KINDS for v in values)}
        if not demoted:
            return kinds, scalar_states
        scalar_states -= demoted


def _kinds_given(program: Program, values, globals_, scalar_states) -> dict[str, str]:
    kinds = {n: "uniform" for n in program.hyper_names}
    kinds.update({s.name: "uniform" for s in program.group_states})  # a float from the group dict
    kinds.update({STEP: "host", NUMEL: "host", NDIM: "host", PARAM: "element", GRAD: "element"})
    kinds.update({name: "host" for name in SIZE_RANKS})  # rows(param), cols(param)
    if program.group_states and program.spec.step_count == "per_group":
        kinds[STEP] = "uniform"  # the group's count, the same for its tensors: group states may read it
    kinds.update({name: "element" for name in program.input_names})
    for s in program.states:
        kinds[s.name] = "element" if s.scope == "element" else "scalar" if s.name in scalar_states else "device"
    states = {s.name: kinds[s.name] for s in program.states}
    kinds.update({g.name: "device_uniform" for g in globals_})
    probe = Prepared(program, values, kinds, scalar_states, globals_, {})
    for v in values:
        if v.is_reduction:
            kinds[v.name] = "device"
        elif v.scope == "element":
            kinds[v.name] = "element"
        else:
            kinds[v.name] = probe.kind(v.expr)
            if v.var in states and kinds[v.name] in ("uniform", "host"):
                # a state set from host values only (`prev_lr = lr`) is still stored per tensor
                kinds[v.name] = states[v.var]
    return kinds


def _absorb(p: Prepared) -> dict[str, sympy.Expr]:
    """Single-use element values that can be computed inside their consumer (an Adan
    `update` folds into the parameter update: two addcdiv_ and no temporary)."""
    uses: dict[str, list[int]] = {}
    for i, v in enumerate(p.values):
        for s in v.expr.free_symbols:
            uses.setdefault(s.name, []).append(i)
    outputs = set(p.program.outputs.values())
    reduced = {v.expr.name for v in p.values if v.is_reduction}
    absorbed: dict[str, sympy.Expr] = {}
    sizes: dict[str, int] = {}  # of each absorbed value once inlined
    for i, v in enumerate(p.values):
        if p.kinds[v.name] != "element" or v.name in outputs or v.name in reduced or v.var in p.chains:
            continue
        users = uses.get(v.name, [])
        if len(users) != 1 or p.kinds[p.values[users[0]].name] != "element" or p.values[users[0]].is_reduction:
            continue
        if v.matrix is not None or p.values[users[0]].matrix is not None:
            continue  # a matrix block reads its operands by name and is computed whole
        reads = {p.var_of.get(s.name, s.name) for s in v.expr.free_symbols}
        between = p.values[i + 1 : users[0]]
        if any(w.var in reads for w in between):
            continue  # something it reads is updated before the consumer runs
        size = _inlined_size(v.expr, absorbed, sizes)
        if size > MAX_INLINED_NODES:
            continue  # a chain of values each read several times by the next grows exponentially
        absorbed[v.name] = v.expr
        sizes[v.name] = size
    return absorbed


def _inlined_size(expr: sympy.Expr, absorbed: dict[str, sympy.Expr], sizes: dict[str, int]) -> int:
    """Nodes of `expr` once the values absorbed so far are inlined into it (without inlining)."""
    size = 0
    for node in sympy.preorder_traversal(expr):
        size += sizes.get(node.name, 1) if isinstance(node, sympy.Symbol) else 1
    return size


def _last_uses(p: Prepared) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, v in enumerate(p.values):
        for s in inline(p, v.expr).free_symbols:
            last[s.name] = i
    end = len(p.values)
    for name in [*p.program.outputs.values(), *p.program.group_outputs.values()]:
        last[name] = end
    return last


def inline(p: Prepared, expr: sympy.Expr) -> sympy.Expr:
    """`expr` with absorbed values replaced by their definitions (each defined before its
    use, so this ends: at most one round per absorbed value)."""
    while True:
        subs = {s: p.absorbed[s.name] for s in expr.free_symbols if s.name in p.absorbed}
        if not subs:
            return expr
        expr = expr.xreplace(subs)


# --------------------------------------------------------------------------- names
def plural(name: str) -> str:
    """The name of a list of `name`s: exp_avg -> exp_avgs, bias_correction1 -> bias_correction1_list."""
    last = name.rsplit("_", 1)[-1]
    if name.endswith("s") or name[-1].isdigit() or len(last) == 1:
        return f"{name}_list"
    if name.endswith(("x", "ch", "sh")):
        return f"{name}es"
    return f"{name}s"


def tidy_names(values: list[Value]) -> dict[str, str]:
    """IR name -> a readable base name: a value the compiler made is named after what it
    reads, and `exp_avg_sq_1` reads as `exp_avg_sq` (versions of a variable share its name)."""
    versions = sorted(((v.name, v.var) for v in values if v.var and v.name != v.var), key=lambda nv: -len(nv[0]))
    out = {}
    for v in values:
        if v.var:
            out[v.name] = v.var
            continue
        name = v.name
        for ssa, var in versions:
            name = re.sub(rf"(?<![A-Za-z0-9]){re.escape(ssa)}(?![A-Za-z0-9])", var, name)
        out[v.name] = name
    return out
