"""Shape classes: what a value holds per parameter tensor, and the checks on them.

Every value of a program has a shape class besides its scope:
  SCALAR        one number per tensor (host, tensor and global scope values)
  ELEMENT       one number per element, shaped like the parameter
  reduced(A)    the parameter reduced over the trailing axes A (negative: counted from the
                end) with keepdim semantics: size 1 along each axis of A, the parameter's size
                along the others. `mean(grad**2, axis=-1)` of an (m, n) grad is (m, 1).

Broadcasting (torch's rule, keepdim makes it total): a value reduced over A combined with one
reduced over B is reduced over A & B (a row vector times a column vector is a matrix), with
ELEMENT (A = {}) absorbing everything and SCALAR the identity. The checker reports what
cannot be right whatever the shapes: reducing an axis that is already size 1, assigning a
state a value of another shape, an axis reduction on a tensor that may lack the axis.

Per-tensor rules: a statement `if ndim(param) >= 2:` runs its body for the tensors whose
rank satisfies the condition (Adafactor factors matrices only). The condition is kept as
the set of ranks it admits (`Guard`), so that "may this value be computed for a 1-D
tensor" is a subset test. A state declares the ranks it exists for (`ndim: ">= 2"`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .errors import Loc, SpecError
from .expr import GRAD, NDIM_SYMBOL, NUMEL_SYMBOL, PARAM, REDUCTIONS, SIZE_RANKS, AxisReduction, ReduceSum
from .spec import TensorIf

MAX_RANK = 8  # ranks above this behave like MAX_RANK for the conditions (ndim >= k, k <= 8)


@dataclass(frozen=True)
class Shape:
    """`axes` None: a scalar per tensor; otherwise the reduced trailing axes (empty: element)."""

    axes: frozenset | None

    @property
    def is_scalar(self) -> bool:
        return self.axes is None

    @property
    def is_element(self) -> bool:
        return self.axes == frozenset()

    @property
    def is_reduced(self) -> bool:
        return bool(self.axes)

    def describe(self) -> str:
        if self.is_scalar:
            return "a per-tensor scalar"
        if self.is_element:
            return "element-shaped (like param)"
        return f"reduced over axis {format_axes(self.axes)}"


SCALAR = Shape(None)
ELEMENT = Shape(frozenset())


def reduced(axes) -> Shape:
    return Shape(frozenset(axes))


def format_axes(axes) -> str:
    axes = sorted(axes)
    return str(axes[0]) if len(axes) == 1 else "(" + ", ".join(map(str, axes)) + ")"


def broadcast(a: Shape, b: Shape) -> Shape:
    if a.is_scalar:
        return b
    if b.is_scalar:
        return a
    return Shape(a.axes & b.axes)


def min_rank(axes) -> int:
    """The rank a tensor needs to have every axis of `axes` (-2 needs 2 dims)."""
    return max((-a for a in axes), default=0)


# --------------------------------------------------------------------------- guards
Guard = frozenset  # the ranks (0..MAX_RANK) a per-tensor condition admits
ALL_RANKS: Guard = frozenset(range(MAX_RANK + 1))


def guard_of(cond: sympy.Basic) -> Guard:
    """The ranks for which `cond` (a condition on ndim(param) and numbers) holds."""
    ranks = set()
    for r in ALL_RANKS:
        value = cond.xreplace({NDIM_SYMBOL: sympy.Integer(r)})
        if value not in (sympy.true, sympy.false):
            raise ValueError("not a condition on ndim(param) alone")
        if value is sympy.true:
            ranks.add(r)
    return frozenset(ranks)


def guard_condition(guard: Guard) -> sympy.Basic:
    """The simplest `ndim` condition admitting exactly `guard` (for printing)."""
    if guard == ALL_RANKS:
        return sympy.true
    lo, hi = min(guard, default=0), max(guard, default=0)
    if guard == frozenset(range(lo, hi + 1)):
        if hi == MAX_RANK:
            return sympy.Ge(NDIM_SYMBOL, lo)
        if lo == 0:
            return sympy.Le(NDIM_SYMBOL, hi)
        if lo == hi:
            return sympy.Eq(NDIM_SYMBOL, lo)
        return sympy.And(sympy.Ge(NDIM_SYMBOL, lo), sympy.Le(NDIM_SYMBOL, hi))
    return sympy.Or(*[sympy.Eq(NDIM_SYMBOL, r) for r in sorted(guard)])


def guard_text(guard: Guard) -> str:
    cond = guard_condition(guard)
    return str(cond).replace("ndim", "ndim(param)")


# --------------------------------------------------------------------------- inference
def shape_of(expr: sympy.Basic, shapes: dict[str, Shape], loc: Loc | None, guard: Guard | None = ALL_RANKS) -> Shape:
    """The shape class of `expr`, from the shapes of the names it reads; an axis reduction
    that cannot be right is a SpecError at `loc` (on a tensor of a rank in `guard` that lacks
    its axes: None skips that check)."""
    if expr.is_Symbol:
        return shapes.get(expr.name, SCALAR)
    if expr.is_Atom:
        return SCALAR
    if isinstance(expr, AxisReduction):
        return _axis_reduction_shape(expr, shapes, loc, guard)
    if isinstance(expr, sympy.Piecewise):
        out = SCALAR
        for piece in expr.args:
            out = broadcast(out, shape_of(piece.expr, shapes, loc, guard))
            out = broadcast(out, shape_of(piece.cond, shapes, loc, guard))
        return out
    out = SCALAR
    for a in expr.args:
        out = broadcast(out, shape_of(a, shapes, loc, guard))
    return out if not isinstance(expr, REDUCTIONS) else SCALAR


def _axis_reduction_shape(expr, shapes, loc, guard) -> Shape:
    arg = shape_of(expr.args[0], shapes, loc, guard)
    axes = expr.axes
    name = expr.spelling
    if arg.is_scalar:
        raise SpecError(
            loc, f"{name}(..., axis={format_axes(axes)}) takes a per-element value; its argument is {arg.describe()}"
        )
    again = sorted(axes & arg.axes)
    if again:
        raise SpecError(
            loc,
            f"{name}(..., axis={format_axes(axes)}): the argument is already reduced over axis {again[0]} "
            f"({arg.describe()})",
        )
    need = min_rank(axes | arg.axes)
    short = sorted(r for r in (guard or ()) if r < need)  # guard None: shapes only, no rank check
    if short:
        raise SpecError(
            loc,
            f"{name}(..., axis={format_axes(axes)}) needs tensors of at least {need} dims, but this line runs "
            f"for ndim(param) = {short[0]} too; put it under `if ndim(param) >= {need}:`",
        )
    return Shape(arg.axes | axes)


def check_assignment(target: str, value: Shape, declared: Shape, loc: Loc) -> None:
    """A state (or param) keeps its declared shape: a new value of a shape class must have
    exactly that one (a per-tensor scalar, which fills it, is not checked here)."""
    if value == declared:
        return
    what = "`param`" if target == "param" else f"state `{target}`"
    raise SpecError(loc, f"{what} is {declared.describe()}, but is assigned a value {value.describe()}")


# --------------------------------------------------------------------------- the checker's pass
class RankTracker:
    """Shapes and per-tensor rules while the update is converted to SSA (lower._ssa): the
    shape of each new value, which ranks each value exists for, and the joins after an
    `if ndim(param) ...:`. Every mistake is a SpecError at its line."""

    def __init__(self, spec, states, scopes: dict[str, str]):
        self.guard: Guard = ALL_RANKS
        self.states = {s.name: s for s in states}
        self.shapes: dict[str, Shape] = {n: SCALAR for n in scopes}
        for name in [PARAM, GRAD, *spec.inputs]:
            self.shapes[name] = ELEMENT
        self.avail: dict[str, Guard] = {}
        for s in states:
            self.shapes[s.name] = Shape(frozenset(s.axes)) if s.scope == "element" else SCALAR
            if s.ranks is not None:
                self.avail[s.name] = s.ranks
        self.pending: Shape = SCALAR

    def check_states(self) -> None:
        for s in self.states.values():
            if s.axes and not shape_of(s.init, self.shapes, s.loc).is_scalar:
                raise SpecError(
                    s.loc, f"state `{s.name}` is reduced over axis {format_axes(s.axes)}: its init must be a number"
                )

    def check(self, stmt, env: dict, values, broken=frozenset()) -> None:
        """Before `stmt` is converted: what it reads exists for every tensor it runs for, and
        its value has the shape its target keeps. `broken`: variables whose line had an error
        (reading them is not a second one)."""
        if {s.name for s in stmt.expr.free_symbols} & set(broken):
            return
        expr = stmt.expr.xreplace({s: env[s.name] for s in stmt.expr.free_symbols if s.name in env})
        _check_full_means(expr, self.shapes, stmt.loc)
        for sym in sorted(expr.free_symbols, key=lambda s: s.name):
            have = self.avail.get(sym.name, ALL_RANKS)
            if not self.guard <= have:
                raise SpecError(
                    stmt.loc,
                    f"`{_var_of(sym.name, values)}` exists only for tensors with {guard_text(have)}, but this line runs "
                    f"for ndim(param) = {min(self.guard - have)} too",
                )
        state = self.states.get(stmt.target)
        if state is not None and state.ranks is not None and not self.guard <= state.ranks:
            raise SpecError(
                stmt.target_loc,
                f"state `{stmt.target}` exists only for tensors with {guard_text(state.ranks)}; assign it under "
                f"`if {guard_text(state.ranks)}:`",
            )
        shape = shape_of(expr, self.shapes, stmt.loc, self.guard)
        if state is not None and state.scope == "element" and not shape.is_scalar:
            check_assignment(stmt.target, shape, Shape(frozenset(state.axes)), stmt.loc)
        elif stmt.target in (PARAM, GRAD) and not (shape.is_element or shape.is_scalar):
            check_assignment(stmt.target, shape, ELEMENT, stmt.loc)
        self.pending = shape

    def defined(self, value) -> None:
        value.guard = None if self.guard == ALL_RANKS else self.guard
        self.shapes[value.name] = self.pending
        if value.guard is not None:
            self.avail[value.name] = self.guard

    def branch(self, stmt, env: dict, run, join) -> None:
        """`if ndim(param) ...:` run both sides under their ranks, then join each variable:
        a state that exists on one side only keeps that side's value; any other variable
        that differs becomes where(cond, a, b), computed for the ranks outside the `if`."""
        outer, ranks = self.guard, guard_of(stmt.cond)
        before = dict(env)
        sides = []
        for guard, block in ((outer & ranks, stmt.body), (outer - ranks, stmt.orelse)):
            env.clear()
            env.update(before)
            self.guard = guard
            run(block)
            sides.append(dict(env))
        self.guard = outer
        env.clear()
        env.update(before)
        (true_env, false_env), (true_ranks, false_ranks) = sides, (outer & ranks, outer - ranks)
        for var in list(dict.fromkeys([*true_env, *false_env])):
            a, b = true_env.get(var), false_env.get(var)
            state = self.states.get(var)
            # a state that exists for the ranks of one side only (not: of both sides)
            ranks = None if state is None else state.ranks
            if a == b or b is None or (ranks is not None and not false_ranks & ranks):
                env[var] = a
            elif a is None or (ranks is not None and not true_ranks & ranks):
                env[var] = b
            else:
                self.pending = broadcast(self.shapes.get(a.name, SCALAR), self.shapes.get(b.name, SCALAR))
                value = join(var, sympy.Piecewise((a, stmt.cond), (b, True)), stmt.loc)
                self.defined(value)
                env[var] = value.symbol


def _check_full_means(expr, shapes: dict[str, Shape], loc) -> None:
    """mean(x) is sum(x) / numel(param): of a reduced x (fewer elements than param) it is
    wrong, so a line that divides by numel(param) may not sum a reduced value whole."""
    if NUMEL_SYMBOL not in expr.free_symbols:
        return
    for a in sympy.preorder_traversal(expr):
        if isinstance(a, ReduceSum) and shape_of(a.args[0], shapes, loc, None).is_reduced:
            raise SpecError(
                loc, "mean(x) of a reduced value divides by numel(param); reduce its axes instead: mean(x, axis=...)"
            )


def _var_of(name: str, values) -> str:
    for v in values:
        if v.name == name:
            return v.var or name
    return name


def infer_shapes(program) -> None:
    """Set each value's shape class (the checks ran on the spec's own lines in RankTracker;
    the optimiser's passes keep shapes)."""
    shapes: dict[str, Shape] = {n: SCALAR for n in program.input_scopes}
    for name, scope in program.input_scopes.items():
        if scope == "element":
            shapes[name] = ELEMENT
    for s in program.states:
        if s.scope == "element":
            shapes[s.name] = Shape(frozenset(s.axes))
    for v in program.values:
        if v.is_reduction or v.scope in ("host", "global", "tensor"):
            v.shape = SCALAR
        else:
            v.shape = shape_of(v.expr, shapes, v.loc, v.guard or ALL_RANKS)
            if v.shape.is_scalar:
                v.shape = ELEMENT  # an element-scope value is a tensor, even of scalars only
        shapes[v.name] = v.shape


