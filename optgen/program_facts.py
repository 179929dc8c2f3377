"""Facts about a lowered program that several stages read: each value inlined into an
expression over the inputs, and sign facts (which values are >= 0 or > 0).

The lowering's monotone pass, the checker and the prover all use them; they live here so
that none of those stages imports another for them."""

from __future__ import annotations

import sympy

from .errors import SpecError
from .expr import GlobalSum, ReduceMax, ReduceMin, ReduceSum
from .facts import SignFacts
from .ir import Program
from .spec import Spec


class Inliner:
    """Values expanded into expressions over inputs only (reductions kept as calls),
    memoised per program."""

    def __init__(self, program: Program):
        self.by_name = program.by_name
        self.memo: dict[str, sympy.Expr] = {}

    def __call__(self, name: str) -> sympy.Expr:
        if name in self.memo:
            return self.memo[name]
        if name not in self.by_name:  # an input: a snapshot state is its own new value
            return sympy.Symbol(name, real=True)
        v = self.by_name[name]
        if v.is_reduction:
            func = GlobalSum if v.over == "global" else {"sum": ReduceSum, "min": ReduceMin, "max": ReduceMax}[v.reduce]
            result = func(self(v.expr.name) if v.expr.name in self.by_name else v.expr)
        else:
            result = v.expr.xreplace({s: self(s.name) for s in v.expr.free_symbols if s.name in self.by_name})
        self.memo[name] = result
        return result


def inline(program: Program, name: str) -> sympy.Expr:
    """A value's expression over inputs only (reductions kept as reduction calls)."""
    return Inliner(program)(name)


def _base_facts(spec: Spec) -> SignFacts:
    unit = {n: h.range for n, (h, _) in spec.scalar_hypers.items() if h.range.lo >= 0 and h.range.hi <= 1}
    below_one = {spec.symbols[n] for n, r in unit.items() if r.hi_open or r.hi < 1}
    return SignFacts(bounded_by_one=below_one, at_most_one={spec.symbols[n] for n in unit})


def nonneg_states(spec: Spec, options: dict[str, bool]) -> set[str]:
    """States >= 0 at every step (induction on the step, from their init and update, given
    the hyperparameter ranges): the prover's interval facts, cached per option setting."""
    from .prover.facts import nonneg_states as prove_nonneg

    key = tuple(sorted(options.items()))
    cache = spec.__dict__.setdefault("_nonneg_cache", {})
    if key not in cache:
        try:
            cache[key] = prove_nonneg(spec, options)
        except SpecError:
            cache[key] = set()
    return cache[key]


def value_facts(program: Program) -> SignFacts:
    """Sign facts for the program's inputs and values: ranges, non-negative states, and
    each value whose definition is shown >= 0 (or > 0) from the ones before it."""
    spec = program.spec
    facts = _base_facts(spec)
    facts.nonneg |= {sympy.Symbol(n, real=True) for n in nonneg_states(spec, program.options)}
    for v in program.values:
        if v.is_reduction:
            if sympy.Symbol(v.expr.name, real=True) in facts.nonneg:
                facts.nonneg.add(v.symbol)
        elif facts.is_positive(v.expr):
            facts.positive.add(v.symbol)
        elif facts.is_nonneg(v.expr):
            facts.nonneg.add(v.symbol)
    return facts
