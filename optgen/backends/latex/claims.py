"""The proven claims of a spec, as propositions for the documents.

Claims are proven by optgen.prover (when it is installed): `prove_spec_claims(spec)` gives
one result per claim with `.expect` and `.proof.status`. A claim is shown only when the
verdict is the one the spec expects, so a document never states what was not shown.
Claim expressions are parsed by the spec parser's converter (never eval'ed)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import sympy

from ...errors import Loc, SpecError
from ...expr import symbol
from ...spec import Spec
from .algorithm import option_tex, symbol_tex
from .printer import OptgenLatexPrinter
from .symbols import PARAM_TEX, default_tex
from .text import escape


@dataclass
class Proposition:
    statement: str  # LaTeX; text that came from the spec is escaped
    mapping: list[tuple[str, str]]  # (a state of the other form, its value in this spec's terms)


def prover():
    """optgen.prover.prove_spec_claims, or None while the prover is not installed."""
    try:
        module = importlib.import_module("optgen.prover")
    except ModuleNotFoundError as exc:
        if exc.name == "optgen.prover":
            return None
        raise
    return getattr(module, "prove_spec_claims", None)


class _Math:
    """LaTeX for the names and expressions of one spec's claims."""

    def __init__(self, spec: Spec, extra: frozenset[str] | set[str] = frozenset()):
        self.spec = spec
        self.symbols = dict(spec.symbols) | {n: symbol(n) for n in extra}
        names = {n: symbol_tex(spec, n) for n in spec.symbols} | {n: default_tex(n) for n in extra}
        names.update({"param": PARAM_TEX, "grad": "g", "step": "t"})
        self.printer = OptgenLatexPrinter(names, set(spec.state) | {"param", "grad"} | set(extra))

    def __call__(self, value) -> str:
        if isinstance(value, bool):
            return rf"\text{{{str(value).lower()}}}"
        expr = self._parse(str(value))
        return self.printer.doprint(expr) if expr is not None else rf"\texttt{{{escape(str(value))}}}"

    def _parse(self, text: str) -> sympy.Basic | None:
        from ...parse import ExprConverter, Source, parse_python

        source = Source(text, [Loc("<claim>", 1, 1)])
        try:
            tree = parse_python(source, "eval", "a claim")
            return ExprConverter(source, self.symbols, set(), "a claim").convert(tree.body, condition=True)
        except (SpecError, SyntaxError, ValueError, TypeError):
            return None

    def name(self, name: str) -> str:
        return PARAM_TEX if name == "param" else self.printer.names.get(name) or default_tex(name)

    def settings(self, given: dict | None, keys: _Math | None = None) -> str:
        """`{hyperparameters: {weight_decay: 0}, options: {amsgrad: false}}` as equations;
        the names from `keys` (the other spec of `with:`), the values from this spec."""
        given, keys = given or {}, keys or self
        parts = [f"{keys.name(k)} = {self(v)}" for k, v in (given.get("hyperparameters") or {}).items()]
        parts += [f"{option_tex(k)} = {self(v)}" for k, v in (given.get("options") or {}).items()]
        return ",\\ ".join(parts)


def _limit_point(text: str) -> str:
    """`step -> oo` as t \\to \\infty; `eps -> 0+` as \\epsilon \\to 0^+ (names as given)."""
    name, _, toward = (part.strip() for part in str(text).partition("->"))
    side = toward[-1] if toward.endswith(("+", "-")) else ""
    point = toward.rstrip("+-")
    point_tex = r"\infty" if point == "oo" else r"-\infty" if point == "-oo" else escape(point)
    return name, point_tex + (f"^{side}" if side else "")


def _statement(spec: Spec, claim: dict, verdict: str, math: _Math) -> str:
    name = escape(spec.name)
    given = math.settings(claim.get("given"))
    lead = f"With ${given}$, " if given else ""
    if "equivalent_to" in claim:
        other_spec = _other(spec, claim["equivalent_to"])
        other = escape(other_spec.name if other_spec else str(claim["equivalent_to"]))
        setting = math.settings(claim.get("with"), keys=_Math(other_spec)) if other_spec and claim.get("with") else ""
        other += f" with ${setting}$" if setting else ""
        if verdict == "refuted":
            return f"{lead}{name} is not the same algorithm as {other}: the prover found a run where they differ."
        when = f" while ${math(claim['when'])}$" if claim.get("when") else ""
        mapped = f" (each state of {name} below in terms of those of {other_spec.name if other_spec else other})"
        return f"{lead}{name} is the same algorithm as {other}{when}" + (mapped if claim.get("map") else "") + "."
    if "limit" in claim:
        limit = claim["limit"]
        var, point = _limit_point(limit.get("as", ""))
        return rf"{lead}$\lim_{{{math.name(var)} \to {point}}} {math(limit['expr'])} = {math(limit['equals'])}$."
    if "invariant" in claim:
        return f"{lead}at every step, ${math(claim['invariant'])}$."
    if "scale_invariant" in claim:
        item = claim["scale_invariant"]
        of = math(item["of"])
        return f"{lead}${math(item['expr'])}$ does not change when ${of}$ is replaced by $c\\,{of}$ for any $c > 0$."
    return f"{lead}{name}: {escape(str(claim))}: {escape(verdict)}."


def _other(spec: Spec, ref) -> Spec | None:
    """The spec an equivalence names, for its symbols; None when it cannot be loaded."""
    try:
        from ...prover.claims import load_other

        return load_other(str(ref), spec)
    except (SpecError, ImportError, OSError):
        return None


def _mapping(spec: Spec, claim: dict, math: _Math) -> list[tuple[str, str]]:
    """(a state of this spec, its value in terms of the other spec's states) per map entry;
    the values may use this spec's hyperparameters and the claim's ghost states."""
    other = _other(spec, claim["equivalent_to"]) if "equivalent_to" in claim else None
    values = math
    if other is not None:
        values = _Math(other, set((claim.get("ghost") or {}).keys()))
        for name in spec.scalar_hypers:
            values.symbols[name] = spec.symbols[name]
            values.printer.names[name] = symbol_tex(spec, name)
    return [(math.name(str(key)), values(value)) for key, value in (claim.get("map") or {}).items()]


_PROVEN: dict[tuple, tuple[Spec, list[Proposition]]] = {}  # `optgen build` renders a spec twice


def propositions(spec: Spec) -> list[Proposition] | None:
    """The claims proven as the spec expects; None when no prover is installed."""
    prove = prover()
    if prove is None:
        return None
    if not spec.claims:
        return []
    key = (id(spec), prove)
    if key in _PROVEN and _PROVEN[key][0] is spec:
        return _PROVEN[key][1]
    out = _prove(spec, prove)
    _PROVEN[key] = (spec, out)
    return out


def _prove(spec: Spec, prove) -> list[Proposition]:
    out = []
    for node, result in zip(spec.claims, prove(spec)):
        if result.proof.status != result.expect:
            continue
        claim = node.plain() if hasattr(node, "plain") else node
        math = _Math(spec, set((claim.get("ghost") or {}).keys()))
        statement = _statement(spec, claim, result.proof.status, math)
        if claim.get("doc"):
            statement += " " + escape(str(claim["doc"]))
        out.append(Proposition(statement, _mapping(spec, claim, math)))
    return out
