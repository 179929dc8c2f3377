"""The parsed spec: what the YAML says, with every expression already in SymPy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import sympy

from .errors import Loc


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool

    def contains(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(v: float) -> str:
            return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"

        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


@dataclass
class Hyperparameter:
    """A constructor keyword. A tuple keyword (`betas`) has several scalar `names`."""

    key: str
    names: list[str]
    default: tuple[float, ...]  # one per name
    range: Interval
    tex: list[str]
    loc: Loc
    captured: str | None = None  # `captured: lr`: copied from lr when the group is made
    doc: str = ""
    # a 1-element tensor value: "accept" (read as its value where a Python number is needed)
    # or "not_with_foreach" (torch.optim.Adam's lr: a ValueError with foreach=True)
    tensor: str = "accept"
    # `none: dtype_eps`: a component may default to None (YAML null), which means the machine
    # epsilon of the parameters' dtype (torch.optim.Adafactor's eps1=None)
    none: str | None = None

    # set on a copy whose scalar `names` were renamed for generated code (keeps the kind)
    tuple_key: bool | None = None

    @property
    def is_tuple(self) -> bool:
        if self.tuple_key is not None:
            return self.tuple_key
        return len(self.names) > 1 or self.key != self.names[0]

    def default_value(self):
        return tuple(self.default) if self.is_tuple else self.default[0]


@dataclass
class Option:
    name: str
    default: bool
    loc: Loc
    doc: str = ""
    key: str | None = None  # the constructor keyword and group key, when it differs from name

    @property
    def public(self) -> str:
        return self.key or self.name


# A compile-time condition over options: an option name, or ("not", c), ("and", [c...]), ("or", [c...]).
Condition = str | tuple


def holds(cond: Condition, options: dict[str, bool]) -> bool:
    if isinstance(cond, str):
        return bool(options[cond])
    op, arg = cond
    if op == "not":
        return not holds(arg, options)
    if op == "and":
        return all(holds(c, options) for c in arg)
    return any(holds(c, options) for c in arg)


def condition_names(cond: Condition) -> set[str]:
    if isinstance(cond, str):
        return {cond}
    op, arg = cond
    return condition_names(arg) if op == "not" else set().union(*(condition_names(c) for c in arg))


@dataclass
class StateDecl:
    name: str
    init: sympy.Expr
    scope: str  # "element" | "tensor" | "group" (one number per param group, see group_state.py)
    loc: Loc
    key: str  # key in the optimizer's state dict
    tex: str | None = None
    when: Condition | None = None
    axes: frozenset = frozenset()  # `shape: {reduce: [-1]}`: the reduced trailing axes (shapes.py)
    ranks: frozenset | None = None  # `ndim: ">= 2"`: the ranks of the tensors that have it (None: all)


@dataclass
class InputDecl:
    """`inputs:` an extra per-element value passed to `step()` (`hessian=...`), read-only."""

    name: str
    loc: Loc
    tex: str | None = None
    doc: str = ""
    key: str | None = None  # the step() keyword, when the generated code renamed `name`

    @property
    def public(self) -> str:
        return self.key or self.name


@dataclass
class Assign:
    """`target = expr` (augmented assignments are expanded by the parser)."""

    target: str
    expr: sympy.Expr
    loc: Loc
    target_loc: Loc


@dataclass
class If:
    cond: Condition
    body: list
    orelse: list
    loc: Loc


@dataclass
class Repeat:
    """`for _ in range(count):` a bounded loop (optgen/matrix.py); `count` is an integer
    constant or an integer hyperparameter."""

    count: sympy.Expr
    body: list
    loc: Loc


@dataclass
class TensorIf:
    """`if ndim(param) >= 2:` a per-tensor rule: the body runs for the tensors whose rank
    satisfies `cond` (a condition on ndim), `orelse` for the others (optgen/shapes.py)."""

    cond: object  # a SymPy condition on ndim(param)
    body: list
    orelse: list
    loc: Loc


Statement = Assign | If | Repeat | TensorIf


@dataclass
class Spec:
    name: str
    summary: str
    paper: str
    parity: str
    notes: str
    hyperparameters: dict[str, Hyperparameter]
    options: dict[str, Option]
    state: dict[str, StateDecl]
    update: list[Statement]
    symbols: dict[str, sympy.Symbol]
    path: Path | None
    loc: Loc
    catalog_name: str | None = None
    claims: list = field(default_factory=list)  # raw located nodes, read by the prover
    tex_symbols: dict[str, str] = field(default_factory=dict)  # name -> LaTeX
    locations: dict[str, Loc] = field(default_factory=dict)  # name -> where it is declared
    source_texts: list[str] = field(default_factory=list)  # the YAML texts (spec and parents)
    gradient_at: sympy.Expr | None = None  # paper forms: the gradient is taken at this point
    # how `step` counts: "per_tensor" (the tensor's own updates, torch.optim) or "per_group"
    # (the param group's step() calls, pytorch_optimizer's group["step"])
    step_count: str = "per_tensor"
    # per_group: the param group key that holds the count (the package's name for it: "k" in
    # schedulefree), so that its checkpoints and this class's load into each other
    step_key: str = "step"
    inputs: dict[str, InputDecl] = field(default_factory=dict)  # extra per-element step() inputs
    modes: object = None  # `modes:` optgen.modes.Modes (eval/train parameter maps), or None

    @property
    def scalar_hypers(self) -> dict[str, tuple[Hyperparameter, int]]:
        """Scalar name -> (its hyperparameter, index in the tuple)."""
        return {n: (h, i) for h in self.hyperparameters.values() for i, n in enumerate(h.names)}

    def default_options(self) -> dict[str, bool]:
        return {name: opt.default for name, opt in self.options.items()}

    def active_states(self, options: dict[str, bool]) -> list[StateDecl]:
        return [s for s in self.state.values() if s.when is None or holds(s.when, options)]

    def option_combinations(self) -> list[dict[str, bool]]:
        names = list(self.options)
        combos = []
        for bits in range(2 ** len(names)):
            combos.append({n: bool(bits >> i & 1) for i, n in enumerate(names)})
        return combos

    @property
    def module_name(self) -> str:
        return self.catalog_name or self.name.lower()
