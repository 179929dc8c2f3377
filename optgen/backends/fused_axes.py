"""The fused kernels' axis reductions, reduced-shape states and per-tensor rank rules.

A spec with `if ndim(param) >= 2:` rules is compiled once per *rank class*: the ranks that
every rule of the spec treats alike (Adafactor's are ndim <= 1 and ndim >= 2). The runtime
splits a param group's tensors by class, and each class's kernel is the program with its
rules decided: the other side's values and states are gone (`specialise`).

Axis reductions are reductions like the per-tensor ones (ir.py): they end a phase, and the
next pass reads their result. Where a per-tensor reduction has one slot per tensor, an axis
reduction has a vector of slots, one per element of the reduced shape; the element at flat
offset i of a tensor (..., rows, cols) maps to slot

    over -1 ("row"):       i // cols
    over -2 ("col"):       (i // (rows * cols)) * cols + i % cols
    over (-2, -1) ("mat"): i // (rows * cols)

(rows is 1 for a tensor of fewer than 2 dims, cols 1 for a 0-d one). Reductions over other
trailing axes run on a *view* of each tensor as (outer, rows, cols): the last q axes merged
into cols and the p before them into rows (`axis_view`), when every axis set the program
reduces over is one of those blocks or both (a sum over axis -3 of a (a, b, c, d) tensor is
a column sum of its (a, b, c * d) view); the program's axes are rewritten into the view's
and the runtimes pass the view's rows and cols. A reduced-shape state
is stored contiguously in that same order, so it is read at the same index. A value of a
reduced shape never reads a per-element one (broadcasting: element absorbs everything), so
it is the same for every element of its slot; a reduction of it counts each slot once: only
the *owner* of the slot (the element at index 0 along the reduced axes) contributes. A
reduced state's new value is written by its owners into a slot vector during the update
pass and copied into the state after it: other elements of the slot still read the old one
during the pass.

`prepare(program, ranks)` turns a lowered program into one whose axis reductions are values
of their own (`AxisValue`), phases renumbered; the C++ kernels build their passes from it
(optgen/backends/cpp/kernels.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import sympy

from ..expr import COLS_SYMBOL, NDIM_SYMBOL, ROWS_SYMBOL, AxisMax, AxisMean, AxisMin, AxisNorm, AxisReduction, AxisSum
from ..ir import Program, Value
from ..shapes import ALL_RANKS, ELEMENT, SCALAR, Shape, guard_of, guard_text, reduced, shape_of

# the reduced shapes the kernels index (see the module docstring): axes -> tag
TAGS = {frozenset({-1}): "row", frozenset({-2}): "col", frozenset({-1, -2}): "mat"}
_OP = {AxisSum: "sum", AxisMean: "sum", AxisNorm: "sum", AxisMax: "max", AxisMin: "min"}
IDENTITY = {"sum": sympy.S.Zero, "min": sympy.oo, "max": -sympy.oo}


@dataclass
class AxisValue(Value):
    """A reduction over `axes` (with keepdim): reduce is "sum", "min" or "max" of the
    element value `expr`, over "axis"; its shape is reduced(axes)."""

    axes: frozenset = frozenset()

    @property
    def tag(self) -> str:
        return TAGS[self.axes]


def owner_symbol(tag: str) -> sympy.Symbol:
    """True at the element that owns its slot of the reduced shape `tag` (a kernel local)."""
    return sympy.Symbol(f"_own_{tag}", real=True)


# --------------------------------------------------------------------------- what runs
def uses_axes(program: Program) -> bool:
    """Whether the kernels of `program` need the tensors' shapes (not only their sizes)."""
    names = {s.name for v in program.values for s in v.expr.free_symbols}
    return program.has_axes or bool(names & {ROWS_SYMBOL.name, COLS_SYMBOL.name})


