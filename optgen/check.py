"""Stage 2, check: well-formedness and static facts of a parsed spec.

Well-formedness (errors): every name defined before use, every state updated and read,
defaults inside their ranges, every option used, for every combination of options.
Static facts: which states are non-negative (by induction from their init and update),
and whether every denominator can be shown > 0 (a warning when it cannot)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from .errors import Loc, SpecError
from .expr import REDUCTIONS
from .facts import SignFacts
from .ir import Program
from .spec import If, Spec, condition_names


@dataclass
class Finding:
    loc: Loc | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}{self.severity}: {self.message}"


@dataclass
class Report:
    spec: Spec
    findings: list[Finding] = field(default_factory=list)
    nonneg: set[str] = field(default_factory=set)  # states proven >= 0 (all option settings)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def add(self, loc, message, severity="error") -> None:
        finding = Finding(loc, message, severity)
        if all(str(f) != str(finding) for f in self.findings):
            self.findings.append(finding)


def check(spec: Spec) -> Report:
    from .lower import lower

    report = Report(spec)
    _check_defaults(spec, report)
    _check_options_used(spec, report)
    used_hypers: set[str] = set()
    programs = []
    for combo in spec.option_combinations():
        try:
            program = lower(spec, combo)
        except SpecError as exc:
            report.add(exc.loc, exc.message)
            continue
        programs.append(program)
        used_hypers |= _free_names(program)
        _check_states_read(program, report)
        _check_denominators(program, report)
    for key, h in spec.hyperparameters.items():
        if programs and not any(n in used_hypers for n in h.names):
            report.add(h.loc, f"hyperparameter `{key}` is never used by the update", "warning")
    if programs:
        report.nonneg = set.intersection(*(nonneg_states(spec, p.options) for p in programs))
    return report


def _check_defaults(spec: Spec, report: Report) -> None:
    for key, h in spec.hyperparameters.items():
        if h.captured is not None:
            if h.captured not in spec.hyperparameters or spec.hyperparameters[h.captured].is_tuple:
                report.add(h.loc, f"`{key}` is captured from `{h.captured}`, which is not a scalar hyperparameter")
            continue
        for name, value in zip(h.names, h.default):
            if not h.range.contains(value):
                report.add(h.loc, f"default of `{name}` ({value:g}) is outside its range {h.range}")


def _check_options_used(spec: Spec, report: Report) -> None:
    used: set[str] = set()

    def walk(block):
        for stmt in block:
            if isinstance(stmt, If):
                used.update(condition_names(stmt.cond))
                walk(stmt.body)
                walk(stmt.orelse)

    walk(spec.update)
    for s in spec.state.values():
        if s.when is not None:
            for name in condition_names(s.when):
                if name not in spec.options:
                    report.add(s.loc, f"`when: {name}`: no option named `{name}`")
                used.add(name)
    for name, opt in spec.options.items():
        if name not in used:
            report.add(opt.loc, f"option `{name}` is never used (no `if {name}:` and no `when: {name}`)")


def _free_names(program: Program) -> set[str]:
    names = set()
    for v in program.values:
        names |= {s.name for s in v.expr.free_symbols}
    for s in program.states:
        names |= {x.name for x in s.init.free_symbols}
    captured = {h.captured for h in program.spec.hyperparameters.values() if h.captured and h.key in names}
    return names | captured


def inputs_of(program: Program, name: str) -> set[str]:
    """The input names (states, param, grad, hyperparameters) a value depends on."""
    by_name = program.by_name
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


def _check_states_read(program: Program, report: Report) -> None:
    """A state is useful if its old value reaches param's new value, directly or through
    another useful state across steps."""
    states = {s.name for s in program.states}
    useful = inputs_of(program, program.outputs["param"]) & states
    while True:
        more = set().union(*(inputs_of(program, program.outputs[s]) & states for s in useful)) - useful if useful else set()
        if not more:
            break
        useful |= more
    for s in program.states:
        if s.name not in useful:
            report.add(s.loc, f"state `{s.name}` never influences the parameter update (options: {_fmt(program.options)})")


class Inliner:
    """Values expanded into expressions over inputs only (reductions kept as calls),
    memoised per program."""

    def __init__(self, program: Program):
        self.by_name = program.by_name
        self.memo: dict[str, sympy.Expr] = {}

    def __call__(self, name: str) -> sympy.Expr:
        if name in self.memo:
            return self.memo[name]
        v = self.by_name[name]
        if v.is_reduction:
            from .expr import GlobalSum, ReduceMax, ReduceMin, ReduceSum

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
    """States >= 0 at every step: the greatest set S such that each state in S starts >= 0
    and its update is >= 0 whenever the states in S are (induction on the step)."""
    key = tuple(sorted(options.items()))
    cache = spec.__dict__.setdefault("_nonneg_cache", {})
    if key not in cache:
        cache[key] = _nonneg_states(spec, options)
    return cache[key]


def _nonneg_states(spec: Spec, options: dict[str, bool]) -> set[str]:
    try:
        program = _ssa_only(spec, options)
    except SpecError:
        return set()
    candidates = {s.name for s in program.states}
    expand = Inliner(program)
    updates = {s.name: expand(program.outputs[s.name]) for s in program.states}
    inits = {s.name: s.init for s in program.states}
    while True:
        facts = _base_facts(spec)
        facts.nonneg |= {spec.symbols[n] for n in candidates}
        keep = {n for n in candidates if facts.is_nonneg(inits[n]) and facts.is_nonneg(updates[n])}
        if keep == candidates:
            return candidates
        candidates = keep


def _ssa_only(spec: Spec, options: dict[str, bool]) -> Program:
    from .lower import _extract_reductions, _ssa, resolve_options

    program = _ssa(spec, resolve_options(spec, options))
    _extract_reductions(program)
    return program


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


def _check_denominators(program: Program, report: Report) -> None:
    """Every division by a value that cannot be shown > 0 is a warning at its statement;
    a division inside a where(...) is the spec's own guard and is not reported."""
    facts = value_facts(program)
    for v in program.values:
        if v.is_reduction:
            continue
        for node in sympy.preorder_traversal(v.expr):
            if isinstance(node, sympy.Piecewise):
                break
            if isinstance(node, sympy.Pow) and node.exp.is_negative and not facts.is_positive(node.base):
                report.add(v.loc, f"cannot show the denominator {_short(node.base)} is > 0 (from the ranges and the states' induction)", "warning")
                break


def _short(expr) -> str:
    text = str(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(options) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"
