"""Equivalence by simulation: spec `a` computes what spec `b` computes, under a state map.

The map gives each of a's inputs (param and states) as an expression of b's inputs, b's
ghost states, the hyperparameters and `step` (the number of updates done). The proof has
three obligations, each shown by SymPy reducing a difference to 0:

  (i)   the initial states correspond: a's inits equal the map of b's inits (the same
        initial param, and the first gradient, for inits that read it);
  (ii)  the gradient is taken at corresponding points: a's gradient point, with a's state
        given by the map, equals b's;
  (iii) one step commutes with the map: a's update, from the mapped state, equals the map
        of b's updated state, for a free gradient, free hyperparameters and step.

By induction the two produce the same gradient points and (mapped) states for every
gradient sequence. Where a side branches on `step == 1` the step is split into the first
step (from the initial states) and the later ones; a branch on hyperparameters only
(`momentum == 0`) is split into its cases. A `when:` condition (lo <= x and x <= hi) lets
the proof drop Min/Max arguments it decides: the equivalence then holds at the steps where
the condition does.

When an obligation is not proven, runs of both sides from the same initial point under
random gradients and hyperparameters look for a step where they diverge; a divergence is
re-run by the float64 Reference interpreter before it is reported as a counterexample."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from ..errors import Loc, SpecError
from ..expr import NUMEL_SYMBOL, PARAM, STEP, STEP_SYMBOL
from ..reference import Reference
from ..spec import Interval, Spec
from . import numeric as N
from .algebra import apply_case, host_atoms, host_cases, is_zero, resolve_minmax
from .result import PROVEN, Obligation, Proof, verdict
from .sides import (
    GRAD_SYMBOL,
    PARAM0,
    Ghost,
    Side,
    add_ghosts,
    assume_invariants,
    build_side,
    hyper_table,
    resolve_side_options,
)
from .source import Text, expr_from

STEPS_DONE = sympy.Symbol("_k", integer=True, positive=True)  # later steps: step = _k + 1 (no spec name starts with _)
REPLAY_STEPS = 4
REPLAY_SEEDS = (0, 1, 2)


@dataclass
class Equivalence:
    a: Spec
    b: Spec
    mapping: dict[str, Text] = field(default_factory=dict)
    a_options: dict[str, Text] = field(default_factory=dict)  # `given: options:`
    b_options: dict[str, Text] = field(default_factory=dict)  # `with: options:`
    a_hypers: dict[str, Text] = field(default_factory=dict)  # `given:` a's hyperparameters
    b_hypers: dict[str, Text] = field(default_factory=dict)  # `with: hyperparameters:`
    ghosts: list[Ghost] = field(default_factory=list)
    when: Text | None = None
    loc: Loc | None = None
    key_locs: dict[str, Loc] = field(default_factory=dict)  # map key -> where it is written

    def describe(self) -> str:
        text = f"{self.a.name} equivalent to {self.b.name}"
        binds = [f"{k} = {_plain(v)}" for k, v in {**self.a_hypers, **self.b_hypers}.items()]
        binds += [f"{k}={str(_plain(v)).lower()}" for k, v in {**self.a_options, **self.b_options}.items()]
        if binds:
            text += f" ({', '.join(binds)})"
        return text + (f" when {_plain(self.when)}" if self.when is not None else "")


def _plain(value: Text) -> str:
    return str(getattr(value, "value", value))


# --------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """Both sides in one namespace, the map, and what is known of every symbol."""

    a: Side
    b: Side
    mapping: dict[str, sympy.Expr]
    table: dict[str, Interval]  # symbol name -> interval (hyperparameter ranges, invariants)
    free: list[str]  # the free hyperparameters
    when: list[tuple[sympy.Expr, sympy.Expr]]  # (small, big): small <= big at the step
    condition: sympy.Basic | None


def setup(eq: Equivalence) -> Setup:
    a_hypers = bind_hypers(eq.a, eq.a_hypers, eq.loc)
    b_hypers = _other_hypers(eq, a_hypers)
    a = build_side(eq.a, "a", resolve_side_options(eq.a, eq.a_options, eq.loc), a_hypers)
    b = build_side(eq.b, "b", resolve_side_options(eq.b, eq.b_options, eq.loc), b_hypers)
    add_ghosts(b, eq.ghosts, a_hypers, eq.loc)
    free = [n for n in eq.a.scalar_hypers if n not in eq.a_hypers]
    table = assume_invariants([a, b], hyper_table(eq.a, set(free)))
    mapping = _parse_map(eq, a, b)
    condition, ordered = _parse_when(eq, a)
    return Setup(a, b, mapping, table, free, ordered, condition)


def bind_hypers(spec: Spec, given: dict[str, Text], loc: Loc | None) -> dict[str, sympy.Expr]:
    """Each scalar hyperparameter of `spec` -> its symbol, or the expression `given` binds
    it to (over the other hyperparameters and step)."""
    names = {n: spec.symbols[n] for n in spec.scalar_hypers}
    for name, value in given.items():
        if name not in names:
            raise SpecError(
                getattr(value, "loc", loc), f"{spec.name} has no hyperparameter `{name}`; it has {', '.join(names)}"
            )
    bound = {n: expr_from(v, {**names, STEP: STEP_SYMBOL}, f"the value of `{n}`", loc) for n, v in given.items()}
    symbols_of = {names[n]: e for n, e in bound.items()}
    bound = {n: e.xreplace(symbols_of) for n, e in bound.items()}
    for n, e in bound.items():
        if any(s in symbols_of for s in e.free_symbols):
            raise SpecError(
                getattr(given[n], "loc", loc), f"the value of `{n}` refers to another bound hyperparameter in a cycle"
            )
    return {**names, **bound}


def _other_hypers(eq: Equivalence, a_hypers: dict[str, sympy.Expr]) -> dict[str, sympy.Expr]:
    names = {**a_hypers, STEP: STEP_SYMBOL}
    out = {}
    for name in eq.b_hypers:
        if name not in eq.b.scalar_hypers:
            raise SpecError(getattr(eq.b_hypers[name], "loc", eq.loc), f"{eq.b.name} has no hyperparameter `{name}`")
    for name in eq.b.scalar_hypers:
        if name in eq.b_hypers:
            out[name] = expr_from(eq.b_hypers[name], names, f"the value of {eq.b.name}'s `{name}`", eq.loc)
        elif name in a_hypers:
            out[name] = a_hypers[name]
        else:
            raise SpecError(
                eq.loc,
                f"{eq.b.name}'s hyperparameter `{name}` is not one of {eq.a.name}'s: give its value under `with: hyperparameters:`",
            )
    return out


def _parse_map(eq: Equivalence, a: Side, b: Side) -> dict[str, sympy.Expr]:
    names = {**a.hypers, **b.inputs, STEP: STEP_SYMBOL}
    for key in eq.mapping:
        if key not in a.inputs:
            raise SpecError(
                eq.key_locs.get(key, eq.loc),
                f"map: `{key}` is not a state of {a.label} (states: {', '.join(a.states) or 'none'}) nor `param`",
            )
    out = {}
    for key in a.inputs:
        if key in eq.mapping:
            out[key] = expr_from(eq.mapping[key], names, f"the map of `{key}`", eq.loc)
        elif key in b.inputs:
            out[key] = b.inputs[key]
        else:
            raise SpecError(
                eq.loc, f"map: give {a.label}'s `{key}` in terms of {b.label}'s state ({b.label} has no `{key}`)"
            )
    return out


def _parse_when(eq: Equivalence, a: Side):
    if eq.when is None:
        return None, []
    names = {**a.hypers, **a.inputs, **a.values, STEP: STEP_SYMBOL}
    cond = expr_from(eq.when, names, "the `when` condition", eq.loc, condition=True)
    parts = cond.args if isinstance(cond, sympy.And) else (cond,)
    ordered = []
    for rel in parts:
        if isinstance(rel, (sympy.LessThan, sympy.StrictLessThan)):
            ordered.append((rel.lhs, rel.rhs))
        elif isinstance(rel, (sympy.GreaterThan, sympy.StrictGreaterThan)):
            ordered.append((rel.rhs, rel.lhs))
        else:
            raise SpecError(getattr(eq.when, "loc", eq.loc), "`when` takes comparisons a <= b joined by `and`")
    return cond, ordered


# --------------------------------------------------------------------------- obligations
@dataclass
class Goal:
    name: str
    left: sympy.Expr
    right: sympy.Expr


def goals(s: Setup) -> list[Goal]:
    a, b, m = s.a, s.b, s.mapping
    b_init = {b.inputs[n]: b.init[n] for n in b.states} | {b.inputs[PARAM]: PARAM0}
    out = [
        Goal(f"initial state corresponds: {k}", _init_of(a, k), m[k].xreplace(b_init).xreplace({STEP_SYMBOL: 0}))
        for k in m
    ]
    pre = {a.inputs[k]: m[k].xreplace({STEP_SYMBOL: STEP_SYMBOL - 1}) for k in m}
    post = {b.inputs[n]: b.update[n] for n in b.inputs}
    step_goals = [Goal("gradient points correspond", a.query.xreplace(pre), b.query)]
    step_goals += [Goal(f"one step commutes: {k}", a.update[k].xreplace(pre), m[k].xreplace(post)) for k in m]
    when = [(lo.xreplace(pre), hi.xreplace(pre)) for lo, hi in s.when]
    for label, subs in _step_cases(s, step_goals, b_init):
        for g in step_goals:
            left, right = (
                resolve_minmax(e.xreplace(subs), [(lo.xreplace(subs), hi.xreplace(subs)) for lo, hi in when], s.table)
                for e in (g.left, g.right)
            )
            out.append(Goal(f"{g.name}{label}", left, right))
    return _host_split(out, s)


def _init_of(side: Side, key: str) -> sympy.Expr:
    return PARAM0 if key == PARAM else side.init[key]


def _step_cases(s: Setup, step_goals: list[Goal], b_init: dict):
    """One case for every step, or, where a branch reads the step count, the first step
    (from the initial states) and the later ones (step = _k + 1, _k >= 1)."""
    exprs = [e for g in step_goals for e in (g.left, g.right)]
    on_step = any(STEP_SYMBOL in rel.free_symbols for e in exprs for rel in e.atoms(sympy.core.relational.Relational))
    if not on_step:
        return [("", {})]
    first = {**b_init, STEP_SYMBOL: sympy.S.One}
    return [(" (first step)", first), (" (later steps)", {STEP_SYMBOL: STEPS_DONE + 1})]


def _host_split(goals_: list[Goal], s: Setup) -> list[Goal]:
    out = []
    for g in goals_:
        atoms = host_atoms([g.left, g.right], set(s.free))
        if not atoms:
            out.append(g)
            continue
        for label, subs in host_cases(atoms, s.table):
            out.append(Goal(f"{g.name} [{label}]", apply_case(g.left, subs), apply_case(g.right, subs)))
    return out


def discharge(goal: Goal, s: Setup, sampler: N.Sampler) -> Obligation:
    """Screen numerically at random points, then ask SymPy for a proof that the difference
    is 0. A proof wins over the screen (float64 may cancel badly); where the screen found a
    difference only the cheap algebra is tried, and the obligation fails at that point
    (which need not be reachable: the verdict comes from runs, see `refute`)."""
    env = _random_env([goal.left, goal.right], s, sampler)
    left, right = N.evaluate(goal.left, env), N.evaluate(goal.right, env)
    mask = N.differ(left, right)
    trial = N.first_divergence(mask)
    if is_zero(goal.left - goal.right, s.table, thorough=trial is None):
        return Obligation(goal.name, PROVEN)
    if trial is not None:
        j = int(np.flatnonzero(mask[trial])[0])
        return Obligation(goal.name, "fails", f"{left[trial, j]:.6g} vs {right[trial, j]:.6g} at a sampled state")
    return Obligation(goal.name, "unknown", "SymPy could not reduce the difference to 0; no sampled point differs")


def _random_env(exprs, s: Setup, sampler: N.Sampler) -> dict:
    scopes = {sym.name: side.scopes[n] for side in (s.a, s.b) for n, sym in side.inputs.items()}
    return N.random_env(exprs, s.table, scopes, sampler)


# --------------------------------------------------------------------------- refutation
class Replay:
    """Runs both sides from the same initial parameter on the same gradients, a batch of
    random trials at once, checking the map at every step."""

    def __init__(self, s: Setup, seed: int):
        self.s = s
        self.sampler = N.Sampler(seed)
        self.hypers = {n: self.sampler.scalar(s.table[n]) for n in s.free}
        self.x0 = self.sampler.tensor()
        self.grads = [self.sampler.tensor() for _ in range(REPLAY_STEPS)]
        self.cache: dict = {}

    def eval(self, expr, env) -> np.ndarray:
        if expr not in self.cache:
            self.cache[expr] = N.compile_batch(expr)
        with np.errstate(all="ignore"):
            return np.broadcast_to(self.cache[expr](env), (self.sampler.trials, N.ELEMENTS)).astype(np.float64)

    def run(self) -> dict | None:
        s, a, b = self.s, self.s.a, self.s.b
        env = {**N.base_env(), **self.hypers, PARAM0.name: self.x0, GRAD_SYMBOL.name: self.grads[0]}
        a_state = {a.inputs[n].name: self.eval(_init_of(a, n), env) for n in a.inputs}
        b_state = {b.inputs[n].name: self.eval(_init_of(b, n), env) for n in b.inputs}
        live = np.ones(self.sampler.trials, dtype=bool)
        found = self.compare(0, {k: a_state[a.inputs[k].name] for k in s.mapping}, b_state, live)
        for step in range(1, REPLAY_STEPS + 1):
            if found:
                return found
            env = {**N.base_env(), **self.hypers, STEP: np.float64(step), GRAD_SYMBOL.name: self.grads[step - 1]}
            a_env, b_env = {**env, **a_state}, {**env, **b_state}
            if s.condition is not None:
                live &= np.all(self.eval(sympy.Piecewise((1, s.condition), (0, True)), a_env) == 1, axis=1)
            found = self.compare_query(step, a_env, b_env, live)
            a_state = {a.inputs[n].name: self.eval(a.update[n], a_env) for n in a.inputs}
            b_state = {b.inputs[n].name: self.eval(b.update[n], b_env) for n in b.inputs}
            found = found or self.compare(step, {k: a_state[a.inputs[k].name] for k in s.mapping}, b_state, live)
        return found

    def compare_query(self, step: int, a_env, b_env, live) -> dict | None:
        qa, qb = self.eval(self.s.a.query, a_env), self.eval(self.s.b.query, b_env)
        return self.divergence(step, "gradient point", qa, qb, live)

    def compare(self, step: int, a_values: dict, b_state: dict, live) -> dict | None:
        env = {**N.base_env(), **self.hypers, **b_state, STEP: np.float64(step)}
        for key, value in a_values.items():
            found = self.divergence(step, key, value, self.eval(self.s.mapping[key], env), live)
            if found:
                return found
        return None

    def divergence(self, step, what, mine, theirs, live) -> dict | None:
        trial = N.first_divergence(N.differ(mine, theirs) & live[:, None])
        if trial is None:
            return None
        return {"trial": trial, "step": step, "diverges": what}


def refute(s: Setup) -> dict | None:
    """A counterexample run, confirmed by the Reference interpreter, or None."""
    for seed in REPLAY_SEEDS:
        replay = Replay(s, seed)
        hit = replay.run()
        if hit is not None:
            confirmed = reference_rerun(s, replay, hit["trial"])
            if confirmed is not None:
                return confirmed
    return None


def reference_rerun(s: Setup, replay: Replay, trial: int) -> dict | None:
    """Re-run one trial with optgen's float64 Reference interpreter, one spec per side;
    only the map, the ghosts and the gradient points come from the proof's expressions."""
    run = _Rerun(
        s,
        {n: float(v[trial, 0]) for n, v in replay.hypers.items()},
        replay.x0[trial].copy(),
        [g[trial].copy() for g in replay.grads],
    )
    found = run.compare(0, run.a.inputs(), run.b_inputs())
    for step in range(1, REPLAY_STEPS + 1):
        if found:
            return found
        found = run.step(step)
    return found


