"""Modes: a second parameter sequence for evaluation, switched by optimizer.eval() and
optimizer.train() (schedule-free's x beside the y it trains at).

A spec declares
```yaml
modes:
  start: train        # the mode a new optimizer is in (schedulefree starts in eval)
  eval: |
    param = param + (1 - 1 / beta1) * (z - param)
  train: |
    param = param + (1 - beta1) * (z - param)
```
Each program maps the parameter of one mode to the other's: it assigns `param` (and values
of its own) from `param`, element states, hyperparameters and numbers. Switching is not a
step: no gradient, `step` or input exists then, and the states stay as they are, so a
program that reads or assigns them is an error at its line. The new `param` must be affine
in `param` and the states with host coefficients (a lerp, a swap through a difference held
in a state): every backend spells it with `lerp_`, `mul_`, `add_` and their foreach forms.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import sympy

from .errors import Loc, SpecError
from .expr import GRAD, PARAM, REDUCTIONS, STEP, symbol
from .spec import Assign, StateDecl

MODE_NAMES = ("eval", "train")
MODES_KEYS = {"start", "eval", "train"}
MODE_KEY = "train_mode"  # each param group's mode, as schedulefree keeps it


@dataclass
class ModeMap:
    """The parameter on entering `mode`: param <- param_coeff * param + sum(coeff * state) +
    constant, each coefficient an expression of hyperparameters and numbers."""

    mode: str
    expr: sympy.Expr  # the new param, as the program computes it
    param_coeff: sympy.Expr
    terms: dict[str, sympy.Expr]  # state name -> its coefficient, in declaration order
    constant: sympy.Expr
    loc: Loc

    @property
    def lerp(self) -> tuple[str, sympy.Expr] | None:
        """(state, weight) when the map is lerp(param, state, weight)."""
        if len(self.terms) != 1 or self.constant != 0:
            return None
        ((name, weight),) = self.terms.items()
        if sympy.simplify(self.param_coeff + weight - 1) != 0:
            return None
        return name, weight

    @property
    def hyper_names(self) -> set[str]:
        exprs = [self.param_coeff, self.constant, *self.terms.values()]
        return {s.name for e in exprs for s in e.free_symbols}

    def renamed(self, rename, name) -> ModeMap:
        return ModeMap(
            self.mode,
            rename(self.expr),
            rename(self.param_coeff),
            {name(s): rename(c) for s, c in self.terms.items()},
            rename(self.constant),
            self.loc,
        )


@dataclass
class Modes:
    start: str  # "train" or "eval"
    maps: dict[str, ModeMap] = field(default_factory=dict)  # "eval", "train" -> its map

    @property
    def states(self) -> list[str]:
        """The states the maps read, in declaration order of first use."""
        out: list[str] = []
        for m in self.maps.values():
            out += [s for s in m.terms if s not in out]
        return out

    def round_trip_problem(self) -> str | None:
        """Why train() does not undo eval() (None when it does, symbolically: the maps are
        affine, so train(eval(param)) - param is a rational function SymPy decides)."""
        param = symbol(PARAM)
        there = self.maps["eval"].expr
        back = self.maps["train"].expr.xreplace({param: there})
        if sympy.simplify(sympy.together(back - param)) == 0:
            return None
        return (
            f"the `train` program does not undo the `eval` program: train(eval(param)) = "
            f"{sympy.sstr(sympy.simplify(back))}, not param"
        )

    def renamed(self, rename, name) -> Modes:
        return Modes(self.start, {k: m.renamed(rename, name) for k, m in self.maps.items()})


# --------------------------------------------------------------------------- parsing
def parse_modes(builder, node, states: dict[str, StateDecl], hypers: set[str]) -> Modes | None:
    """The `modes:` section, every error of it collected by the builder's Collector."""
    from .parse import _check_keys, _expect

    if node is None or node.value is None:  # none, or `modes: null` (a child drops its parent's)
        return None
    _expect(node, dict, "a mapping with `start`, `eval` and `train`")
    _check_keys(node, MODES_KEYS, "`modes`")
    group_key = builder.locations.get(MODE_KEY) or getattr(builder, "keys", {}).get(MODE_KEY)
    if group_key is not None and MODE_KEY not in states and MODE_KEY not in builder.input_names:
        raise SpecError(group_key, f"`{MODE_KEY}` is the param group key of the mode (`modes:`); name it otherwise")
    start = "train"
    with builder.errors.each():
        if "start" in node.value:
            start = _expect(node.value["start"], str, "`train` or `eval`")
            if start not in MODE_NAMES:
                raise SpecError(node.value["start"].loc, f"`start` must be `train` or `eval`, not {start!r}")
    missing = [m for m in MODE_NAMES if m not in node.value]
    if missing:
        raise SpecError(
            node.loc,
            f"`modes` needs both `eval:` and `train:` programs (missing `{missing[0]}`): each undoes the other",
        )
    modes = Modes(start)
    for mode in MODE_NAMES:
        with builder.errors.each():
            modes.maps[mode] = _parse_map(builder, mode, node.value[mode], states, hypers)
    return modes if len(modes.maps) == 2 else None