def fused_refusal(spec) -> str | None:
    """Why the fused path (C++ kernels on CPU, Triton on GPUs) does not compile `spec`, or
    None. Its kernels run axis reductions, reduced states and rank rules
    (optgen/backends/fused_axes.py) on a view of each tensor as (outer, rows, cols): for each
    rank, every axis set the spec reduces over must be the rows' trailing axes, the cols' or
    both, for one view (-3 with (-3, -2, -1), (-3, -2) with -1, ... but not -3 with -1), and a
    spec that views some rank other than by its last two axes may not read rows(param) or
    cols(param). fused=True is then a ValueError at construction and `optgen check` a
    warning, never a silent fallback."""
    from .backends.fused_axes import axis_view

    sets = list(_axis_sets(spec.update)) + [
        (s.ranks or ALL_RANKS, {frozenset(s.axes)}) for s in spec.state.values() if s.axes
    ]
    at = {rank: set().union(*(axes for ranks, axes in sets if rank in ranks)) for rank in ALL_RANKS}
    for here in at.values():
        if axis_view(here) is None:
            return (
                f"{spec.name} reduces over the axes {_listed(here)}, which no one view of a tensor as (outer, rows, "
                "cols) gives the fused kernels (each set must be the rows' trailing axes, the cols' or both); "
                "use foreach=True (or the for-loop) instead of fused=True"
            )
    viewed = set().union(*(here for here in at.values() if axis_view(here) != (1, 1)))
    if viewed and {s.name for s in _symbols_of(spec.update)} & {"rows", "cols"}:
        return (
            f"{spec.name} reduces over the axes {_listed(viewed)} and reads rows(param) or cols(param): the fused "
            "kernels view its tensors with other rows and cols; use foreach=True (or the for-loop) instead of fused=True"
        )
    return None


