"""Stage 6, reference: a float64 NumPy interpreter of the IR, the oracle for every backend.

It walks each SymPy expression once to build a tree of closures (nothing is eval'ed), then
runs the program for each parameter tensor in float64. Cross-parameter reductions
(global_norm, global_sum) are computed over every parameter with a gradient, in every
group, before any update, as the generated optimizers do. `scope: group` states live in
the param group dicts (see group_state.py)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import sympy

from . import matrix
from .expr import GRAD, NDIM, NUMEL, PARAM, SIZE_RANKS, STEP, AxisReduction
from .ir import Program
from .lower import lower
from .shapes import ALL_RANKS, MAX_RANK
from .spec import Spec

Env = dict[str, Any]
Fn = Callable[[Env], Any]


# --------------------------------------------------------------------------- expressions
def compile_expr(e: sympy.Basic) -> Fn:
    """A closure computing `e` from an environment of float64 scalars and arrays."""
    if e.is_Symbol:
        name = e.name
        return lambda env: env[name]
    if e.is_Number:
        c = np.float64(float(e))
        return lambda env: c
    if e is sympy.true or e is sympy.false:
        b = bool(e)
        return lambda env: b
    handler = _HANDLERS.get(type(e))
    if handler is None:
        for cls, h in _HANDLERS.items():
            if isinstance(e, cls):
                handler = h
                break
    if handler is None:
        raise NotImplementedError(f"reference interpreter: no rule for {type(e).__name__}")
    return handler(e)


def _nary(op):
    def build(e):
        fns = [compile_expr(a) for a in e.args]
        return lambda env: reduce(op, (f(env) for f in fns))

    return build


def _pow(e):
    base, exp = compile_expr(e.base), e.exp
    if exp == sympy.Rational(1, 2):
        return lambda env: np.sqrt(base(env))
    if exp == -1:
        return lambda env: 1.0 / base(env)
    if exp == sympy.Rational(-1, 2):
        return lambda env: 1.0 / np.sqrt(base(env))
    if exp == 2:
        return lambda env: np.square(base(env))
    if exp.is_Number:
        p = float(exp)
        return lambda env: np.power(base(env), p)
    expf = compile_expr(exp)
    return lambda env: np.power(base(env), expf(env))


def _func(f):
    def build(e):
        arg = compile_expr(e.args[0])
        return lambda env: f(arg(env))

    return build


def _piecewise(e):
    branches = [(compile_expr(a.cond), compile_expr(a.expr)) for a in e.args]

    def run(env):
        for i, (cond, value) in enumerate(branches):
            c = cond(env)
            if np.ndim(c) == 0:  # a host-side choice: only the chosen side is computed
                if bool(c):
                    return value(env)
                continue
            rest = _piecewise_from(branches[i + 1 :])
            return np.where(c, value(env), rest(env))
        raise ValueError("no branch of a where(...) applies")

    return run


def _piecewise_from(branches):
    def run(env):
        for i, (cond, value) in enumerate(branches):
            c = cond(env)
            if np.ndim(c) == 0:
                if bool(c):
                    return value(env)
                continue
            return np.where(c, value(env), _piecewise_from(branches[i + 1 :])(env))
        raise ValueError("no branch of a where(...) applies")

    return run


def _relation(op):
    def build(e):
        a, b = compile_expr(e.lhs), compile_expr(e.rhs)
        return lambda env: op(a(env), b(env))

    return build


def _boolean(op):
    def build(e):
        fns = [compile_expr(a) for a in e.args]
        return lambda env: reduce(op, (f(env) for f in fns))

    return build


def _not(e):
    f = compile_expr(e.args[0])
    return lambda env: np.logical_not(f(env))


_HANDLERS: dict[type, Callable] = {
    sympy.Add: _nary(operator.add),
    sympy.Mul: _nary(operator.mul),
    sympy.Pow: _pow,
    sympy.Max: _nary(np.maximum),
    sympy.Min: _nary(np.minimum),
    sympy.Abs: _func(np.abs),
    sympy.sign: _func(np.sign),
    sympy.exp: _func(np.exp),
    sympy.log: _func(np.log),
    sympy.Mod: _nary(np.mod),  # floored, as Python's % and SymPy's Mod
    sympy.floor: _func(np.floor),
    sympy.Piecewise: _piecewise,
    sympy.StrictLessThan: _relation(operator.lt),
    sympy.LessThan: _relation(operator.le),
    sympy.StrictGreaterThan: _relation(operator.gt),
    sympy.GreaterThan: _relation(operator.ge),
    sympy.Equality: _relation(operator.eq),
    sympy.Unequality: _relation(operator.ne),
    sympy.And: _boolean(np.logical_and),
    sympy.Or: _boolean(np.logical_or),
    sympy.Not: _not,
}

_HANDLERS.update(matrix.numpy_handlers(compile_expr))

_REDUCE = {"sum": np.sum, "min": np.min, "max": np.max}


def _axis_reduction(e):
    """mean(x, axis=-1) and the like: keepdim, over trailing axes (optgen/shapes.py)."""
    arg, axes = compile_expr(e.args[0]), tuple(sorted(e.axes))
    fn = {"sum": np.sum, "mean": np.mean, "amax": np.max, "amin": np.min}.get(e.spelling)
    if fn is None:  # norm
        return lambda env: np.sqrt(np.sum(np.square(_full(arg(env), env)), axis=axes, keepdims=True))
    return lambda env: fn(_full(arg(env), env), axis=axes, keepdims=True)


def _full(value, env: Env) -> np.ndarray:
    """An axis reduction's argument broadcast to the parameter's shape (`mean(2 * v, ...)`
    of a reduced v reduces over a size-1 axis, which the checker refuses; a scalar factor
    broadcasts)."""
    return np.broadcast_to(value, np.broadcast_shapes(np.shape(value), np.shape(env[PARAM])))


_HANDLERS[AxisReduction] = _axis_reduction


def _state_init(s, value, param: np.ndarray):
    """A state's first value: per tensor, element-shaped, or reduced over its axes (keepdim)."""
    if s.scope != "element":
        return np.float64(value)
    shape = list(param.shape)
    for axis in s.axes:
        shape[axis] = 1
    return np.full(shape, value, dtype=np.float64)