def rank_classes(program: Program) -> list[frozenset]:
    """The ranks 0..8 split into the classes that every rank rule of `program` treats alike
    (one class, all ranks, when it has none). Ranks above 8 behave like 8 (shapes.MAX_RANK).
    (A `where(ndim(param) > 1, ...)` is no rule: the kernels test it per tensor.)"""
    guards = [v.guard for v in program.values if v.guard is not None]
    guards += [s.ranks for s in program.states if s.ranks is not None]
    classes = [ALL_RANKS]
    for g in guards:
        classes = [part for c in classes for part in (c & g, c - g) if part]
    return sorted(classes, key=min)


def spec_rank_classes(spec, options: dict[str, bool]) -> list[frozenset | None]:
    """The rank classes of a setting's kernels: [None] (one kernel for every rank) unless
    the program has rank rules."""
    from ..lower import lower

    classes = rank_classes(lower(spec, options))
    return [None] if classes == [ALL_RANKS] else classes


def module_rank_classes(spec, combos: list[dict[str, bool]]) -> list[frozenset | None]:
    """The rank classes that every setting's rules treat alike (Triton merges the settings
    into one module): [None] when no setting has rank rules."""
    from ..lower import lower

    guards = [c for combo in combos for c in rank_classes(lower(spec, combo))]
    if all(c == ALL_RANKS for c in guards):
        return [None]
    classes = [ALL_RANKS]
    for g in guards:
        classes = [part for c in classes for part in (c & g, c - g) if part]
    return sorted(classes, key=min)


def reduced_tags(program: Program) -> dict[str, str]:
    """Each reduced-shape state of the program: name -> tag."""
    return {s.name: TAGS[s.axes] for s in program.states if s.scope == "element" and s.axes}


def slots_of(program: Program, reduced_states: dict[str, str]) -> list[tuple[str, str, str]]:
    """The slot vectors of a kernel, in order: (name, tag, kind) for each axis reduction
    (kind: sum, min, max) and each reduced state the update writes (kind: store)."""
    out = [(v.name, v.tag, v.reduce) for v in program.values if isinstance(v, AxisValue)]
    out += [(s, tag, "store") for s, tag in reduced_states.items() if s in program.writes]
    return out


def class_stem(ranks: frozenset) -> str:
    """A file-name part for a rank class: `ndim_ge_2`, `ndim_le_1`, `ndim_eq_3`."""
    text = guard_text(ranks).replace("ndim(param)", "ndim").replace(" ", "")
    for op, word in ((">=", "_ge_"), ("<=", "_le_"), ("==", "_eq_"), ("&", "_and_"), ("|", "_or_")):
        text = text.replace(op, word)
    return "".join(ch for ch in text if ch.isalnum() or ch == "_")


def class_of(classes: list[frozenset], ndim: int) -> int:
    rank = min(ndim, max(ALL_RANKS))
    return next(i for i, c in enumerate(classes) if rank in c)


def class_name(ranks: frozenset) -> str:
    """`ndim(param) >= 2`: what a kernel's doc says of the tensors it runs for."""
    return guard_text(ranks)


# --------------------------------------------------------------------------- the program
def prepare(program: Program, ranks: frozenset | None) -> Program:
    """`program` for the tensors of rank class `ranks` (None: the program has no rank rules),
    its axes those of its view, its axis reductions values of their own, phases renumbered."""
    if ranks is not None:
        program = _specialise(program, ranks)
    view = axis_view(axis_sets(program))
    if view is None:
        raise ValueError(f"{program.spec.name}: no fused view for its axis reductions (fused_refusal says why)")
    if view != (1, 1):
        program = _into_view(program, view)
    _extract(program)
    _number_phases(program)
    return program


# --------------------------------------------------------------------------- the view
MAX_VIEW_AXES = 8  # shapes.MAX_RANK: the trailing axes a view may merge


def axis_sets(program: Program) -> set[frozenset]:
    """Every axis set the program's states keep or its values reduce over."""
    out = {frozenset(s.axes) for s in program.states if s.scope == "element" and s.axes}
    for v in program.values:
        out |= {a.axes for a in v.expr.atoms(AxisReduction)}
    return out


