"""Stage 5, prove: claims about specs, proven symbolically, refuted with a concrete run, or
left unknown. Never proven by sampling: numbers only screen obligations and find (and
re-check) counterexamples.

    proof = optgen.prove("forms/adan_nme", "forms/adan_agd",
                         mapping={"param": "param - lr * (1 - beta1) * exp_avg",
                                  "exp_avg": "(1 - beta1) * exp_avg + g_prev",
                                  "previous_grad": "g_prev"},
                         ghost={"g_prev": {"init": 0, "update": "grad"}})
    proof.status          # "proven" | "refuted" | "unknown"
    proof.obligations     # what was shown, one by one
    proof.counterexample  # refuted: a run where the two sides diverge

`optgen prove [SPEC...]` proves the `claims:` of specs (all of the catalog and
specs/forms/ by default); `prove_spec_claims(spec)` is the same for one spec."""

from __future__ import annotations

import time
from pathlib import Path

from .. import catalog
from ..errors import SpecError
from ..spec import Spec
from .claims import find_spec_path, load_other, prove_claim, prove_spec_claims
from .equivalence import Equivalence, prove_equivalence
from .facts import denominator_findings, state_facts
from .result import PROVEN, REFUTED, UNKNOWN, ClaimResult, Obligation, Proof
from .sides import Ghost

__all__ = [
    "PROVEN",
    "REFUTED",
    "UNKNOWN",
    "ClaimResult",
    "Obligation",
    "Proof",
    "cli",
    "denominator_findings",
    "prove",
    "prove_claim",
    "prove_spec_claims",
    "state_facts",
]


def prove(
    a,
    b=None,
    mapping: dict | None = None,
    *,
    given: dict | None = None,
    with_: dict | None = None,
    ghost: dict | None = None,
    when: str | None = None,
):
    """Prove that spec `a` computes what spec `b` computes under `mapping` (a's param and
    states as expressions of b's; names a's param/states leave out map to b's of the same
    name). `given` / `with_` specialise a / b: {"hyperparameters": {name: expr}, "options":
    {name: bool}}; `ghost` adds states to b: {name: {"init": expr, "update": expr}}; `when`
    is a condition under which the steps are compared. Specs are Spec objects, catalog
    names, forms/NAME or paths. With b omitted, proves a's own claims (a list of
    ClaimResult)."""
    spec_a = a if isinstance(a, Spec) else load_other(str(a))
    if b is None:
        return prove_spec_claims(spec_a)
    spec_b = b if isinstance(b, Spec) else load_other(str(b), spec_a)
    a_sel, b_sel = given or {}, with_ or {}
    ghosts = [Ghost(name, g["init"], g["update"]) for name, g in (ghost or {}).items()]
    return prove_equivalence(
        Equivalence(
            spec_a,
            spec_b,
            dict(mapping or {}),
            a_sel.get("options", {}),
            b_sel.get("options", {}),
            a_sel.get("hyperparameters", {}),
            b_sel.get("hyperparameters", {}),
            ghosts,
            when,
        )
    )


# --------------------------------------------------------------------------- command line
def cli(args) -> int:
    """`optgen prove [SPEC...] [-v]`: exit 0 when every claim comes out as it expects, 1
    otherwise, 2 on bad input (a SpecError, printed by the caller with its location)."""
    start = time.perf_counter()
    results: list[ClaimResult] = []
    for spec in _specs(args.specs):
        for result in prove_spec_claims(spec):
            print(format_result(result, args.verbose))
            results.append(result)
    print(summary_line(results, time.perf_counter() - start))
    return 1 if any(not r.as_expected for r in results) else 0


def summary_line(results: list[ClaimResult], seconds: float) -> str:
    """`6 claim(s) in 2.0s: 4 proven, 2 refuted; all as expected`, or `...; 1 unexpected:
    AdamW claim 2 (refuted, expected proven)`: only unexpected results fail the run."""
    counts = {s: sum(r.proof.status == s for r in results) for s in (PROVEN, REFUTED, UNKNOWN)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    off = [r for r in results if not r.as_expected]
    status = "all as expected"
    if off:
        which = ", ".join(f"{r.spec} claim {r.index} ({r.proof.status}, expected {r.expect})" for r in off)
        status = f"{len(off)} unexpected: {which}"
    return f"{len(results)} claim(s) in {seconds:.1f}s: {summary}; {status}"


def _specs(names: list[str]) -> list[Spec]:
    from ..parse import load_path

    if not names:
        paths = [catalog.path_of(n) for n in catalog.names()] + sorted((catalog.specs_dir() / "forms").glob("*.yaml"))
        return [load_path(p) for p in paths]
    specs = []
    for name in names:
        path = find_spec_path(name, Path.cwd())
        if path is None:
            raise SpecError(None, f"no spec {name!r}: expected a catalog name, forms/NAME or a path")
        specs.append(load_path(path))
    return specs


def format_result(result: ClaimResult, verbose: bool = False) -> str:
    lines = [str(result)]
    lines += [f"    {o}" for o in result.proof.obligations]
    lines += [f"    note: {n}" for n in result.proof.notes]
    cx = result.proof.counterexample
    if cx is not None:
        lines.append("    counterexample:" + ("" if verbose else f" {_short(cx)}"))
        lines += [f"      {line}" for line in _flat(cx)] if verbose else []
    return "\n".join(lines)


def _short(cx: dict) -> str:
    """One line: where the two sides part and by how much."""

    def is_side(v) -> bool:
        return isinstance(v, dict) and ("result" in v or "result_mapped" in v)

    parts = [f"{k}={_fmt(v)}" for k, v in cx.items() if k not in ("checked_by", "state") and not is_side(v)]
    sides = [f"{k}: {_fmt(v.get('result', v.get('result_mapped')))}" for k, v in cx.items() if is_side(v)]
    return "; ".join(parts + sides) + f" (checked by {cx.get('checked_by', 'float64')}; -v for all values)"


def _flat(cx: dict, prefix: str = "") -> list[str]:
    """Every value of a counterexample, one `path: value` line each, full precision."""
    out = []
    for key, value in cx.items():
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            out += _flat(value, f"{prefix}{key}.")
        elif isinstance(value, dict):
            out.append(f"{prefix}{key}: " + ", ".join(f"{k}={_fmt(v, repr)}" for k, v in value.items()))
        else:
            out.append(f"{prefix}{key}: {_fmt(value, repr)}")
    return out


def _fmt(v, number=lambda x: f"{x:.6g}") -> str:
    if isinstance(v, float):
        return number(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x, number) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x, number)}" for k, x in v.items()) + "}"
    return str(v)
