"""A side of a proof: one spec, specialised to options and hyperparameter bindings, with its
update as SymPy expressions over the proof's own symbols.

Both sides live in one namespace. Their inputs are renamed by side (`a.exp_avg`,
`b.exp_avg`: two specs may both call a state exp_avg); the gradient, the step count and the
hyperparameters are shared and matched by name, never by SymPy identity (a symbol carries
the assumptions of the spec it came from, so two specs' `lr` need not be the same object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import sympy

from ..errors import Loc, SpecError
from ..expr import GRAD, NDIM_SYMBOL, NUMEL_SYMBOL, PARAM, STEP, STEP_SYMBOL, symbol
from ..lower import lower, resolve_options
from ..matrix import matrix_location
from ..program_facts import inline
from ..shapes import axis_constructs
from ..spec import If, Interval, Spec, holds
from . import bounds as B
from .source import Text, expr_from

GRAD_SYMBOL = symbol(GRAD)  # the gradient both sides receive
PARAM0 = symbol(PARAM)  # the initial parameter, the same for both sides
SHARED = {STEP: STEP_SYMBOL, GRAD: GRAD_SYMBOL, "numel": NUMEL_SYMBOL, "ndim": NDIM_SYMBOL}


@dataclass
class Ghost:
    """A state one side carries for the proof only (AGD's last gradient)."""

    name: str
    init: Text
    update: Text


@dataclass
class Side:
    spec: Spec
    tag: str  # "a" (the claiming spec) or "b" (the other)
    options: dict[str, bool]
    hypers: dict[str, sympy.Expr]  # each scalar hyperparameter -> its value in the proof
    inputs: dict[str, sympy.Symbol] = field(default_factory=dict)  # param, states, ghosts
    scopes: dict[str, str] = field(default_factory=dict)  # input name -> element | tensor
    init: dict[str, sympy.Expr] = field(default_factory=dict)  # state -> value before step 1
    update: dict[str, sympy.Expr] = field(default_factory=dict)  # param, state -> new value
    query: sympy.Expr = sympy.S.Zero  # where the gradient is taken

    @cached_property
    def values(self) -> dict[str, sympy.Expr]:
        """Every variable of the update at its end (built on demand: `when:` and the
        single-spec claims read them)."""
        return {n: self.rename(e) for n, e in symbolic_values(self.spec, self.options).items()}

    @property
    def label(self) -> str:
        return self.spec.name

    @property
    def states(self) -> list[str]:
        return [n for n in self.inputs if n != PARAM]

    def rename(self, expr: sympy.Basic) -> sympy.Basic:
        """A spec expression over the proof's symbols."""
        table = {**SHARED, **self.hypers, **self.inputs}
        return expr.xreplace({s: table[s.name] for s in expr.free_symbols if s.name in table})

    def rename_init(self, expr: sympy.Basic) -> sympy.Basic:
        """An init expression: param is the shared initial parameter, step is 1."""
        return self.rename(expr).xreplace({self.inputs[PARAM]: PARAM0, STEP_SYMBOL: sympy.S.One})


def build_side(spec: Spec, tag: str, options: dict[str, bool], hypers: dict[str, sympy.Expr], program=None) -> Side:
    """`program`: the spec already lowered with these options, if the caller has it."""
    if spec.inputs:
        first = next(iter(spec.inputs.values()))
        raise SpecError(
            first.loc,
            f"{spec.name} takes the step() input `{first.name}`: the prover does not reason about "
            "inputs beyond grad yet, so it makes no claim about this spec",
        )
    where = matrix_location(spec)
    if where is not None:
        raise SpecError(
            where,
            f"{spec.name} uses matrix operations (@, transpose, bfloat16(), rows/cols or a loop): the prover does not "
            "reason about them, so it makes no claim about this spec",
        )
    refusal = axis_refusal(spec)
    if refusal:
        raise SpecError(spec.loc, refusal)
    program = program or lower(spec, options)
    if program.group_states:
        first = program.group_states[0]
        raise SpecError(
            first.loc,
            f"{spec.name} keeps the group state `{first.name}` (scope: group): the prover does not reason "
            "about group states yet, so it makes no claim about this spec",
        )
    side = Side(spec, tag, program.options, hypers)
    side.inputs[PARAM] = symbol(f"{tag}.{PARAM}")
    side.scopes[PARAM] = "element"
    for s in program.states:
        side.inputs[s.name] = symbol(f"{tag}.{s.name}")
        side.scopes[s.name] = s.scope
    side.update = {name: side.rename(inline(program, value)) for name, value in program.outputs.items()}
    side.init = {s.name: side.rename_init(s.init) for s in program.states}
    side.query = side.rename(spec.gradient_at) if spec.gradient_at is not None else side.inputs[PARAM]
    return side


def symbolic_values(
    spec: Spec, options: dict[str, bool], opaque: dict[str, sympy.Symbol] | None = None
) -> dict[str, sympy.Expr]:
    """Every variable of the update program at its end, over the inputs (symbolic
    execution of the spec's statements). A name in `opaque` is bound to the given symbol
    where it is assigned, so later values read it as an unknown."""
    env: dict[str, sympy.Expr] = {}
    refusal = axis_refusal(spec)
    if refusal:
        raise SpecError(spec.loc, refusal)

    def run(block):
        for stmt in block:
            if isinstance(stmt, If):
                run(stmt.body if holds(stmt.cond, options) else stmt.orelse)
                continue
            value = stmt.expr.xreplace({s: env[s.name] for s in stmt.expr.free_symbols if s.name in env})
            env[stmt.target] = opaque[stmt.target] if opaque and stmt.target in opaque else value

    run(spec.update)
    return env


def add_ghosts(side: Side, ghosts: list[Ghost], hypers: dict[str, sympy.Expr], loc: Loc | None) -> None:
    """Ghost states of a side: an init over param, grad and the proof's hyperparameters, an
    update over the side's inputs (before the step), the gradient and the ghosts."""
    for ghost in ghosts:
        if ghost.name in side.inputs or ghost.name in hypers or ghost.name in SHARED:
            raise SpecError(loc, f"ghost `{ghost.name}` clashes with a name of {side.label}")
        side.inputs[ghost.name] = symbol(f"{side.tag}.{ghost.name}")
        side.scopes[ghost.name] = "element"
    init_names = {**hypers, PARAM: PARAM0, GRAD: GRAD_SYMBOL}
    names = {**hypers, **side.inputs, STEP: STEP_SYMBOL, GRAD: GRAD_SYMBOL}
    for ghost in ghosts:
        side.init[ghost.name] = expr_from(ghost.init, init_names, f"the init of ghost `{ghost.name}`", loc)
        side.update[ghost.name] = expr_from(ghost.update, names, f"the update of ghost `{ghost.name}`", loc)


# --------------------------------------------------------------------------- facts
def hyper_table(spec: Spec, free: set[str]) -> dict[str, Interval]:
    """Ranges of the free hyperparameters (a captured one takes its source's range)."""
    table = {}
    for name, (h, _) in spec.scalar_hypers.items():
        if name in free:
            source = spec.hyperparameters.get(h.captured) if h.captured else h
            table[name] = source.range if source is not None else B.REAL
    return table


def assume_invariants(sides: list[Side], table: dict[str, Interval]) -> dict[str, Interval]:
    """Find each side's state invariants by induction and give its state symbols the signs
    they imply (v >= 0 lets SymPy split sqrt(v*c)). Returns the extended bounds table."""
    table = dict(table)
    for side in sides:
        inits = {side.inputs[n].name: side.init[n] for n in side.states}
        updates = {side.inputs[n].name: side.update[n] for n in side.states}
        found = B.state_invariants(inits, updates, table)
        table.update(found)
        swap = {}
        for n in side.states:
            old = side.inputs[n]
            new = symbol(old.name, **B.assumptions_of(found[old.name]))
            side.inputs[n] = new
            swap[old] = new
        _swap_symbols(side, swap)
    return table


def _swap_symbols(side: Side, swap: dict) -> None:
    side.update = {k: v.xreplace(swap) for k, v in side.update.items()}
    side.query = side.query.xreplace(swap)


def resolve_side_options(spec: Spec, given: dict[str, Text], loc: Loc | None) -> dict[str, bool]:
    options = {}
    for name, value in given.items():
        raw = value.value if hasattr(value, "value") else value
        if name not in spec.options:
            raise SpecError(
                getattr(value, "loc", loc),
                f"{spec.name} has no option `{name}`; options: {', '.join(spec.options) or 'none'}",
            )
        if not isinstance(raw, bool):
            raise SpecError(getattr(value, "loc", loc), f"option `{name}` takes true or false")
        options[name] = raw
    return resolve_options(spec, options)


def axis_refusal(spec: Spec) -> str | None:
    """The prover's obligations are over one element and per-tensor reductions: a spec with
    axis reductions or per-tensor rank rules (optgen/shapes.py) gets no verdict at all,
    never one proven by sampling."""
    if not axis_constructs(spec):
        return None
    return (
        f"{spec.name} uses axis reductions or `if ndim(param) ...:` rules: the prover does not reason "
        "about shapes yet, so it makes no claim about this spec"
    )