def axis_view(sets) -> tuple[int, int] | None:
    """(p, q): the fewest trailing axes to view a tensor as (outer, rows, cols), rows the p
    axes before the last q, such that every set in `sets` is the rows' axes, the cols' or
    both; (1, 1) when there is nothing to reduce; None when no such view exists."""
    sets = [frozenset(s) for s in sets]
    if all(s in TAGS for s in sets):
        return (1, 1)
    for total in range(2, MAX_VIEW_AXES + 1):
        for q in range(1, total):
            cols = frozenset(range(-q, 0))
            rows = frozenset(range(-total, -q))
            if all(s in (rows, cols, rows | cols) for s in sets):
                return (total - q, q)
    return None


def _into_view(program: Program, view: tuple[int, int]) -> Program:
    """`program` with its axes those of the (outer, rows, cols) view (sets of -1 and -2)."""
    mapping = _view_axes(view)
    states = [dataclasses.replace(s, axes=mapping[frozenset(s.axes)]) if s.axes else s for s in program.states]
    values = []
    for v in program.values:
        calls = {a: type(a)(a.args[0], tuple(sorted(mapping[a.axes]))) for a in v.expr.atoms(AxisReduction)}
        shape = v.shape
        if shape is not None and shape.is_reduced:
            shape = reduced(mapping[shape.axes])
        values.append(dataclasses.replace(v, expr=v.expr.xreplace(calls) if calls else v.expr, shape=shape))
    return dataclasses.replace(program, states=states, values=values, axis_view=view)


def _view_axes(view: tuple[int, int]) -> dict[frozenset, frozenset]:
    p, q = view
    cols, rows = frozenset(range(-q, 0)), frozenset(range(-(p + q), -q))
    return {cols: frozenset({-1}), rows: frozenset({-2}), rows | cols: frozenset({-2, -1})}


def view_shape(shape, view: tuple[int, int]) -> tuple[int, ...]:
    """A tensor's shape as the kernels see it: unchanged for the (1, 1) view, else (outer,
    rows, cols) with the last q axes merged into cols and the p before them into rows (an axis
    the tensor lacks counts as 1)."""
    if tuple(view) == (1, 1):
        return tuple(shape)
    p, q = view
    shape = list(shape)
    cols = _prod(shape[len(shape) - q :] if len(shape) >= q else shape)
    rows = _prod(shape[max(0, len(shape) - p - q) : max(0, len(shape) - q)])
    return (_prod(shape[: max(0, len(shape) - p - q)]), rows, cols)


def _prod(sizes) -> int:
    out = 1
    for n in sizes:
        out *= n
    return out


def _specialise(program: Program, ranks: frozenset) -> Program:
    """Decide each rank rule for `ranks` (one class of rank_classes)."""
    values = [dataclasses.replace(v) for v in program.values if v.guard is None or v.guard & ranks]
    for v in values:
        v.guard = None
        v.expr = _decide(v.expr, ranks)
    states = [s for s in program.states if s.ranks is None or ranks <= s.ranks]
    kept = {s.name for s in states}
    outputs = {k: o for k, o in program.outputs.items() if k == "param" or k in kept}
    out = dataclasses.replace(program, values=values, states=states, outputs=outputs)
    _forward_copies(out)
    _dce(out)
    return out


def _forward_copies(program: Program) -> None:
    """A join decided for the class (`var_estimate_2 = var_estimate`) is a plain copy:
    its readers read the original."""
    outputs = set(program.outputs.values())
    mapping: dict = {}
    kept = []
    for v in program.values:
        v.expr = v.expr.xreplace(mapping)
        if v.expr.is_Symbol and not v.is_reduction and v.name not in outputs and v.matrix is None:
            mapping[v.symbol] = v.expr
            continue
        kept.append(v)
    program.values = kept


def _decide(expr, ranks: frozenset):
    """`expr` with each condition on ndim(param) alone that holds for all of `ranks` or for
    none (the join after a rank rule) replaced by its value."""
    decided = {}
    for c in _conditions(expr):
        if c.free_symbols != {NDIM_SYMBOL}:
            continue
        held = guard_of(c) & ranks
        if held in (ranks, frozenset()):
            decided[c] = sympy.true if held else sympy.false
    return expr.xreplace(decided) if decided else expr


