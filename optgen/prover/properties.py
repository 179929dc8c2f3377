"""Claims about one spec: a limit, an invariant of its states, a scale invariance.

Names in these claims are the spec's: hyperparameters, states, `param`, `grad`, `step` and
every variable the update assigns, read at the end of the update (a state name in a limit
is its new value). An invariant is about the stored states: it must hold before the first
step and after every step."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import sympy

from ..errors import Loc, SpecError
from ..expr import GRAD, STEP, STEP_SYMBOL, symbol
from ..spec import Interval, Spec
from . import numeric as N
from .algebra import drop_positive_factors, is_zero, pull_scalars
from .bounds import assumptions_of, bounds, is_nonneg, is_positive
from .equivalence import bind_hypers
from .result import PROVEN, UNKNOWN, Obligation, Proof, verdict
from .sides import (
    GRAD_SYMBOL,
    PARAM0,
    Side,
    assume_invariants,
    build_side,
    hyper_table,
    resolve_side_options,
    symbolic_values,
)
from .source import Text, expr_from

LIMIT_PROBE = 1e12  # where a claimed limit in `step` is re-checked numerically
INVARIANT_STEPS = 6


@dataclass
class Single:
    """What every single-spec claim carries: the spec, its specialisation, where it is."""

    spec: Spec
    options: dict[str, Text] = field(default_factory=dict)
    given: dict[str, Text] = field(default_factory=dict)
    loc: Loc | None = None

    def side(self) -> tuple[Side, dict[str, Interval], list[str]]:
        hypers = bind_hypers(self.spec, self.given, self.loc)
        side = build_side(self.spec, "a", resolve_side_options(self.spec, self.options, self.loc), hypers)
        free = [n for n in self.spec.scalar_hypers if n not in self.given]
        table = assume_invariants([side], hyper_table(self.spec, set(free)))
        return side, table, free

    def names(self, side: Side) -> dict[str, sympy.Basic]:
        return {**side.hypers, **side.inputs, STEP: STEP_SYMBOL, GRAD: GRAD_SYMBOL, **side.values}


def _scopes(side: Side) -> dict[str, str]:
    return {sym.name: side.scopes[n] for n, sym in side.inputs.items()}


# --------------------------------------------------------------------------- limit
@dataclass
class Limit(Single):
    expr: Text = ""
    toward: Text = ""  # "step -> oo", "eps -> 0+"
    equals: Text = ""

    def describe(self) -> str:
        return f"{_text(self.expr)} -> {_text(self.equals)} as {_text(self.toward)}"


_TOWARD = re.compile(r"^\s*([A-Za-z_]\w*)\s*->\s*(oo|inf|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([+-]?)\s*$")


def _text(value: Text) -> str:
    return str(getattr(value, "value", value))


def prove_limit(c: Limit) -> Proof:
    side, table, _ = c.side()
    names = c.names(side)
    expr = expr_from(c.expr, names, "the limit's expression", c.loc)
    claimed = expr_from(c.equals, names, "the limit's value", c.loc)
    var, target, direction = _parse_toward(c, names)
    proof = Proof(c.describe(), UNKNOWN)
    probe = sympy.Symbol("x", positive=True) if var == STEP_SYMBOL else var
    try:
        value = sympy.limit(expr.xreplace({var: probe}), probe, target, direction)
    except (NotImplementedError, ValueError, TypeError) as exc:
        proof.obligations.append(Obligation("SymPy computes the limit", UNKNOWN, str(exc)))
        return proof
    if value.has(sympy.Limit, sympy.AccumBounds, sympy.nan) or not value.is_finite:
        proof.obligations.append(Obligation("SymPy computes the limit", UNKNOWN, f"got {value}"))
        return proof
    proof.obligations.append(Obligation("SymPy computes the limit", PROVEN, str(value)))
    if is_zero(value - claimed, table):
        proof.obligations.append(Obligation("the limit is the claimed value", PROVEN))
    else:
        probe_at = LIMIT_PROBE if target == sympy.oo else float(target) + (1e-9 if direction == "+" else -1e-9)
        proof.counterexample = _limit_counterexample(side, table, expr, claimed, value, var, probe_at)
        status = "fails" if proof.counterexample is not None else UNKNOWN
        proof.obligations.append(Obligation("the limit is the claimed value", status, f"SymPy's limit is {value}"))
    proof.status = verdict(proof.obligations, proof.counterexample)
    return proof


def _parse_toward(c: Limit, names: dict):
    m = _TOWARD.match(_text(c.toward))
    if not m:
        raise SpecError(
            getattr(c.toward, "loc", c.loc), "`as:` expected `name -> value`, e.g. `step -> oo` or `eps -> 0+`"
        )
    name, target, side = m.groups()
    if name not in names or name in (GRAD,) or not (name == STEP or names[name].is_Symbol):
        raise SpecError(
            getattr(c.toward, "loc", c.loc), f"`as:` the variable must be `step` or a free hyperparameter, not `{name}`"
        )
    value = sympy.oo if target in ("oo", "inf") else sympy.Rational(target)
    return names[name], value, side or ("-" if value == sympy.oo else "+")


def _limit_counterexample(side, table, expr, claimed, value, var, probe_at: float) -> dict | None:
    """Hyperparameters where the limit and the claimed value differ, re-checked by
    evaluating the expression itself in float64 close to the limit point."""
    sampler = N.Sampler(seed=3)
    scopes = _scopes(side)
    env = N.random_env([expr, claimed, value], table, scopes, sampler)
    env.update({n: sampler.scalar(iv) for n, iv in table.items() if n not in env and n not in scopes})  # a full point
    near = {**env, var.name: np.float64(probe_at)}
    at_limit, wanted, probed = N.evaluate(value, env), N.evaluate(claimed, env), N.evaluate(expr, near)
    mismatch = N.differ(at_limit, wanted) & ~N.differ(probed, at_limit)
    trial = N.first_divergence(mismatch & N.differ(probed, wanted))
    if trial is None:
        return None
    point = {k: v for k, v in N.pick(env, trial).items() if k in table and k != var.name}
    return {
        "hyperparameters": point,
        f"{var.name}": float(near[var.name]),
        "expression there": float(probed[trial, 0]),
        "limit": float(at_limit[trial, 0]),
        "claimed": float(wanted[trial, 0]),
        "checked_by": "float64 evaluation of the expression near the limit point",
    }


# --------------------------------------------------------------------------- invariant
@dataclass
class Invariant(Single):
    relation: Text = ""

    def describe(self) -> str:
        return f"invariant {_text(self.relation)}"


def prove_invariant(c: Invariant) -> Proof:
    side, table, free = c.side()
    # Parsed over plain symbols: with the states' signs known, SymPy would decide `v >= 0`
    # on the spot and leave no relation to prove.
    plain = {n: symbol(s.name) for n, s in side.inputs.items()}
    rel = expr_from(c.relation, {**side.hypers, **plain}, "the invariant", c.loc, condition=True)
    if not isinstance(rel, (sympy.GreaterThan, sympy.StrictGreaterThan, sympy.LessThan, sympy.StrictLessThan)):
        raise SpecError(
            getattr(c.relation, "loc", c.loc), "an invariant is one comparison: a >= b, a > b, a <= b or a < b"
        )
    back = {plain[n]: side.inputs[n] for n in plain}
    big, small = (
        (rel.lhs, rel.rhs) if isinstance(rel, (sympy.GreaterThan, sympy.StrictGreaterThan)) else (rel.rhs, rel.lhs)
    )
    big, small = big.xreplace(back), small.xreplace(back)
    strict = isinstance(rel, (sympy.StrictGreaterThan, sympy.StrictLessThan))
    gap = big - small
    holds = is_positive if strict else is_nonneg
    init = {side.inputs[n]: side.init[n] for n in side.states} | {side.inputs["param"]: PARAM0}
    after = {side.inputs[n]: side.update[n] for n in side.inputs}
    step_table = _assume(gap, table, strict)
    new_gap = _use_hypothesis(gap.xreplace(after), gap)
    obligations = [
        Obligation("holds before the first step", PROVEN if holds(bounds(gap.xreplace(init), table)) else UNKNOWN),
        Obligation("every step keeps it", PROVEN if holds(bounds(new_gap, step_table)) else UNKNOWN),
    ]
    counterexample = (
        None if all(o.status == PROVEN for o in obligations) else _invariant_run(side, table, free, big, small, strict)
    )
    return Proof(c.describe(), verdict(obligations, counterexample), obligations, counterexample)


GAP = symbol("gap")  # stands for the invariant's gap (big - small) before the step


def _assume(gap: sympy.Expr, table: dict, strict: bool) -> dict:
    """The induction hypothesis as a fact: a state that is the gap (`v >= 0`) gets the
    interval; otherwise the symbol GAP stands for it (see _use_hypothesis)."""
    hypothesis = Interval(0.0, np.inf, strict, True)
    if gap.is_Symbol:
        return {**table, gap.name: _meet(table.get(gap.name), hypothesis)}
    return {**table, GAP.name: hypothesis}


def _meet(iv: Interval | None, other: Interval) -> Interval:
    if iv is None:
        return other
    lo = max((iv.lo, iv.lo_open), (other.lo, other.lo_open))
    hi = min((iv.hi, not iv.hi_open), (other.hi, not other.hi_open))
    return Interval(lo[0], hi[0], lo[1], not hi[1])


def _use_hypothesis(new_gap: sympy.Expr, gap: sympy.Expr) -> sympy.Expr:
    """Put the induction hypothesis into the updated gap: for `x - y >= 0` with a state x
    (or y) appearing once, linearly, the old x becomes y + gap (gap >= 0 by hypothesis).
    A gap that is a single state needs nothing: its interval is the hypothesis."""
    if gap.is_Symbol:
        return new_gap
    for s in sorted(gap.free_symbols, key=lambda x: x.name):
        c = gap.coeff(s)
        rest = gap - c * s
        if c in (1, -1) and s not in rest.free_symbols:
            return new_gap.xreplace({s: (GAP - rest) / c})
    return new_gap


def _invariant_run(side: Side, table: dict, free: list[str], big, small, strict: bool) -> dict | None:
    """Runs from the initial state under random gradients; a step where the relation
    fails is re-run by the Reference interpreter before it is reported."""
    for seed in (0, 1, 2):
        sampler = N.Sampler(seed)
        hypers = {n: sampler.scalar(table[n]) for n in free}
        x0 = sampler.tensor()
        grads = [sampler.tensor() for _ in range(INVARIANT_STEPS)]
        trial = _first_violation(side, hypers, x0, grads, big, small, strict, sampler.trials)
        if trial is not None:
            found = _invariant_rerun(
                side,
                {n: float(v[trial, 0]) for n, v in hypers.items()},
                x0[trial],
                [g[trial] for g in grads],
                big,
                small,
                strict,
            )
            if found is not None:
                return found
    return None


def _violated(big_v, small_v, strict: bool) -> np.ndarray:
    tol = N.RTOL * (1 + np.abs(big_v) + np.abs(small_v))
    with np.errstate(invalid="ignore"):
        bad = big_v - small_v < (tol if strict else -tol)
    return bad & np.isfinite(big_v) & np.isfinite(small_v)


def _first_violation(side, hypers, x0, grads, big, small, strict, trials):
    env = {**N.base_env(), **hypers, PARAM0.name: x0, GRAD_SYMBOL.name: grads[0]}
    state = {side.inputs[n].name: N.evaluate(side.init[n], env) for n in side.states}
    state[side.inputs["param"].name] = x0
    for step in range(len(grads) + 1):
        if step:
            env = {**N.base_env(), **hypers, **state, STEP: np.float64(step), GRAD_SYMBOL.name: grads[step - 1]}
            state = {side.inputs[n].name: N.evaluate(side.update[n], env) for n in side.inputs}
        now = {**N.base_env(), **hypers, **state}
        trial = N.first_divergence(_violated(N.evaluate(big, now), N.evaluate(small, now), strict))
        if trial is not None:
            return trial
    return None


def _invariant_rerun(side: Side, hypers: dict, x0, grads, big, small, strict: bool) -> dict | None:
    from .equivalence import _one, _ReferenceRun

    run = _ReferenceRun(side, hypers, x0, grads[0])
    for step in range(len(grads) + 1):
        if step:
            run.step(step, grads[step - 1])
        state = {**run.inputs(), **hypers}
        big_v, small_v = _one(big, state), _one(small, state)
        if _violated(big_v, small_v, strict).any():
            named = {n: [float(x) for x in state[sym.name].ravel()] for n, sym in side.inputs.items()}
            return {
                "step": step,
                "hyperparameters": hypers,
                "initial_param": [float(x) for x in x0],
                "gradients": [[float(x) for x in g] for g in grads[:step]],
                "state": named,
                "larger side": [float(x) for x in big_v.ravel()],
                "smaller side": [float(x) for x in small_v.ravel()],
                "checked_by": "optgen.reference.Reference (float64)",
            }
    return None


# --------------------------------------------------------------------------- scale invariance
@dataclass
class ScaleInvariant(Single):
    expr: Text = ""
    of: str = ""

    def describe(self) -> str:
        return f"{_text(self.expr)} is invariant to a positive rescaling of {self.of}"


SCALE = sympy.Symbol("scale", positive=True)


def prove_scale_invariant(c: ScaleInvariant) -> Proof:
    side, table, _ = c.side()
    if c.of not in side.inputs and c.of not in side.values:
        raise SpecError(c.loc, f"`of: {c.of}`: {c.spec.name} has no state or value named `{c.of}`")
    known = table.get(side.inputs[c.of].name) if c.of in side.inputs else None
    v = symbol(f"{c.of}.value", **(assumptions_of(known) if known else {}))  # not a spec name
    values = {n: side.rename(e) for n, e in symbolic_values(c.spec, side.options, {c.of: v}).items()}
    expr = expr_from(c.expr, {**c.names(side), **values}, "the scale-invariant expression", c.loc)
    if c.of in side.inputs and c.of not in values:  # a state the update only reads
        expr = expr.xreplace({side.inputs[c.of]: v})
    if v not in expr.free_symbols:
        raise SpecError(c.loc, f"`{_text(c.expr)}` does not depend on `{c.of}`")
    scaled = expr.xreplace({v: SCALE * v})
    element = {sym.name for n, sym in side.inputs.items() if side.scopes[n] == "element"} | {
        v.name,
        GRAD_SYMBOL.name,
        PARAM0.name,
    }
    table = {**table, v.name: known or Interval(-np.inf, np.inf, True, True)}
    scaled_pulled = drop_positive_factors(pull_scalars(scaled, element, {SCALE.name}), {SCALE.name})
    difference = scaled_pulled - pull_scalars(expr, element, {SCALE.name})
    proof = Proof(c.describe(), UNKNOWN)
    proof.obligations.append(Obligation("unchanged when scaled", PROVEN if is_zero(difference, table) else UNKNOWN))
    if proof.obligations[0].status != PROVEN:
        proof.counterexample = _scale_counterexample(side, table, expr, scaled, v)
    proof.status = verdict(proof.obligations, proof.counterexample)
    return proof


def _scale_counterexample(side: Side, table: dict, expr, scaled, v) -> dict | None:
    sampler = N.Sampler(seed=5)
    scopes = {**_scopes(side), v.name: "element"}
    env = N.random_env([expr, scaled], {**table, SCALE.name: Interval(0.1, 10.0, False, False)}, scopes, sampler)
    trial = N.first_divergence(N.differ(N.evaluate(expr, env), N.evaluate(scaled, env)))
    if trial is None:
        return None
    from .equivalence import _one

    point = N.pick(env, trial)
    before, after = _one(expr, point), _one(scaled, point)  # a fresh float64 evaluation
    if not N.differ(before, after).any():
        return None
    return {
        "point": point,
        "value": float(before[0, 0]),
        "value scaled": float(after[0, 0]),
        "checked_by": "float64 re-evaluation",
    }