# --------------------------------------------------------------------------- programs
@dataclass
class CompiledProgram:
    program: Program
    steps: list[tuple]  # (name, fn, reduce op, over, guard: the ranks it is computed for)
    inits: dict[str, Fn]
    global_needs: set[str]  # values needed by the global reductions

    @classmethod
    def build(cls, program: Program) -> CompiledProgram:
        steps = [(v.name, _value_fn(v), v.reduce, v.over, v.guard) for v in program.values]
        inits = {s.name: compile_expr(s.init) for s in program.states}
        needs: set[str] = set()
        by_name = program.by_name
        stack = [r.expr.name for r in program.reductions("global")]
        while stack:
            n = stack.pop()
            if n in by_name and n not in needs:
                needs.add(n)
                stack.extend(s.name for s in by_name[n].expr.free_symbols)
        return cls(program, steps, inits, needs)

    def run(self, env: Env, only: set[str] | None = None) -> Env:
        rank = min(int(env[NDIM]), MAX_RANK)
        for name, fn, op, over, guard in self.steps:
            if only is not None and name not in only:
                continue
            if rank not in (guard or ALL_RANKS):  # an `if ndim(param) ...:` body of other tensors
                continue
            if op is None:
                env[name] = fn(env)
            elif over == "tensor":
                env[name] = np.float64(_REDUCE[op](_elements(fn(env), env)))
            elif name not in env:  # a global reduction: filled in by the caller
                raise KeyError(name)
        return env

    def global_partials(self, env: Env) -> dict[str, float]:
        self.run(env, only=self.global_needs)
        return {r.name: float(np.sum(_elements(env[r.expr.name], env))) for r in self.program.reductions("global")}


def _value_fn(v) -> Fn:
    if v.matrix is not None:
        block = v.matrix
        return lambda env: matrix.run_block_numpy(block, compile_expr, env)
    return compile_expr(v.expr)


