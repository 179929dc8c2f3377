"""Host scalars: what the kernels read but never compute.

Every maximal host subexpression of a kernel expression (`1 - beta1`, `lr / bias_correction1`,
`step`) is computed once per step in float64 on the host and passed in a small per-tensor
table (a row per tensor, since tensors of one group may be at different steps), so fp32
arithmetic sees each constant rounded once, as torch.optim passes them. A bare
hyperparameter (`beta1`, `eps`) is a scalar kernel argument instead.

One HostTable serves every setting of the options, named by meaning: the same formula gets
the same name and table column in every setting, and a name never means two formulas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy

from ...expr import STEP
from ...ir import Program
from ...spec import Spec
from ..fused_groups import host_inputs
from .printer import HostPrinter


class HostTable:
    def __init__(self, spec: Spec, taken: set[str]):
        self.hypers = host_inputs(spec)  # group states are host scalars like hyperparameters
        self.taken = set(taken) | set(self.hypers) | {STEP}
        self.by_meaning: dict[sympy.Expr, str] = {}
        self.lines: dict[str, tuple[str, set[str]]] = {}  # name -> (Python expression, host names read)
        self.columns: list[str] = []  # step-table columns (they depend on the step), in first-use order
        self.scalars: list[str] = []  # scalar kernel arguments computed from hyperparameters alone
        self.kernel_hypers: set[str] = set()  # hyperparameters kernels take as scalar arguments

    def scope(self, program: Program) -> HostScope:
        """Register the host values of one program; its view of the table."""
        scope = HostScope(self, program)
        for v in program.values_of_scope("host"):
            meaning = v.expr.xreplace(scope.full)
            scope.full[v.symbol] = meaning
            if meaning.is_Number or self.is_hyper(meaning):
                scope.names[v.name] = None
                scope.constants[v.symbol] = meaning
                continue
            scope.names[v.name] = self.define(meaning, v.name, v.expr, scope)
        return scope

    def is_hyper(self, e) -> bool:
        return e.is_Symbol and e.name in self.hypers

    def define(self, meaning, preferred: str, expr, scope: HostScope) -> str:
        if meaning in self.by_meaning:
            return self.by_meaning[meaning]
        name, i = preferred, 0
        while name in self.taken:
            i += 1
            name = f"{preferred}_{i}"
        self.taken.add(name)
        self.by_meaning[meaning] = name
        expr = expr.xreplace(scope.constants)
        self.lines[name] = (HostPrinter(scope.printable).doprint(expr), scope.reads(expr))
        return name

    def use(self, name: str, meaning) -> None:
        """A kernel reads `name`: a step-table column if it depends on the step, else a scalar."""
        on_step = name == STEP or any(s.name == STEP for s in meaning.free_symbols)
        kind = self.columns if on_step else self.scalars
        if name not in kind:
            kind.append(name)

    def needed_lines(self, names: list[str]) -> list[tuple[str, str]]:
        """The host statements `names` need, in definition order."""
        need: set[str] = set()
        stack = [c for c in names if c in self.lines]
        while stack:
            name = stack.pop()
            if name not in need:
                need.add(name)
                stack.extend(self.lines[name][1])
        return [(name, text) for name, (text, _) in self.lines.items() if name in need]

    def function_hypers(self, names: list[str]) -> list[str]:
        """The hyperparameters the host function computing `names` reads."""
        text = " ".join(t for _, t in self.needed_lines(names))
        return [h for h in self.hypers if re.search(rf"\b{re.escape(h)}\b", text)]


@dataclass
class HostScope:
    """One program's view of the host table."""

    table: HostTable
    program: Program
    full: dict = field(default_factory=dict)  # host value symbol -> formula in hyperparameters and step
    names: dict = field(default_factory=dict)  # host value name -> table name (None: a number or hyperparameter)
    constants: dict = field(default_factory=dict)  # host value symbol -> the number or hyperparameter it is

    @property
    def printable(self) -> dict[str, str]:
        return {k: v for k, v in self.names.items() if v is not None}

    def reads(self, expr) -> set[str]:
        return {self.names[s.name] for s in expr.free_symbols if self.names.get(s.name)}

    def is_host(self, e) -> bool:
        return all(self.program.scope_of(s.name) == "host" for s in e.free_symbols)

    def lift(self, e):
        """e with each maximal host subexpression replaced by what the kernel reads."""
        if e.is_Number or e in (sympy.true, sympy.false):
            return e
        if isinstance(e, (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)):
            return e.func(*[self.lift(a) for a in e.args])
        if self.is_host(e):
            return self.leaf(e)
        if e.is_Symbol:
            return e
        if isinstance(e, sympy.Mul):
            return self._lift_mul(e)
        if isinstance(e, sympy.Add):
            host = [a for a in e.args if self.is_host(a)]
            rest = [self.lift(a) for a in e.args if not self.is_host(a)]
            return sympy.Add(self.leaf(sympy.Add(*host)) if host else 0, *rest)
        if isinstance(e, sympy.Piecewise):
            return sympy.Piecewise(*[(self.lift(a.expr), self.lift(a.cond)) for a in e.args])
        return e.func(*[self.lift(a) for a in e.args])

    def _lift_mul(self, e: sympy.Mul):
        """c * h1 * x / h2 -> c * leaf(h1) * x / leaf(h2): a host divisor stays a division,
        as torch writes `exp_avg_sq.sqrt() / bias_correction2_sqrt`."""
        coeff, factors = e.as_coeff_mul()
        host = [f for f in factors if self.is_host(f)]
        rest = [self.lift(f) for f in factors if not self.is_host(f)]
        num = sympy.Mul(*[f for f in host if not _reciprocal(f)])
        den = sympy.Mul(*[1 / f for f in host if _reciprocal(f)])
        out = sympy.Mul(coeff, self.leaf(num), *rest)
        return out / self.leaf(den)

    def leaf(self, e):
        """A host subexpression as a kernel reads it: a number, a hyperparameter argument or
        a step-table column."""
        meaning = e.xreplace(self.full)
        if meaning.is_Number:
            return meaning
        if self.table.is_hyper(meaning):
            self.table.kernel_hypers.add(meaning.name)
            return meaning
        if e.is_Symbol and e.name == STEP:
            name = STEP
        elif e.is_Symbol:
            name = self.names[e.name]
        else:
            name = self.table.define(meaning, _name_for(e, self.printable, self.table.hypers), e, self)
        self.table.use(name, meaning)
        return sympy.Symbol(name, real=True)


