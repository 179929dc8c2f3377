"""Static facts of a spec: an interval for each state that holds at every step (by
induction on the step, from the hyperparameter ranges), and the denominators of the update
that can or cannot be shown > 0.

A denominator the bounds cannot show positive is searched for a zero at the first step
from simple inputs (grad 0 or 1, param 0 or 1, hyperparameters at their defaults or at a
closed end of their range). A zero found is reported with that input; otherwise the
finding says the positivity could not be shown. Both are warnings: the spec may guard
the division in a way the analysis does not see."""

from __future__ import annotations

import itertools

import numpy as np
import sympy

from ..check import Finding
from ..expr import GRAD, PARAM, SIZE_RANKS, STEP, AxisReduction
from ..ir import Program
from ..limits import MAX_INLINED
from ..lower import lower
from ..matrix import uses_matrix_view
from ..program_facts import inline
from ..spec import If, Interval, Repeat, Spec, TensorIf, holds
from . import numeric as N
from .bounds import bounds, is_positive, state_invariants
from .sides import hyper_table


def _facts(spec: Spec, options: dict[str, bool], program: Program | None) -> tuple[Program, dict[str, Interval]]:
    """The lowered program and the bounds table: hyperparameter ranges and state intervals
    (by their spec names: one spec alone needs no renaming)."""
    program = program or lower(spec, options)
    table = hyper_table(spec, set(spec.scalar_hypers))
    inits = {s.name: s.init for s in program.states + program.group_states}
    outputs = {**program.outputs, **program.group_outputs}  # group states: one number each, as a state
    updates = {s.name: inline(program, outputs[s.name]) for s in program.states + program.group_states}
    return program, {**table, **state_invariants(inits, updates, table)}


def state_facts(spec: Spec, options: dict[str, bool] | None = None) -> dict[str, Interval]:
    """State name -> an interval it stays in at every step (REAL when nothing is known)."""
    options = options or spec.default_options()
    program, table = _facts(spec, options, lower(spec, options, optimize=False))
    return {s.name: table[s.name] for s in program.states}


def nonneg_states(spec: Spec, options: dict[str, bool] | None = None) -> set[str]:
    return {n for n, iv in state_facts(spec, options).items() if iv.lo >= 0}


def denominator_findings(
    spec: Spec, options: dict[str, bool] | None = None, program: Program | None = None
) -> list[Finding]:
    """A warning, at the statement, for each division whose denominator is not shown > 0.
    `program`: the spec already lowered with these options (saves lowering it again)."""
    program, table = _facts(spec, options or spec.default_options(), program)
    findings = []
    for stmt, denominator in _divisions(spec, program.options):
        if denominator is None:
            findings.append(Finding(stmt.loc, "cannot show a denominator is > 0 (too large to analyse)", "warning"))
            continue
        if is_positive(bounds(denominator, table)):
            continue
        witness = _zero_witness(spec, program, denominator)
        text = _short(denominator)
        if witness:
            findings.append(Finding(stmt.loc, f"the denominator {text} can be 0: {witness}", "warning"))
        else:
            findings.append(Finding(stmt.loc, f"cannot show the denominator {text} is > 0", "warning"))
    return findings


def _divisions(spec: Spec, options: dict[str, bool]):
    """(statement, denominator over the inputs) for each division written in the update,
    except inside where(...) branches (the spec's own guard). A value whose inlined form would
    pass limits.MAX_INLINED nodes (each use of a value copies it, so chains grow
    exponentially) is left a name: its denominators are then not over the inputs (None)."""
    env: dict[str, sympy.Expr] = {}
    sizes: dict[str, int] = {}

    def inlined_size(expr: sympy.Expr) -> int:
        total, stack = 0, [expr]
        while stack and total <= MAX_INLINED:
            e = stack.pop()
            total += sizes.get(e.name, 1) if isinstance(e, sympy.Symbol) else 1
            stack.extend(e.args)
        return total

    def run(block):
        for stmt in block:
            if isinstance(stmt, If):
                yield from run(stmt.body if holds(stmt.cond, options) else stmt.orelse)
                continue
            if isinstance(stmt, TensorIf):  # a per-tensor rule: each side's divisions
                saved = dict(env), dict(sizes)
                yield from run(stmt.body)
                env.clear(), sizes.clear()
                env.update(saved[0]), sizes.update(saved[1])
                yield from run(stmt.orelse)
                continue
            if isinstance(stmt, Repeat) or uses_matrix_view(stmt.expr):
                # a loop's values and a matrix product are not reasoned about: unknown here
                for target in {a.target for a in _assigns(stmt)}:
                    env.pop(target, None)
                    sizes.pop(target, None)
                continue
            inlined = {s: env[s.name] for s in stmt.expr.free_symbols if s.name in env}
            for base in _denominators(stmt.expr):
                yield stmt, (base.xreplace(inlined) if inlined_size(base) <= MAX_INLINED else None)
            size = inlined_size(stmt.expr)
            if size <= MAX_INLINED:
                env[stmt.target], sizes[stmt.target] = stmt.expr.xreplace(inlined), size
            else:  # left a name (unknown), never built
                env.pop(stmt.target, None)
                sizes.pop(stmt.target, None)

    yield from run(spec.update)


