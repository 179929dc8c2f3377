"""What a proof returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Loc

PROVEN, REFUTED, UNKNOWN = "proven", "refuted", "unknown"
STATUSES = (PROVEN, REFUTED, UNKNOWN)


@dataclass
class Obligation:
    """One thing a proof must show. status: "proven" (symbolically), "fails" (false at the
    point in `detail`, which need not be reachable), or "unknown" (SymPy could not decide;
    no point found where it fails)."""

    name: str
    status: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Proof:
    """The verdict on one claim. `counterexample` (refuted only) is a concrete run, re-run
    in float64 before it is reported, in which the two sides' results differ."""

    claim: str
    status: str
    obligations: list[Obligation] = field(default_factory=list)
    counterexample: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        return self.status == PROVEN


@dataclass
class ClaimResult:
    """A claim of a spec, what it expects, and the proof."""

    spec: str
    index: int  # position in the spec's `claims:` list, from 1
    loc: Loc | None
    expect: str
    proof: Proof

    @property
    def as_expected(self) -> bool:
        return self.proof.status == self.expect

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}{self.spec} claim {self.index}: {self.proof.claim}: {self.verdict}"

    @property
    def verdict(self) -> str:
        """`refuted (as expected)`, or in capitals when the claim did not come out as it
        expects: `REFUTED (expected proven)`."""
        if self.as_expected:
            return f"{self.proof.status} (as expected)"
        return f"{self.proof.status.upper()} (expected {self.expect})"


def verdict(obligations: list[Obligation], counterexample: dict | None) -> str:
    if counterexample is not None:
        return REFUTED
    return PROVEN if obligations and all(o.status == PROVEN for o in obligations) else UNKNOWN