def _elements(value, env: Env) -> np.ndarray:
    """A reduction's argument, one entry per element of the parameter: an element value
    that came out a scalar (`v = 0.5`, then `mean(v * step)`) counts once per element. A
    reduced value (keepdim: the param's rank) counts its own elements, as torch's sum of a
    row vector does: sum(row_var) adds each row once."""
    if np.ndim(value) == np.ndim(env[PARAM]):
        return np.asarray(value)
    return np.broadcast_to(value, np.shape(env[PARAM]))


class Reference:
    """Runs a spec on float64 arrays, with torch-style param groups.

    param_groups: list of dicts {"params": [arrays], "lr": ..., "betas": (...), "amsgrad": ...};
    missing keys take the spec's defaults. `step(grads)` takes one gradient per parameter
    (in order over all groups; None skips it), and each of the spec's `inputs` as a keyword
    holding one array per parameter, aligned with the gradients. Change hyperparameters between steps by
    editing `param_groups[i]`."""

    def __init__(self, spec: Spec | str, param_groups: list[dict]):
        if isinstance(spec, str):
            from . import load

            spec = load(spec)
        self.spec = spec
        self.param_groups = [self._fill(dict(g)) for g in param_groups]
        self.params: list[np.ndarray] = []
        self._group_of: list[int] = []
        for gi, group in enumerate(self.param_groups):
            arrays = [np.array(p, dtype=np.float64, copy=True) for p in group["params"]]
            group["params"] = arrays
            self.params.extend(arrays)
            self._group_of.extend([gi] * len(arrays))
        self.state: list[dict] = [{} for _ in self.params]
        self._group_steps = [0] * len(self.param_groups)  # step() calls, for `step: per_group`
        self._compiled: dict[tuple, CompiledProgram] = {}
        for group in self.param_groups:  # group states start when the group is made (Prodigy's d = d0)
            self._init_group_states(group)

    def _fill(self, group: dict) -> dict:
        for key, h in self.spec.hyperparameters.items():
            if h.captured is not None:
                continue
            group.setdefault(key, h.default_value())
        for key, h in self.spec.hyperparameters.items():
            if h.captured is not None:
                group.setdefault(key, group[h.captured])
        for name, opt in self.spec.options.items():
            group.setdefault(name, opt.default)
        group.setdefault("maximize", False)
        if self.spec.modes is not None:
            group.setdefault("train_mode", self.spec.modes.start == "train")
        return group

    def train(self) -> None:
        """Switch every group in eval mode to the training parameters (spec `modes:`)."""
        self._switch(True)

    def eval(self) -> None:
        """Switch every group in train mode to the evaluation parameters (spec `modes:`)."""
        self._switch(False)

    def _switch(self, train_mode: bool) -> None:
        if self.spec.modes is None:
            raise TypeError(f"{self.spec.name} declares no `modes:`: there is no train/eval switch")
        mode = self.spec.modes.maps["train" if train_mode else "eval"]
        new_param = compile_expr(mode.expr)
        for gi, group in enumerate(self.param_groups):
            if group["train_mode"] == train_mode:
                continue
            for i in (i for i, g in enumerate(self._group_of) if g == gi and self.state[i]):
                env = self._hyper_env(group)
                env[PARAM] = self.params[i]
                env.update({s.name: self.state[i][s.key] for s in self.spec.state.values() if s.key in self.state[i]})
                self.params[i][...] = np.broadcast_to(new_param(env), self.params[i].shape)
            group["train_mode"] = train_mode

    def _init_group_states(self, group: dict) -> None:
        program = self.compiled(group).program
        env = self._hyper_env(group)
        for s in program.group_states:
            group.setdefault(s.key, float(compile_expr(s.init)(env)))

    def compiled(self, group: dict) -> CompiledProgram:
        options = {name: bool(group[name]) for name in self.spec.options}
        key = tuple(sorted(options.items()))
        if key not in self._compiled:
            self._compiled[key] = CompiledProgram.build(lower(self.spec, options))
        return self._compiled[key]

    def _hyper_env(self, group: dict) -> Env:
        env: Env = {}
        for key, h in self.spec.hyperparameters.items():
            value = group[key]
            values = value if h.is_tuple else (value,)
            for name, v in zip(h.names, values):  # None: `none: dtype_eps`, float64's here
                env[name] = np.float64(np.finfo(np.float64).eps if v is None else v)
        return env

    def _env(self, i: int, grad: np.ndarray, inputs: dict[str, list]) -> tuple[Env, CompiledProgram]:
        group = self.param_groups[self._group_of[i]]
        compiled = self.compiled(group)
        param = self.params[i]
        g = np.asarray(grad, dtype=np.float64)
        if group["maximize"]:
            g = -g
        env = self._hyper_env(group)
        env.update({PARAM: param, GRAD: g, NUMEL: np.float64(param.size), NDIM: np.float64(param.ndim)})
        for name, rank in SIZE_RANKS.items():  # rows(param), cols(param): 1 without the dim
            env[name] = np.float64(param.shape[-rank] if param.ndim >= rank else 1)
        for name, values in inputs.items():
            if values[i] is None:
                raise ValueError(f"step() input `{name}` is missing for parameter {i}, which has a gradient")
            env[name] = np.broadcast_to(np.asarray(values[i], dtype=np.float64), param.shape)
        state = self.state[i]
        if not state:
            state["step"] = 0
            for s in compiled.program.states:
                if min(param.ndim, MAX_RANK) in (s.ranks or ALL_RANKS):  # `ndim: ">= 2"`: matrices only
                    state[s.key] = _state_init(s, compiled.inits[s.name](env), param)
        if self.spec.step_count == "per_group":  # the group's count, this step() included
            state["step"] = self._group_steps[self._group_of[i]]
        env[STEP] = np.float64(state["step"] + 1)
        for s in compiled.program.states:
            if s.key in state:
                env[s.name] = state[s.key]
        self._init_group_states(group)  # an option turned on since the group was made
        for s in compiled.program.group_states:  # kept in the group dict, as Prodigy's `d`
            env[s.name] = np.float64(group[s.key])
        return env, compiled

    def step(self, grads: list[np.ndarray | None], **inputs: list[np.ndarray | None]) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"expected {len(self.params)} gradients, got {len(grads)}")
        unknown = set(inputs) - set(self.spec.inputs)
        if unknown:
            raise TypeError(
                f"step() got unknown input(s) {sorted(unknown)}; the spec declares {list(self.spec.inputs)}"
            )
        for name in self.spec.inputs:
            values = inputs.get(name)
            if values is None:
                raise ValueError(f"step() needs the input `{name}`: one array per parameter")
            if len(values) != len(self.params):
                raise ValueError(f"expected {len(self.params)} arrays for `{name}`, got {len(values)}")
        inputs = {name: inputs[name] for name in self.spec.inputs}
        if self.spec.modes is not None and not all(g["train_mode"] for g in self.param_groups):
            raise RuntimeError(f"{self.spec.name} is in eval mode: call train() before step()")
        with np.errstate(all="ignore"):
            live = [(i, *self._env(i, g, inputs)) for i, g in enumerate(grads) if g is not None]
            # per_group: every group counts the call, even one without any gradient
            self._group_steps = [n + 1 for n in self._group_steps]
            totals: dict[str, float] = {}
            for _, env, compiled in live:
                for name, part in compiled.global_partials(dict(env)).items():
                    totals[name] = totals.get(name, 0.0) + part
            new_group_values: dict[int, dict[str, float]] = {}
            for i, env, compiled in live:
                env.update({k: np.float64(v) for k, v in totals.items()})
                compiled.run(env)
                self._store(i, env, compiled.program)
                program = compiled.program
                new_group_values[self._group_of[i]] = {
                    s.key: float(env[program.group_outputs[s.name]]) for s in program.group_states
                }
            # every tensor of a group read the group states' old values: store them last
            for gi, new in new_group_values.items():
                self.param_groups[gi].update(new)

    def _store(self, i: int, env: Env, program: Program) -> None:
        state = self.state[i]
        state["step"] += 1
        new_param = np.broadcast_to(env[program.outputs[PARAM]], self.params[i].shape)
        self.params[i][...] = new_param
        for s in program.states:
            if s.key not in state:
                continue
            value = env[program.outputs[s.name]]
            if s.scope == "element":
                state[s.key] = np.array(np.broadcast_to(value, np.shape(state[s.key])), dtype=np.float64)
            else:
                state[s.key] = np.float64(value)