def _conditions(expr):
    for p in sympy.preorder_traversal(expr):
        if isinstance(p, sympy.Piecewise):
            yield from (a.cond for a in p.args)


def _dce(program: Program) -> None:
    live = set(program.outputs.values())
    for v in reversed(program.values):
        if v.name in live:
            live |= {s.name for s in v.expr.free_symbols}
    program.values = [v for v in program.values if v.name in live]


def _extract(program: Program) -> None:
    """Each axis reduction becomes an AxisValue (its argument an element value); a
    reduction (per tensor or over axes) of a reduced-shape value counts each slot once."""
    shapes: dict[str, Shape] = {n: (ELEMENT if s == "element" else SCALAR) for n, s in program.input_scopes.items()}
    shapes.update({s.name: reduced(s.axes) for s in program.states if s.scope == "element"})
    taken = set(program.input_scopes) | {v.name for v in program.values}
    made: dict[tuple, Value] = {}
    out: list[Value] = []

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def element(expr, base: str, loc) -> sympy.Symbol:
        if expr.is_Symbol:
            return expr
        key = ("element", expr)
        if key not in made:
            made[key] = Value(fresh(base), expr, "element", "", loc, shape=shape_of(expr, shapes, loc, None))
            out.append(made[key])
            shapes[made[key].name] = made[key].shape
        return made[key].symbol

    def reduce_over(call, loc):
        op = _OP[type(call)]
        x = call.args[0]
        arg_shape = shape_of(x, shapes, loc, None)
        axes = frozenset(arg_shape.axes | call.axes)
        base = x.name if x.is_Symbol else "x"
        arg = element(
            x**2 if isinstance(call, AxisNorm) else x, f"{base}_sq" if isinstance(call, AxisNorm) else base, loc
        )
        arg = _owned(arg, arg_shape, op)
        key = (op, arg, axes)
        if key not in made:
            arg = element(arg, f"{base}_owned", loc)
            name = fresh(f"{op}_{arg.name}_{TAGS[axes]}")
            made[key] = AxisValue(name, arg, "element", "", loc, reduce=op, over="axis", shape=reduced(axes), axes=axes)
            out.append(made[key])
            shapes[name] = made[key].shape
        red = made[key].symbol
        if isinstance(call, AxisMean):
            return red / _count(call.axes)
        if isinstance(call, AxisNorm):
            return sympy.sqrt(red)
        return red

    for v in program.values:
        if v.is_reduction:
            if v.over == "tensor":
                v.expr = element(
                    _owned(v.expr, shapes.get(v.expr.name, ELEMENT), v.reduce), f"{v.expr.name}_owned", v.loc
                )
            out.append(v)
            continue
        for call in [a for a in sympy.postorder_traversal(v.expr) if isinstance(a, AxisReduction)]:
            current = next((a for a in sympy.preorder_traversal(v.expr) if a == call), None)
            if current is not None:
                v.expr = v.expr.xreplace({call: reduce_over(call, v.loc)})
        if v.scope not in ("host", "global", "tensor"):
            v.shape = shape_of(v.expr, shapes, v.loc, None)
            v.shape = ELEMENT if v.shape.is_scalar else v.shape
        shapes[v.name] = v.shape
        out.append(v)
    program.values = out
    used = {s.name for v in out for s in v.expr.free_symbols}
    # the owner flags are per-element inputs the kernels compute from the element's index
    program.input_scopes.update(
        {owner_symbol(t).name: "element" for t in TAGS.values() if owner_symbol(t).name in used}
    )


def _owned(arg: sympy.Symbol | sympy.Expr, shape: Shape, op: str):
    """A reduction's argument counting each slot of its reduced shape once."""
    if not shape.is_reduced:
        return arg
    return sympy.Piecewise((arg, owner_symbol(TAGS[shape.axes])), (IDENTITY[op], True))