class _Rerun:
    def __init__(self, s: Setup, hypers: dict, x0: np.ndarray, grads: list[np.ndarray]):
        self.s, self.hypers, self.x0, self.grads = s, hypers, x0, grads
        self.a = _ReferenceRun(s.a, hypers, x0, grads[0])
        self.b = _ReferenceRun(s.b, hypers, x0, grads[0])
        self.ghosts = [n for n in s.b.states if n not in self.b.keys]
        first = {**hypers, PARAM0.name: x0, GRAD_SYMBOL.name: grads[0]}
        self.ghost_values = {s.b.inputs[n].name: _one(s.b.init[n], first) for n in self.ghosts}
        self.before: tuple[dict, dict] = ({}, {})

    def b_inputs(self) -> dict:
        return {**self.b.inputs(), **self.ghost_values}

    def step(self, step: int) -> dict | None:
        s = self.s
        common = {**self.hypers, STEP: float(step), GRAD_SYMBOL.name: self.grads[step - 1]}
        self.before = (self.a.inputs(), self.b_inputs())
        a_env, b_env = {**common, **self.before[0]}, {**common, **self.before[1]}
        if s.condition is not None and not _one(sympy.Piecewise((1, s.condition), (0, True)), a_env).all():
            return None
        qa, qb = _one(s.a.query, a_env), _one(s.b.query, b_env)
        if N.differ(qa, qb).any():
            return self.report(step, "gradient point", qa, qb)
        self.ghost_values = {s.b.inputs[n].name: _one(s.b.update[n], b_env) for n in self.ghosts}
        self.a.step(step, self.grads[step - 1])
        self.b.step(step, self.grads[step - 1])
        return self.compare(step, self.a.inputs(), self.b_inputs())

    def compare(self, step: int, a_now: dict, b_now: dict) -> dict | None:
        env = {**b_now, **self.hypers, STEP: float(step)}
        for key, expr in self.s.mapping.items():
            mine, theirs = a_now[self.s.a.inputs[key].name], _one(expr, env)
            if N.differ(mine, theirs).any():
                return self.report(step, key, mine, theirs)
        return None

    def report(self, step: int, what: str, mine, theirs) -> dict:
        s = self.s
        a_before, b_before = self.before

        def named(side: Side, state: dict) -> dict:
            return {n: _floats(state[sym.name]) for n, sym in side.inputs.items() if sym.name in state}

        return {
            "step": step,
            "diverges": what,
            "hyperparameters": self.hypers,
            "initial_param": _floats(self.x0),
            "gradients": [_floats(g) for g in self.grads[:step]],
            s.a.label: {"state_before": named(s.a, a_before), "result": _floats(mine)},
            s.b.label: {"state_before": named(s.b, b_before), "result_mapped": _floats(theirs)},
            "checked_by": "optgen.reference.Reference (float64)",
        }


