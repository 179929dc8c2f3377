"""Stage 3, lower: Spec + options -> Program (the IR, see ir.py).

Passes, in order:
  ssa        specialise option branches away; give every assignment a unique name
  reductions pull each reduction out into a value of its own (its argument too)
  copies     forward pure renamings (`denom_sq = max_exp_avg_sq`)
  hoist      lift maximal host / tensor subexpressions out of wider-scope expressions
  monotone   amin/amax through a monotone map: reduce the cheaper inner value instead,
             when that saves a pass (SET-Adam's min(sqrt(c*v/k + eps)))
  dce        drop values no output needs
  phases     number the passes a kernel needs
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import sympy

from .errors import SpecError, SpecErrors
from .expr import (
    COLS,
    GRAD,
    NDIM,
    NUMEL,
    PARAM,
    REDUCTIONS,
    ROWS,
    STEP,
    TENSOR_REDUCTIONS,
    AxisReduction,
    GlobalSum,
)
from .facts import SignFacts
from .group_state import check_global_reduction, check_group_states, split_group_states
from .ir import SCOPE_RANK, Program, Value, wider
from .matrix import MatrixLowering
from .program_facts import value_facts
from .shapes import RankTracker, infer_shapes, shape_of
from .spec import Assign, If, Repeat, Spec, TensorIf, holds

_REDUCE_OP = {**TENSOR_REDUCTIONS, GlobalSum: "sum"}


def lower(spec: Spec, options: dict[str, bool] | None = None, optimize: bool = True) -> Program:
    """optimize=False stops after the passes that keep the spec's own values (ssa,
    reductions, copies): what the induction on states reads, which the optimiser's
    monotone pass in turn relies on.

    Programs are cached per spec and setting (check, the backends and the prover each lower
    every setting); each call returns its own copy, so a caller may change it."""
    opts = resolve_options(spec, options)
    cache = spec.__dict__.setdefault("_lowered", {})
    key = (tuple(opts.items()), optimize)
    if key not in cache:
        cache[key] = _lower(spec, opts, optimize)
    return _copy(cache[key])


def _copy(program: Program) -> Program:
    values = [dataclasses.replace(v) for v in program.values]
    return dataclasses.replace(
        program,
        options=dict(program.options),
        states=list(program.states),
        values=values,
        outputs=dict(program.outputs),
        input_scopes=dict(program.input_scopes),
        notes=list(program.notes),
        group_states=list(program.group_states),
        group_outputs=dict(program.group_outputs),
    )


def _lower(spec: Spec, opts: dict[str, bool], optimize: bool) -> Program:
    program = _ssa(spec, opts)
    _extract_reductions(program)
    _forward_copies(program)
    if optimize:
        _hoist(program)
        _monotone_reductions(program)
        _dedupe(program)
    _dce(program)
    _check_global_reductions(program)
    _number_phases(program)
    infer_shapes(program)
    return program


def resolve_options(spec: Spec, options: dict[str, bool] | None) -> dict[str, bool]:
    opts = spec.default_options()
    for key, value in (options or {}).items():
        if key not in opts:
            raise KeyError(f"{spec.name} has no option {key!r}; options: {', '.join(opts) or 'none'}")
        opts[key] = bool(value)
    return opts


# --------------------------------------------------------------------------- ssa
class _Namer:
    def __init__(self, taken: set[str]):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        if base not in self.taken:
            self.taken.add(base)
            return base
        for i in itertools.count(1):
            name = f"{base}_{i}"
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError


def _input_scopes(spec: Spec, opts: dict[str, bool]) -> dict[str, str]:
    scopes = {n: "host" for n in spec.scalar_hypers}
    scopes.update({STEP: "host", PARAM: "element", GRAD: "element", NUMEL: "tensor", NDIM: "tensor"})
    scopes.update({ROWS: "tensor", COLS: "tensor"})
    scopes.update({name: "element" for name in spec.inputs})
    for s in spec.active_states(opts):
        scopes[s.name] = "host" if s.scope == "group" else s.scope
    return scopes


def _scope(expr: sympy.Basic, scopes: dict[str, str]) -> str:
    """The widest scope `expr` reads; a reduction is per tensor (or global) whatever its
    argument reads (norm(norm(grad)) reduces a per-tensor value, which is refused)."""
    scope = "host"
    stack = [expr]
    while stack:
        a = stack.pop()
        if isinstance(a, GlobalSum):
            scope = wider(scope, "global")
        elif isinstance(a, REDUCTIONS):
            scope = wider(scope, "tensor")
        elif a.is_Symbol:
            scope = wider(scope, scopes.get(a.name, "host"))
        else:
            stack.extend(a.args)
    return scope


def _ssa(spec: Spec, opts: dict[str, bool]) -> Program:
    states = spec.active_states(opts)
    inactive = {s.name for s in spec.state.values()} - {s.name for s in states}
    scopes = _input_scopes(spec, opts)
    namer = _Namer(set(scopes))
    env: dict[str, sympy.Symbol] = {n: spec.symbols[n] for n in scopes if n in spec.symbols}
    values: list[Value] = []
    errors: list[SpecError] = []
    broken: set[str] = set()  # targets of lines with an error: their uses are not errors too
    mx = MatrixLowering(spec, _all_scopes(scopes, values))

    ranks = RankTracker(spec, states, scopes)

    def join(var: str, expr, loc) -> Value:
        """The value of `var` after an `if ndim(param) ...:` that assigns it differently."""
        all_scopes = _all_scopes(scopes, values)
        value = Value(namer.fresh(var), expr, _value_scope(expr, var, all_scopes, scopes), var, loc)
        values.append(value)
        return value

    def run(block):
        for stmt in block:
            if isinstance(stmt, If):
                run(stmt.body if holds(stmt.cond, opts) else stmt.orelse)
                continue
            if isinstance(stmt, TensorIf):
                ranks.branch(stmt, env, run, join)
                continue
            if isinstance(stmt, Repeat):
                assigns = _specialised(stmt.body, opts)
                try:
                    start = len(values)
                    _ssa_loop(stmt, assigns, env, values, namer, mx, broken)
                    for value in values[start:]:  # the loop's results: shaped as what they read
                        ranks.pending = shape_of(value.expr, ranks.shapes, stmt.loc, None)
                        ranks.defined(value)
                except SpecError as exc:
                    errors.append(exc)
                    broken.update(a.target for a in assigns)
                continue
            try:
                ranks.check(stmt, env, values, broken)
                _ssa_assign(stmt, env, values, scopes, namer, inactive, broken, mx)
                ranks.defined(values[-1])
            except SpecError as exc:
                errors.append(exc)
                broken.add(stmt.target)

    try:
        ranks.check_states()
    except SpecError as exc:
        errors.append(exc)
    run(spec.update)
    if errors:
        raise SpecErrors.of(errors)
    current = env.get(PARAM)
    if current is None or current == spec.symbols[PARAM]:
        raise SpecError(spec.loc, f"the update never assigns `param` (options: {_fmt_options(opts)})")
    group_states, states = split_group_states(states)
    outputs = {PARAM: current.name}
    for s in states:
        # A state the update never assigns is a snapshot: set by its init at the first step,
        # only read afterwards. Its new value is its old one (Program.writes leaves it out).
        outputs[s.name] = env[s.name].name
    _check_tensor_states(states, {v.name: v for v in values}, outputs, scopes)
    group_outputs = {s.name: env[s.name].name for s in group_states}
    check_group_states(group_states, {v.name: v for v in values}, group_outputs, scopes, spec.step_count)
    return Program(spec, opts, states, values, outputs, scopes, group_states=group_states, group_outputs=group_outputs)


def _check_tensor_states(states, by_name, outputs, scopes) -> None:
    """A `scope: tensor` state holds one number per tensor: neither its init nor its new
    value may differ from element to element."""
    for s in states:
        if s.scope != "tensor":
            continue
        if _scope(s.init, scopes) == "element":
            raise SpecError(s.loc, f"state `{s.name}` is per tensor (scope: tensor), but its init differs per element")
        value = by_name.get(outputs[s.name])
        if value is None:  # a snapshot: never assigned, its init was checked above
            continue
        if value.scope == "element":
            raise SpecError(
                value.loc,
                f"state `{s.name}` is per tensor (scope: tensor), but is assigned a per-element value "
                "(reduce it with sum, mean, norm, amin or amax)",
            )


def _specialised(block, opts) -> list[Assign]:
    out = []
    for stmt in block:
        if isinstance(stmt, If):
            out += _specialised(stmt.body if holds(stmt.cond, opts) else stmt.orelse, opts)
        else:
            out.append(stmt)
    return out


def _ssa_loop(stmt: Repeat, assigns, env, values, namer, mx: MatrixLowering, broken) -> None:
    """A bounded loop is one matrix value: the value it carries, after `count` iterations."""
    free = {s.name for a in assigns for s in a.expr.free_symbols} - set(broken) - {a.target for a in assigns}
    for name in sorted(free):
        if name not in env and name not in mx.scopes:
            raise SpecError(stmt.loc, f"`{name}` is used before it is assigned")
    var, block = mx.loop(stmt, env, namer.fresh, assigns, stmt.loc)
    mx.loop_locals.update({a.target: stmt.loc for a in assigns if a.target != var})
    name = namer.fresh(var)
    value = Value(name, block.inputs_expr(), "element", var, stmt.loc, matrix=block)
    values.append(value)
    mx.made(name, block)
    mx.scopes[name] = "element"
    env[var] = value.symbol


def _ssa_assign(stmt: Assign, env, values, scopes, namer, inactive, broken=frozenset(), mx=None) -> None:
    """`inactive`: states that do not exist with these options; `broken`: targets of lines
    with an error (reading them is not a second error)."""
    free = {s.name for s in stmt.expr.free_symbols} - set(broken)
    for name in sorted(free):
        if name in inactive:
            raise SpecError(stmt.loc, f"state `{name}` does not exist with these options (its `when` is false)")
        if name not in env and name not in scopes:
            if mx is not None and name in mx.loop_locals:
                raise SpecError(
                    stmt.loc,
                    f"`{name}` is a temporary of the loop at {mx.loop_locals[name]}: "
                    "a loop hands on only the value it carries",
                )
            raise SpecError(stmt.loc, f"`{name}` is used before it is assigned")
    if stmt.target in inactive:
        raise SpecError(stmt.target_loc, f"state `{stmt.target}` is assigned but does not exist with these options")
    expr = stmt.expr.xreplace({s: env[s.name] for s in stmt.expr.free_symbols if s.name in env})
    expr = _without_ite(expr)
    name = namer.fresh(stmt.target)
    for a in sympy.preorder_traversal(expr):
        if isinstance(a, REDUCTIONS) and _scope(a.args[0], _all_scopes(scopes, values)) != "element":
            raise SpecError(
                stmt.loc, "a reduction (sum, mean, norm, amin, amax, global_norm) takes a per-element value"
            )
    for a in sympy.preorder_traversal(expr):
        if isinstance(a, (sympy.Mod, sympy.floor)) and _scope(a, _all_scopes(scopes, values)) != "host":
            sign = "%" if isinstance(a, sympy.Mod) else "//"
            raise SpecError(
                stmt.loc, f"`{sign}` takes host values (hyperparameters, step, numbers); here it reads a tensor value"
            )
    if mx is not None and mx.is_matrix(expr, stmt.target, stmt.loc):
        block = mx.statement(name, expr, stmt.loc, stmt.target)
        value = Value(name, block.inputs_expr(), "element", stmt.target, stmt.loc, matrix=block)
    else:
        if mx is not None:
            mx.promote(expr)
        value = Value(
            name, expr, _value_scope(expr, stmt.target, _all_scopes(scopes, values), scopes), stmt.target, stmt.loc
        )
    values.append(value)
    if mx is not None:
        mx.scopes[name] = value.scope
    env[stmt.target] = value.symbol


def _without_ite(expr):
    """SymPy folds a comparison of two `where`s into ITE(c, a, b), a boolean no backend
    prints: spell it with and/or/not, which every backend (and the Reference) has."""
    if not expr.has(sympy.ITE):
        return expr
    return expr.replace(
        lambda e: isinstance(e, sympy.ITE),
        lambda e: sympy.Or(sympy.And(e.args[0], e.args[1]), sympy.And(sympy.Not(e.args[0]), e.args[2])),
    )


def _value_scope(expr, var: str, scopes: dict[str, str], inputs: dict[str, str]) -> str:
    """A value's scope: the widest of what it reads, and, for a version of `param` or of a
    state, at least that variable's own scope (`prev_lr = lr` is a per-tensor store, not a
    host float that nothing writes back)."""
    scope = _scope(expr, scopes)
    if var in inputs and var != GRAD:
        scope = wider(scope, inputs[var])
    return scope


def _all_scopes(scopes, values) -> dict[str, str]:
    out = dict(scopes)
    out.update({v.name: v.scope for v in values})
    return out


def _fmt_options(opts) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items()) or "none"


# --------------------------------------------------------------------------- helpers
def _rebuild(program: Program, values: list[Value]) -> None:
    program.values = values
    scopes = _all_scopes(program.input_scopes, [])
    for v in values:
        if not v.is_reduction:
            v.scope = _value_scope(v.expr, v.var, scopes, program.input_scopes)
        scopes[v.name] = v.scope


# --------------------------------------------------------------------------- reductions
def _extract_reductions(program: Program) -> None:
    """Each reduction call becomes a value of its own, its argument an element value."""
    namer = _Namer(set(program.input_scopes) | {v.name for v in program.values})
    out: list[Value] = []
    for v in program.values:
        replacements = {}
        for call in sorted(_innermost_first(v.expr), key=sympy.count_ops):
            call = call.xreplace(replacements)
            if not isinstance(call, REDUCTIONS):
                continue  # the same call, met twice: already a value
            arg = call.args[0]
            if not arg.is_Symbol:
                arg_value = Value(namer.fresh(f"{v.var}_arg"), arg, "element", "", v.loc, guard=v.guard)
                out.append(arg_value)
                arg = arg_value.symbol
            op = _REDUCE_OP[type(call)]
            over = "global" if isinstance(call, GlobalSum) else "tensor"
            red = Value(
                namer.fresh(_reduction_name(op, over, arg.name)),
                arg,
                over,
                "",
                v.loc,
                reduce=op,
                over=over,
                guard=v.guard,
            )
            out.append(red)
            replacements[call] = red.symbol
        if replacements:
            v.expr = _replace_all(v.expr, replacements)
        out.append(v)
    _rebuild(program, out)


def _innermost_first(expr) -> list:
    return [a for a in sympy.postorder_traversal(expr) if isinstance(a, REDUCTIONS)]


def _replace_all(expr, replacements):
    for _ in range(len(replacements) + 1):
        new = expr.xreplace(replacements)
        if new == expr:
            break
        expr = new
    return expr


def _reduction_name(op: str, over: str, arg: str) -> str:
    prefix = {"sum": "sum", "min": "min", "max": "max"}[op]
    return f"{'global_' if over == 'global' else ''}{prefix}_{arg}"


# --------------------------------------------------------------------------- copies
def _forward_copies(program: Program) -> None:
    """`a = b` (a plain renaming) is dropped and uses of a read b."""
    mapping = {}
    kept = []
    outputs_by_value = {v: k for k, v in {**program.outputs, **program.group_outputs}.items()}
    for v in program.values:
        expr = v.expr.xreplace({s: mapping[s.name] for s in v.expr.free_symbols if s.name in mapping})
        v.expr = expr
        if v.matrix is not None:
            v.matrix.rename(mapping)
        if not v.is_reduction and expr.is_Symbol and v.name not in outputs_by_value:
            mapping[v.name] = expr
            continue
        kept.append(v)
    _rebuild(program, kept)


# --------------------------------------------------------------------------- hoisting
class _Hoister:
    def __init__(self, program: Program):
        self.program = program
        self.namer = _Namer(set(program.input_scopes) | {v.name for v in program.values} | set(program.spec.symbols))
        self.scopes = _all_scopes(program.input_scopes, program.values)
        self.made: dict[tuple, Value] = {}
        self.pending: list[Value] = []
        self.guard = None  # that of the value being lifted: what it hoists is computed as it is

    def scope(self, e) -> str:
        return _scope(e, self.scopes)

    def lift(self, e, within: str):
        """Replace maximal narrower-scope, non-trivial subexpressions of e by new values."""
        s = self.scope(e)
        if SCOPE_RANK[s] < SCOPE_RANK[within]:
            return self.hoisted(e, s)
        if e.is_Atom:
            return e
        if isinstance(e, sympy.Mul):
            return self.lift_mul(e, within)
        if isinstance(e, sympy.Add):
            narrow = [a for a in e.args if SCOPE_RANK[self.scope(a)] < SCOPE_RANK[within]]
            wide = [self.lift(a, within) for a in e.args if a not in narrow]
            if len(narrow) > 1:
                return sympy.Add(self.hoisted(sympy.Add(*narrow), self.scope(sympy.Add(*narrow))), *wide)
            return sympy.Add(*[self.lift(a, within) for a in narrow], *wide)
        if isinstance(e, sympy.Piecewise):
            return sympy.Piecewise(*[(self.lift(a.expr, within), a.cond) for a in e.args])
        if isinstance(e, AxisReduction):  # its axes are a tuple of literals, not a value
            return e.func(self.lift(e.args[0], within), e.args[1])
        return e.func(*[self.lift(a, within) for a in e.args])

    def lift_mul(self, e: sympy.Mul, within: str):
        """c * h1 * h2 * x / y -> c * h * x / y with h = h1 * h2 one hoisted value; a lone
        reciprocal host factor stays a division (x / sqrt(k) rather than x * k**-0.5)."""
        coeff, factors = e.as_coeff_mul()
        narrow = [f for f in factors if SCOPE_RANK[self.scope(f)] < SCOPE_RANK[within]]
        wide = [self.lift(f, within) for f in factors if f not in narrow]
        if not narrow:
            return sympy.Mul(coeff, *wide)
        if len(narrow) == 1:
            (f,) = narrow
            if _is_reciprocal(f):
                return sympy.Mul(coeff, *wide) / self.hoisted(1 / f, self.scope(f))
            return sympy.Mul(coeff, self.hoisted(f, self.scope(f), self.step_size_name(f, wide)), *wide)
        prod = sympy.Mul(*narrow)
        return sympy.Mul(coeff, self.hoisted(prod, self.scope(prod), self.step_size_name(prod, wide)), *wide)

    def step_size_name(self, coefficient, wide) -> str | None:
        """A learning-rate coefficient of an update term is a step size (torch's name); a
        second one is named after what it scales."""
        if "lr" not in {s.name for s in coefficient.free_symbols}:
            return None
        if "step_size" not in self.namer.taken:
            return "step_size"
        scaled = [f.name for f in wide if f.is_Symbol]
        return f"{re.sub(r'_[0-9]+$', '', scaled[0])}_step_size" if scaled else None

    def trivial(self, e) -> bool:
        """Cheap host arithmetic (1 - beta1, lr * weight_decay) stays inline."""
        return e.is_Atom or (
            sympy.count_ops(e) <= 2
            and not e.has(sympy.Pow)
            and self.scope(e) == "host"
            and not any(s.name == "step" for s in e.free_symbols)
        )

    def hoisted(self, e, scope: str, name: str | None = None):
        if self.trivial(e):
            return e
        guard = None if scope == "host" else self.guard  # a host float is safe for every tensor
        if (e, guard) in self.made:
            return self.made[(e, guard)].symbol
        inner = e.func(*[self.lift(a, scope) for a in e.args])
        value = Value(self.namer.fresh(name or _name_for(e)), inner, scope, "", guard=guard)
        self.made[(e, guard)] = value
        self.scopes[value.name] = scope
        self.pending.append(value)
        return value.symbol


def _is_reciprocal(f) -> bool:
    return isinstance(f, sympy.Pow) and f.exp.is_negative is True


def _name_for(e) -> str:
    """A readable name for a value the compiler made from `e`."""
    if isinstance(e, sympy.Pow) and e.base.is_Symbol:
        if e.exp == sympy.Rational(1, 2):
            return f"{e.base.name}_sqrt"
        if e.exp == 2:
            return f"{e.base.name}_sq"
        if e.exp == -1:
            return f"inv_{e.base.name}"
    if isinstance(e, sympy.Mul):
        num, den = [], []
        for f in e.args:
            if f.is_Symbol:
                num.append(f.name)
            elif _is_reciprocal(f) and f.base.is_Symbol and f.exp == -1:
                den.append(f.base.name)
            elif f.is_Number and f == -1:
                num.insert(0, "neg")
            else:
                num = None
                break
        if num is not None:
            name = "_".join(num) + ("_over_" + "_".join(den) if den else "")
            if 0 < len(name) <= 32 and name[0] != "_":
                return name
    if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if other.is_Symbol:
            return f"one_plus_{other.name}"
        if (-other).is_Symbol:
            return f"one_minus_{(-other).name}"
    return "coef"


def _hoist(program: Program) -> None:
    hoister = _Hoister(program)
    out = []
    for v in program.values:
        if v.scope != "host" and not v.is_reduction and v.matrix is None:
            hoister.guard = v.guard
            v.expr = hoister.lift(v.expr, v.scope)
            for made in hoister.pending:
                made.loc = made.loc or v.loc
            out.extend(hoister.pending)
            hoister.pending = []
        out.append(v)
    _rebuild(program, out)


# --------------------------------------------------------------------------- monotone maps
def _monotone_reductions(program: Program) -> None:
    """min(f(x)) = f(min(x)) for non-decreasing f (max likewise). Applied when x is
    available a phase earlier than f(x): one reduction pass fewer."""
    facts = _sign_facts(program)
    changed = True
    while changed:
        changed = False
        _number_phases(program)
        by_name = program.by_name
        for red in program.reductions("tensor"):
            if red.reduce not in ("min", "max"):
                continue
            arg = by_name.get(red.expr.name)
            if arg is None or arg.phase == 0:
                continue
            peeled = _peel(arg.expr, by_name, facts, program)
            if peeled is None:
                continue
            outer, inner, flips = peeled
            inner_phase = _phase_of(inner, by_name)
            if inner_phase >= arg.phase:
                continue
            op = red.reduce
            _apply_monotone(program, red, outer, inner, flips)
            program.notes.append(
                f"{op}({arg.name}) = {outer} with x = {_flip(op) if flips else op}({inner}): "
                "the map is monotone, so one reduction pass fewer"
            )
            changed = True
            break


def _flip(op: str) -> str:
    return "max" if op == "min" else "min"


_X = sympy.Symbol("x", real=True)


def _peel(expr, by_name, facts: SignFacts, program):
    """expr = outer(inner) with outer monotone in x and inner element-scope: returns
    (outer with symbol x, inner, flips) where flips says outer is non-increasing."""
    outer = _X
    flips = False
    inner = expr
    named = None  # the value whose definition `inner` is, to reduce over it by name
    for _ in range(16):
        if (
            inner.is_Symbol
            and inner.name in by_name
            and by_name[inner.name].scope == "element"
            and not by_name[inner.name].is_reduction
        ):
            named = inner
            inner = by_name[inner.name].expr
            continue
        step = _peel_one(inner, facts, program)
        if step is None:
            break
        f, inner, decreasing = step
        named = None
        outer = outer.xreplace({_X: f})
        flips ^= decreasing
    if outer == _X:
        return None
    return outer, named if named is not None else inner, flips


def _peel_one(e, facts: SignFacts, program):
    scopes = _all_scopes(program.input_scopes, program.values)

    def narrow(a):
        return SCOPE_RANK[_scope(a, scopes)] <= SCOPE_RANK["tensor"]

    if isinstance(e, sympy.Add):
        fixed = [a for a in e.args if narrow(a)]
        rest = [a for a in e.args if not narrow(a)]
        if fixed and len(rest) == 1:
            return sympy.Add(*fixed) + _X, rest[0], False
    if isinstance(e, sympy.Mul):
        fixed = [a for a in e.args if narrow(a)]
        rest = [a for a in e.args if not narrow(a)]
        if fixed and len(rest) == 1:
            c = sympy.Mul(*fixed)
            if facts.is_nonneg(c):
                return c * _X, rest[0], False
            if facts.is_nonneg(-c):
                return c * _X, rest[0], True
    if isinstance(e, sympy.Pow) and e.exp.is_positive and e.exp.is_number and facts.is_nonneg(e.base):
        return _X**e.exp, e.base, False
    return None


def _phase_of(expr, by_name) -> int:
    return max((by_name[s.name].phase for s in expr.free_symbols if s.name in by_name), default=0)


def _apply_monotone(program: Program, red: Value, outer, inner, flips: bool) -> None:
    namer = _Namer(set(program.input_scopes) | {v.name for v in program.values})
    new_values = []
    for v in program.values:
        if v is red:
            if inner.is_Symbol:
                arg_sym = inner
            else:
                arg = Value(namer.fresh(f"{red.name}_arg"), inner, "element", "", red.loc, guard=red.guard)
                new_values.append(arg)
                arg_sym = arg.symbol
            op = _flip(red.reduce) if flips else red.reduce
            inner_red = Value(
                namer.fresh(f"{op}_{arg_sym.name}"),
                arg_sym,
                "tensor",
                "",
                red.loc,
                reduce=op,
                over="tensor",
                guard=red.guard,
            )
            new_values.append(inner_red)
            red.expr = outer.xreplace({_X: inner_red.symbol})
            red.reduce = None
            red.over = None
        new_values.append(v)
    # the reduction's result now depends on values defined later in the list (outer's
    # tensor-scope factors): move it after all of them
    _rebuild(program, _topological(new_values, program))


def _topological(values: list[Value], program: Program) -> list[Value]:
    defined = set(program.input_scopes)
    out, pending = [], list(values)
    while pending:
        for i, v in enumerate(pending):
            if {s.name for s in v.expr.free_symbols} <= defined | {o.name for o in out}:
                out.append(pending.pop(i))
                break
        else:
            raise AssertionError("cyclic IR")
    return out


def _sign_facts(program: Program) -> SignFacts:
    return value_facts(program)


# --------------------------------------------------------------------------- cleanup
def _dedupe(program: Program) -> None:
    seen: dict = {}
    mapping = {}
    kept = []
    outputs = set(program.outputs.values()) | set(program.group_outputs.values())
    for v in program.values:
        v.expr = v.expr.xreplace({s: mapping[s.name] for s in v.expr.free_symbols if s.name in mapping})
        if v.matrix is not None:  # a block is its own computation: renamed, never merged
            v.matrix.rename(mapping)
            kept.append(v)
            continue
        key = (v.expr, v.reduce, v.over, v.guard)
        if key in seen and v.name not in outputs and v.var == "":
            mapping[v.name] = seen[key].symbol
            continue
        seen.setdefault(key, v)
        kept.append(v)
    _rebuild(program, kept)


def _dce(program: Program) -> None:
    live = set(program.outputs.values()) | set(program.group_outputs.values())
    for v in reversed(program.values):
        if v.name in live:
            live |= {s.name for s in v.expr.free_symbols}
    _rebuild(program, [v for v in program.values if v.name in live])


def _check_global_reductions(program: Program) -> None:
    """Cross-parameter reductions run as one pass over every tensor of every group before any
    tensor is updated: see group_state.check_global_reduction for what they may read."""
    for red in program.reductions("global"):
        check_global_reduction(program, red)


def _number_phases(program: Program) -> None:
    """phase: the pass that computes a value; a per-tensor reduction computed in pass p is
    available from pass p + 1. Host and global values are ready before pass 0."""
    available: dict[str, int] = {}
    for v in program.values:
        p = max((available.get(s.name, 0) for s in v.expr.free_symbols), default=0)
        v.phase = 0 if v.scope in ("host", "global") else p
        # a matrix value, like a reduction, needs every element of what it reads
        ends_phase = (v.is_reduction and v.over == "tensor") or v.matrix is not None
        available[v.name] = v.phase + 1 if ends_phase else v.phase


def lower_all(spec: Spec) -> list[Program]:
    """The program for every combination of options (what `check` and `build` compile)."""
    return [lower(spec, combo) for combo in spec.option_combinations()]