def _count(axes: frozenset):
    """How many elements a reduction over `axes` combines (rows is 1 below 2 dims)."""
    out = sympy.S.One
    if -1 in axes:
        out *= COLS_SYMBOL
    if -2 in axes:
        out *= ROWS_SYMBOL
    return out


def _number_phases(program: Program) -> None:
    """As lower._number_phases, with axis reductions ending a phase like per-tensor ones."""
    available: dict[str, int] = {}
    for v in program.values:
        p = max((available.get(s.name, 0) for s in v.expr.free_symbols), default=0)
        v.phase = 0 if v.scope in ("host", "global") else p
        ends_phase = v.is_reduction and v.over in ("tensor", "axis")
        available[v.name] = v.phase + 1 if ends_phase else v.phase


# --------------------------------------------------------------------------- the runtimes' tables
def rank_split(classes: list[frozenset | None], params, grads, states: dict, steps):
    """(rank class, (params, grads, states, steps) of its tensors) for each class that has
    tensors; a state list holds None for a tensor of a rank the state does not exist for,
    and is left out of a class whose tensors all lack it."""
    if classes == [None]:
        yield None, (params, grads, states, steps)
        return
    members: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        members.setdefault(class_of(classes, p.dim()), []).append(i)
    for k, index in sorted(members.items()):
        picked = {name: [ts[i] for i in index] for name, ts in states.items()}
        present = {}
        for name, ts in picked.items():
            if all(t is None for t in ts):
                continue
            if any(t is None for t in ts):
                raise ValueError(f"states[{name!r}] lacks a tensor for a parameter of rank {classes[k]}")
            present[name] = ts
        yield classes[k], ([params[i] for i in index], [grads[i] for i in index], present, [steps[i] for i in index])


def rows_cols(shape) -> tuple[int, int]:
    """rows(param) and cols(param): size(-2) (1 below 2 dims) and size(-1) (1 for 0-d)."""
    return (shape[-2] if len(shape) >= 2 else 1), (shape[-1] if len(shape) >= 1 else 1)


def reduced_size(shape, tag: str) -> int:
    """The number of slots of a tensor of `shape` reduced as `tag` says."""
    rows, cols = rows_cols(shape)
    numel = 1
    for n in shape:
        numel *= n
    if numel == 0:
        return 0
    return numel // {"row": cols, "col": rows, "mat": rows * cols}[tag]


def reduced_shape(shape, tag: str, view: tuple[int, int] = (1, 1)) -> tuple[int, ...]:
    """The keepdim shape of a state reduced as `tag` says in the kernels' `view` (what the
    torch class allocates): the cols' axes (row), the rows' (col) or both (mat) set to 1."""
    p, q = view
    shape = list(shape)
    axes = []
    if tag in ("row", "mat"):
        axes += range(-q, 0)
    if tag in ("col", "mat"):
        axes += range(-(p + q), -q)
    for a in axes:
        if -a <= len(shape):
            shape[a] = 1
    return tuple(shape)


def check_reduced(name: str, t, p, tag: str, view: tuple[int, int] = (1, 1)) -> None:
    """A reduced state must have the keepdim shape of its param (of an empty param, any
    empty shape: the kernels neither read nor write it)."""
    want = reduced_shape(p.shape, tag, view)
    if tuple(t.shape) != want and not (p.numel() == 0 and t.numel() == 0):
        raise ValueError(
            f"{name}: a tensor of shape {tuple(t.shape)} for a param of shape {tuple(p.shape)}, expected {want}"
        )


def axis_tables(shapes: list, tags: list[str]):
    """rows, cols, slot offsets, slot sizes (int64, [tensors][slots]) and the slot values
    (float64) for tensors of `shapes` and slot vectors of `tags`."""
    rows = np.array([rows_cols(s)[0] for s in shapes] or [0], dtype=np.int64)
    cols = np.array([rows_cols(s)[1] for s in shapes] or [0], dtype=np.int64)
    sizes = np.array([reduced_size(s, tag) for s in shapes for tag in tags] or [0], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    values = np.zeros(max(1, int(sizes.sum())), dtype=np.float64)
    return rows, cols, offsets, sizes, values