def _parse_map(builder, mode: str, node, states: dict[str, StateDecl], hypers: set[str]) -> ModeMap:
    from .parse import UpdateParser, _expect, parse_python, source_of

    _expect(node, str, f"the `{mode}` program as text (`{mode}: |`)")
    source = source_of(node)
    what = f"the `{mode}` program"
    tree = parse_python(source, "exec", what)
    unavailable = {GRAD: "the gradient", STEP: "the step count", **dict.fromkeys(builder.input_names, "a step() input")}
    for n in ast.walk(tree):
        if isinstance(n, ast.If):  # no options: the maps are the same under every setting
            raise SpecError(source.loc(n.lineno, n.col_offset), f"`if` is not allowed in {what}")
        if isinstance(n, ast.Name) and n.id in unavailable:
            raise SpecError(
                source.loc(n.lineno, n.col_offset),
                f"{what} reads `{n.id}`, {unavailable[n.id]}: switching modes is not a step; "
                "a mode program reads param, states, hyperparameters and its own values",
            )
    known = [PARAM, *hypers, *states]
    symbols = {n: builder.symbols[n] for n in known if n in builder.symbols}
    parser = UpdateParser(source, hypers, set(), set(states))
    statements = parser.parse(symbols)
    env: dict[sympy.Symbol, sympy.Expr] = {}
    for st in statements:
        _check_assign(st, states, what)
        env[symbol(st.target)] = st.expr.xreplace(env)
    param = symbol(PARAM)
    if param not in env:
        raise SpecError(source.loc(1, 0), f"{what} never assigns `param`")
    return _affine(mode, env[param], states, hypers, source.loc(1, 0), what)


def _check_assign(st: Assign, states: dict[str, StateDecl], what: str) -> None:
    if st.target in states:
        raise SpecError(
            st.target_loc,
            f"{what} assigns the state `{st.target}`: a mode program assigns only `param` "
            "(and values of its own); the states stay as they are when the mode changes",
        )
    for a in sympy.preorder_traversal(st.expr):
        if isinstance(a, REDUCTIONS):
            raise SpecError(st.loc, f"{what} is elementwise: no reductions (sum, mean, norm, global_norm, ...)")


def _affine(mode: str, expr, states: dict[str, StateDecl], hypers: set[str], loc: Loc, what: str) -> ModeMap:
    """param <- a * param + sum(b_i * state_i) + c with host a, b_i, c, or an error."""
    read = [s for s in states.values() if symbol(s.name) in expr.free_symbols]
    for s in read:
        if s.scope != "element" or s.when is not None:
            kind = "a per-tensor state" if s.scope != "element" else "a state that exists only under an option"
            raise SpecError(
                loc, f"{what} reads `{s.name}`, {kind}; a mode program reads element states that always exist"
            )
    variables = [symbol(PARAM)] + [symbol(s.name) for s in read]
    # as the spec writes them (1 - 1/beta1, not (beta1 - 1)/beta1): the floats then match
    coeffs = [sympy.diff(expr, v) for v in variables]
    constant = sympy.simplify(expr - sum(c * v for c, v in zip(coeffs, variables)))
    others = sorted({x.name for x in expr.free_symbols} - {v.name for v in variables} - hypers)
    if others:  # numel(param), ndim(param): per-tensor values the switch does not compute
        raise SpecError(loc, f"{what} reads `{others[0]}`; a mode program reads param, states and hyperparameters")
    tensors = set(variables)
    if any(sympy.simplify(c).free_symbols & tensors for c in [*coeffs, constant]) or expr.has(sympy.Piecewise):
        raise SpecError(
            loc,
            f"{what} must give `param` as an affine map, a * param + b * state + ... + c, with "
            "coefficients of hyperparameters and numbers (a lerp towards a state, a shift by one)",
        )
    terms = {s.name: c for s, c in zip(read, coeffs[1:]) if sympy.simplify(c) != 0}
    if not terms and constant == 0 and sympy.simplify(coeffs[0] - 1) == 0:
        raise SpecError(loc, f"{what} leaves `param` as it is: a mode with no evaluation sequence needs no `modes:`")
    return ModeMap(mode, expr, coeffs[0], terms, constant, loc)
