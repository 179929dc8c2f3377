"""The IR: a spec, specialised to one setting of its options, as a straight-line dataflow
program of named values, each with a scope and a phase.

Scopes (ordered): host < global < tensor < element.
  host     hyperparameters, `step` and `scope: group` states: Python floats, computed per
           tensor on the host
  global   depends on a reduction across all parameters (global_norm)
  tensor   one scalar per parameter tensor: a reduction or a `scope: tensor` state
  element  one value per element: param, grad, element states

Shapes (optgen/shapes.py): each value also has a shape class, a per-tensor scalar, element
(like param) or reduced over trailing axes (keepdim, `mean(x, axis=-1)`), and a guard: the
ranks of the tensors it is computed for (the body of an `if ndim(param) >= 2:`).

Phases: a per-tensor reduction needs every element of its argument before any element
that depends on it can be computed, so it ends a phase. Phase 0 values need no per-tensor
reduction; a value of phase k depends on reductions of phase k-1 at most. Kernels run one
pass per phase; stores of states and param happen in the last pass (earlier passes only
reduce), so a later pass can recompute what it needs from unchanged memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from .errors import Loc
from .shapes import SCALAR, Shape
from .spec import Spec, StateDecl

SCOPES = ("host", "global", "tensor", "element")
SCOPE_RANK = {s: i for i, s in enumerate(SCOPES)}


def wider(a: str, b: str) -> str:
    return a if SCOPE_RANK[a] >= SCOPE_RANK[b] else b


@dataclass
class Value:
    """`name = expr`. For a reduction, `reduce` is "sum", "min" or "max" and `expr` is the
    symbol of its element-scope argument; `over` is "tensor" or "global"."""

    name: str
    expr: sympy.Expr
    scope: str
    var: str  # the spec variable this value (re)defines; "" for a value the compiler made
    loc: Loc | None = None
    reduce: str | None = None
    over: str | None = None
    phase: int = 0
    # a matrix value (optgen/matrix.py): a MatrixBlock that the backends run whole; `expr` is
    # then MatrixInputs(operands...)
    matrix: object | None = None
    # the ranks of the tensors this value is computed for (an `if ndim(param) ...` body), None: all
    guard: frozenset | None = None
    shape: Shape = SCALAR  # its shape class (optgen/shapes.py), set once the program is lowered

    @property
    def symbol(self) -> sympy.Symbol:
        return sympy.Symbol(self.name, real=True)

    @property
    def is_reduction(self) -> bool:
        return self.reduce is not None


@dataclass
class Program:
    spec: Spec
    options: dict[str, bool]
    states: list[StateDecl]
    values: list[Value]
    outputs: dict[str, str]  # "param" and each state name -> the value holding its new value
    # (a state the update never assigns maps to its own name: its new value is its old one)
    input_scopes: dict[str, str]  # input symbol name -> scope
    notes: list[str] = field(default_factory=list)  # what the optimiser passes did, for `optgen show`
    # `scope: group` states (one number per param group, kept in the group dict) and the value
    # holding each one's new value; not in `states`/`outputs`, which are per tensor
    group_states: list[StateDecl] = field(default_factory=list)
    group_outputs: dict[str, str] = field(default_factory=dict)
    # the fused kernels' view of a tensor as (outer, rows, cols): (p, q) trailing axes merged
    # into rows and cols, their axis reductions over the last two view axes (fused_axes.py)
    axis_view: tuple[int, int] = (1, 1)

    @property
    def input_names(self) -> list[str]:
        """The spec's extra per-element inputs of step() (`hessian`), in declaration order."""
        return list(self.spec.inputs)

    @property
    def by_name(self) -> dict[str, Value]:
        return {v.name: v for v in self.values}

    def scope_of(self, name: str) -> str:
        if name in self.input_scopes:
            return self.input_scopes[name]
        return self.by_name[name].scope

    @property
    def num_phases(self) -> int:
        element = [v.phase for v in self.values if v.scope in ("element", "tensor")]
        return max(element, default=0) + 1

    @property
    def hyper_names(self) -> list[str]:
        return [n for h in self.spec.hyperparameters.values() for n in h.names]

    def values_of_scope(self, *scopes: str) -> list[Value]:
        return [v for v in self.values if v.scope in scopes]

    @property
    def has_axes(self) -> bool:
        """Whether any value is reduced over axes or computed for some ranks only."""
        return any(v.shape.is_reduced or v.guard is not None for v in self.values) or any(
            s.axes or s.ranks is not None for s in self.states
        )

    def reductions(self, over: str | None = None) -> list[Value]:
        return [v for v in self.values if v.is_reduction and (over is None or v.over == over)]

    def inputs_of(self, name: str) -> set[str]:
        """The input names (param, grad, states, hyperparameters, step) a value depends on."""
        by_name = self.by_name
        out, stack, seen = set(), [name], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in by_name:
                stack.extend(s.name for s in by_name[n].expr.free_symbols)
            else:
                out.add(n)
        return out

    def pass_closure(self, targets: list[str]) -> set[str]:
        """The names a kernel pass computing `targets` needs: their dependencies, stopping at
        host values and at reductions that are not targets (an earlier pass computed them)."""
        by_name = self.by_name
        need: set[str] = set()
        stack = list(targets)
        while stack:
            name = stack.pop()
            if name in need:
                continue
            need.add(name)
            v = by_name.get(name)
            if v is None or v.scope == "host" or (v.is_reduction and name not in targets):
                continue
            stack.extend(s.name for s in v.expr.free_symbols)
        return need

    @property
    def writes(self) -> dict[str, str]:
        """The outputs that change: param and each state the update assigns. A snapshot
        state (never assigned) maps to itself in `outputs` and is never written back."""
        return {k: v for k, v in self.outputs.items() if k != v}

    def state_output(self, state: StateDecl) -> str:
        return self.outputs[state.name]