def _denominators(expr: sympy.Expr) -> list[sympy.Expr]:
    out = []

    def walk(e, guarded: bool):
        if isinstance(e, sympy.Pow) and e.exp.is_negative and not guarded and e.base not in out:
            out.append(e.base)
        for a in e.args:
            walk(a, guarded or isinstance(e, sympy.Piecewise))

    walk(expr, False)
    return out


def _zero_witness(spec: Spec, program: Program, denominator: sympy.Expr) -> str | None:
    """A first-step input at which the denominator is exactly 0, described, or None."""
    if denominator.has(AxisReduction) or {s.name for s in denominator.free_symbols} & set(SIZE_RANKS):
        return None  # the samples are flat rows of elements, without a tensor's axes
    settings = _hyper_settings(spec)
    given = (0.0, 1.0) if spec.inputs else (0.0,)  # every step() input at once (`hessian`)
    points = list(itertools.product((0.0, 1.0), (0.0, 1.0), given, range(len(settings))))
    env = {**N.base_env(), STEP: np.float64(1)}
    env[PARAM] = np.array([[p] * N.ELEMENTS for p, _, _, _ in points])
    env[GRAD] = np.array([[g] * N.ELEMENTS for _, g, _, _ in points])
    for name in spec.inputs:
        env[name] = np.array([[h] * N.ELEMENTS for _, _, h, _ in points])
    for name in spec.scalar_hypers:
        env[name] = np.array([[settings[i][1][name]] for _, _, _, i in points])
    for s in program.states + program.group_states:
        env[s.name] = N.evaluate(s.init, env)
    value = np.broadcast_to(N.compile_batch(denominator)(env), (len(points), N.ELEMENTS))
    hits = np.flatnonzero(np.any(value == 0, axis=1))
    if not hits.size:
        return None
    p, g, h, i = points[hits[0]]
    given = "".join(f", {name} = {h:g}" for name in spec.inputs)
    return f"at the first step with grad = {g:g}{given}, param = {p:g}, {settings[i][0]} (states at their init)"


def _hyper_settings(spec: Spec) -> list[tuple[str, dict[str, float]]]:
    """The defaults, then each hyperparameter alone at a closed end of its range."""
    defaults = {}
    for name, (h, i) in spec.scalar_hypers.items():
        source = spec.hyperparameters[h.captured] if h.captured else h
        value = source.default[0 if h.captured else i]
        defaults[name] = float(np.finfo(np.float64).eps if value is None else value)  # `none: dtype_eps`
    settings = [("default hyperparameters", defaults)]
    for name, (h, _) in spec.scalar_hypers.items():
        for end, is_open in ((h.range.lo, h.range.lo_open), (h.range.hi, h.range.hi_open)):
            if not is_open and np.isfinite(end) and end != defaults[name]:
                settings.append((f"{name} = {end:g}", {**defaults, name: end}))
    return settings


def _short(expr) -> str:
    text = str(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def _assigns(stmt) -> list:
    if isinstance(stmt, Repeat):
        return [a for inner in stmt.body for a in _assigns(inner)]
    if isinstance(stmt, If):
        return [a for inner in stmt.body + stmt.orelse for a in _assigns(inner)]
    return [stmt]