def _reciprocal(f) -> bool:
    return isinstance(f, sympy.Pow) and f.exp.is_negative is True


def _name_for(e, names: dict, order: list[str]) -> str:
    """A readable identifier for a host subexpression: one_minus_beta1, lr_weight_decay."""
    name = _words(e, names, order)
    return name if name and name.isidentifier() and len(name) <= 40 else "host_scalar"


def _words(x, names: dict, order: list[str]) -> str | None:
    if x.is_Symbol:
        return names.get(x.name, x.name)
    if x.is_Integer and x > 0:
        return f"x{x}"
    if isinstance(x, sympy.Add) and len(x.args) == 2 and sympy.S.One in x.args:
        other = x.args[0] if x.args[1] == 1 else x.args[1]
        negated = _is_negated(other)
        inner = _words(-other if negated else other, names, order)
        return inner and (f"one_minus_{inner}" if negated else f"one_plus_{inner}")
    if isinstance(x, sympy.Pow) and x.base.is_Symbol:
        base = _words(x.base, names, order)
        return {sympy.S.Half: f"sqrt_{base}", sympy.S(2): f"{base}_sq", sympy.S(-1): f"inv_{base}"}.get(x.exp)
    if isinstance(x, sympy.Mul):
        coeff, factors = x.as_coeff_mul()
        if not coeff.is_Integer:
            return None
        rank = {n: i for i, n in enumerate(order)}
        factors = sorted(factors, key=lambda f: rank.get(f.name, len(rank)) if f.is_Symbol else len(rank))
        parts = [_words(f, names, order) for f in factors]
        if None in parts:
            return None
        prefix = ["neg"] if coeff == -1 else [f"x{coeff}"] if coeff != 1 else []
        return "_".join(prefix + parts)
    return None


def _is_negated(e) -> bool:
    coeff, _ = e.as_coeff_Mul()
    return coeff.is_negative is True