class _ReferenceRun:
    """One side run by the Reference interpreter, hyperparameters re-bound every step."""

    def __init__(self, side: Side, hypers: dict, x0: np.ndarray, first_grad: np.ndarray):
        self.side = side
        self.proof_hypers = hypers
        self.first = {**hypers, PARAM0.name: x0, GRAD_SYMBOL.name: first_grad}
        self.ref = Reference(side.spec, [{"params": [x0], **self.group(1), **side.options}])
        self.program_states = self.ref.compiled(self.ref.param_groups[0]).program.states
        self.keys = {st.name for st in self.program_states}

    def group(self, step: int) -> dict:
        env = {**self.proof_hypers, STEP: float(step)}
        values = {n: float(_one(e, env).flat[0]) for n, e in self.side.hypers.items()}
        group = {}
        for key, h in self.side.spec.hyperparameters.items():
            group[key] = tuple(values[n] for n in h.names) if h.is_tuple else values[h.names[0]]
        return group

    def step(self, step: int, grad: np.ndarray) -> None:
        self.ref.param_groups[0].update(self.group(step))
        self.ref.step([grad])

    def inputs(self) -> dict:
        out = {self.side.inputs[PARAM].name: self.ref.params[0].reshape(1, -1).copy()}  # Reference steps in place
        state = self.ref.state[0]
        for st in self.program_states:
            value = state[st.key] if state else _one(self.side.init[st.name], self.first)
            out[self.side.inputs[st.name].name] = np.array(value, dtype=np.float64).reshape(1, -1)
        return out


def _one(expr, env) -> np.ndarray:
    """`expr` at one point (arrays shaped (1, ELEMENTS) or scalars)."""
    shaped = {k: np.asarray(v, dtype=np.float64).reshape(1, -1) for k, v in env.items()}
    shaped.setdefault(NUMEL_SYMBOL.name, np.float64(N.ELEMENTS))
    with np.errstate(all="ignore"):
        return np.broadcast_to(N.compile_batch(expr)(shaped), (1, N.ELEMENTS)).astype(np.float64)


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float64).ravel()]


# --------------------------------------------------------------------------- the proof
def prove_equivalence(eq: Equivalence) -> Proof:
    s = setup(eq)
    sampler = N.Sampler(seed=7)
    obligations = [discharge(g, s, sampler) for g in goals(s)]
    counterexample = None
    if not all(o.status == PROVEN for o in obligations):
        counterexample = refute(s)
    proof = Proof(eq.describe(), verdict(obligations, counterexample), obligations, counterexample)
    if proof.status == "unknown" and any(o.status == "fails" for o in obligations):
        proof.notes.append(
            "an obligation fails at sampled states, but no run from the initial state diverged: the map may need an invariant"
        )
    return proof