def _listed(sets) -> str:
    return ", ".join(format_axes(a) for a in sorted(sets, key=sorted))


def _axis_sets(statements, ranks: frozenset = ALL_RANKS):
    """(the ranks a statement runs for, the axis sets it reduces over), through rank rules,
    option branches and loops."""
    for st in statements:
        if isinstance(st, TensorIf):
            held = guard_of(st.cond)
            yield from _axis_sets(st.body, ranks & held)
            yield from _axis_sets(st.orelse, ranks - held)
        elif hasattr(st, "body"):
            yield from _axis_sets(st.body, ranks)
            yield from _axis_sets(getattr(st, "orelse", []), ranks)
        elif hasattr(st, "expr"):
            yield ranks, {r.axes for r in st.expr.atoms(AxisReduction)}


def axis_constructs(spec) -> list[str]:
    """What of the shape constructs `spec` uses (reduced states, rank rules, axis
    reductions, rows/cols): what needs each tensor whole."""
    uses = []
    if any(s.axes for s in spec.state.values()):
        uses.append("states reduced over axes")
    if _statements_use(spec.update, lambda st: _is_rank_rule(st)):
        uses.append("`if ndim(param) ...:` rules")
    if _statements_use(spec.update, lambda st: hasattr(st, "expr") and st.expr.has(AxisReduction)):
        uses.append("axis reductions (mean(x, axis=...))")
    sizes = {s.name for s in _symbols_of(spec.update)} & set(SIZE_RANKS)
    if sizes:
        uses.append(" and ".join(f"{n}(param)" for n in sorted(sizes)))
    return uses


def _statements(statements):
    for st in statements:
        yield st
        if hasattr(st, "body"):
            yield from _statements(st.body)
            yield from _statements(getattr(st, "orelse", []))  # a loop (spec.Repeat) has none


def _symbols_of(statements) -> set:
    out = set()
    for st in statements:
        if hasattr(st, "expr"):
            out |= st.expr.free_symbols
        else:  # an if (body, orelse) or a loop (count, body)
            out |= _symbols_of(st.body) | _symbols_of(getattr(st, "orelse", []))
            out |= getattr(st, "count", sympy.Integer(0)).free_symbols
    return out


def _is_rank_rule(stmt) -> bool:
    return isinstance(stmt, TensorIf)


def _statements_use(statements, test) -> bool:
    for st in statements:
        if test(st):
            return True
        if hasattr(st, "body") and (_statements_use(st.body, test) or _statements_use(getattr(st, "orelse", []), test)):
            return True
    return False
