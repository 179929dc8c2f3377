"""The prover on the catalog's claims, its command line and API, the undecidable case, bad
claims, and the static facts it derives (state bounds, denominators)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import optgen
from optgen import catalog
from optgen.cli import main
from optgen.errors import SpecError
from optgen.prover import prove_spec_claims
from optgen.prover.facts import denominator_findings, state_facts

SPECS = catalog.specs_dir()
FORMS = SPECS / "forms"

# The verdicts ALGORITHMS.md states, claim by claim: (spec file, claim index) -> verdict.
STATED = {
    ("forms/adan_nme.yaml", 1): "proven",  # 1. Adan's NME form = AGD (Lemma 1)
    ("forms/sgd_classic.yaml", 1): "proven",  # 2. torch momentum = classic momentum
    ("forms/sgd_sutskever.yaml", 1): "proven",  # 3. torch nesterov = Sutskever's
    ("forms/adam_folded.yaml", 1): "proven",  # 4. folded step size with eps_hat = eps*sqrt(1-b2^t)
    ("forms/adam_folded.yaml", 2): "refuted",  # 4. ... and with eps_hat = eps
    ("adamw.yaml", 1): "refuted",  # 5. Adam + L2 vs AdamW
    ("adamw.yaml", 2): "proven",  # 5. ... equal when weight_decay = 0
    ("forms/nadam_dozat.yaml", 1): "proven",  # 6. NAdam torch = Dozat
    ("adabound.yaml", 1): "proven",  # 7. lower bound -> final_lr
    ("adabound.yaml", 2): "proven",  # 7. upper bound -> final_lr
    ("adabound.yaml", 3): "proven",  # 7. the clamp inactive: Adam (folded)
    ("setadam.yaml", 1): "proven",  # 8. SET-Adam's factor is scale invariant
}


@pytest.fixture(scope="module")
def catalog_results():
    specs = {str(p.relative_to(SPECS)): optgen.load(p) for p in [*SPECS.glob("*.yaml"), *FORMS.glob("*.yaml")]}
    return {(name, r.index): r for name, spec in specs.items() for r in prove_spec_claims(spec)}


@pytest.mark.parametrize("key", sorted(STATED), ids=lambda k: f"{k[0]}#{k[1]}")
def test_algorithms_md_claims_have_the_stated_verdict(catalog_results, key):
    result = catalog_results[key]
    assert result.proof.status == STATED[key], "\n".join(map(str, result.proof.obligations))
    if STATED[key] == "refuted":
        assert result.proof.counterexample["checked_by"].startswith("optgen.reference")


def test_every_catalog_claim_is_as_expected(catalog_results):
    off = [str(r) for r in catalog_results.values() if not r.as_expected]
    assert not off


def test_a_proof_lists_its_obligations(catalog_results):
    names = [o.name for o in catalog_results[("forms/adan_nme.yaml", 1)].proof.obligations]
    assert any(n.startswith("initial state corresponds") for n in names)
    assert "gradient points correspond" in names
    assert any(n.startswith("one step commutes: param") for n in names)


def test_optgen_prove_exits_0_when_all_is_as_expected(capsys):
    assert main(["prove", "adamw", "forms/adan_nme", str(FORMS / "adam_folded.yaml")]) == 0
    out = capsys.readouterr().out
    assert "5 claim(s)" in out and "all as expected" in out
    assert "AdanNME claim 1: AdanNME equivalent to AdanAGD: proven" in out
    assert "counterexample:" in out  # the refuted ones show theirs


def test_api_proves_and_refutes():
    kw = {"with_": {"hyperparameters": {"dampening": 0, "weight_decay": 0}, "options": {"nesterov": False}}}
    proof = optgen.prove("forms/sgd_classic", "sgd", mapping={"velocity": "lr * momentum_buffer"}, **kw)
    assert proof.status == "proven" and proof.counterexample is None
    proof = optgen.prove("forms/sgd_classic", "sgd", mapping={"velocity": "momentum_buffer"}, **kw)
    assert proof.status == "refuted" and proof.counterexample["diverges"] in ("param", "velocity")


# --------------------------------------------------------------------------- undecidable
UNDECIDABLE = """\
extends: forms/sgd_classic
name: SGDSplitGradient
summary: Classic momentum with the gradient written as its positive plus its negative part.
update: |
  velocity = momentum * velocity + lr * (maximum(grad, 0) + minimum(grad, 0))
  param = param - velocity
claims:
  - equivalent_to: {classic}
    expect: {expect}
"""


@pytest.mark.parametrize("expect, code", [("unknown", 0), ("proven", 1)])
def test_what_sympy_cannot_decide_is_unknown_never_proven(tmp_path, capsys, expect, code):
    path = tmp_path / "split.yaml"
    path.write_text(UNDECIDABLE.format(classic=FORMS / "sgd_classic.yaml", expect=expect))
    (result,) = prove_spec_claims(optgen.load(path))
    assert result.proof.status == "unknown"
    assert result.proof.counterexample is None
    assert any(o.status == "unknown" for o in result.proof.obligations)
    assert main(["prove", str(path)]) == code
    assert "unknown" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad claims
TO_SGD = "  - equivalent_to: sgd\n    with: {hyperparameters: {dampening: 0, weight_decay: 0}}\n"
BAD = [
    (TO_SGD + "    mapp: {velocity: lr}\n", "unknown key 'mapp'"),
    ("  - equivalent_to: no_such_spec\n", "no spec 'no_such_spec'"),
    (TO_SGD + "    map: {velocity: lr * nope}\n", "unknown name `nope`"),
    (TO_SGD + "    map: {speed: lr}\n", "`speed` is not a state"),
    (TO_SGD + "    with: {options: {nesterov: 1}}\n", "duplicate key"),
    (TO_SGD + "    expect: maybe\n", "expect: 'maybe'"),
    ("  - equivalent_to: sgd\n", "`dampening` is not one of"),
    ("  - invariant: velocity\n", "one comparison"),
    ("  - limit: {expr: velocity, as: velocity -> oo, equals: 0}\n", "must be `step`"),
]


@pytest.mark.parametrize("claim, message", BAD, ids=[m for _, m in BAD])
def test_a_malformed_claim_is_a_located_error_and_exit_2(tmp_path, capsys, claim, message):
    text = (FORMS / "sgd_classic.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(text[: text.index("claims:")] + "claims:\n" + claim)
    with pytest.raises(SpecError) as err:
        prove_spec_claims(optgen.load(path))
    assert message in str(err.value)
    assert err.value.loc is not None and err.value.loc.file == str(path) and err.value.loc.line > 10
    assert main(["prove", str(path)]) == 2
    assert f"{path}:" in capsys.readouterr().err


AMSGRAD = """\
extends: adam
name: AdamAMSGradFacts
claims:
  - invariant: max_exp_avg_sq >= exp_avg_sq
    given: {options: {amsgrad: true}}
  - invariant: max_exp_avg_sq > 0
    given: {options: {amsgrad: true}}
    expect: refuted
"""


def test_a_relation_between_states_is_proven_by_induction(tmp_path):
    path = tmp_path / "ams.yaml"
    path.write_text(AMSGRAD)
    kept, strict = prove_spec_claims(optgen.load(path))
    assert kept.proof.status == "proven"
    assert strict.proof.status == "refuted" and strict.proof.counterexample["step"] == 0  # 0 > 0 fails at once


# --------------------------------------------------------------------------- static facts
def test_state_bounds_by_induction():
    assert state_facts(optgen.load("adam"))["exp_avg_sq"].lo == 0
    assert math.isinf(state_facts(optgen.load("adam"))["exp_avg"].lo)
    mu_product = state_facts(optgen.load("nadam"))["mu_product"]
    assert (mu_product.lo, mu_product.hi) == (0, 1)


def test_nadam_and_adabound_denominators_are_shown_positive():
    assert denominator_findings(optgen.load("nadam")) == []
    assert denominator_findings(optgen.load("adabound")) == []  # base_lr has lr's range


def test_a_denominator_that_reaches_zero_is_a_located_finding(tmp_path):
    # SET-Adam without its guard for an all-zero v: cos_sq is 0/0 when every gradient is 0
    text = (SPECS / "setadam.yaml").read_text()
    guarded = "cos_sq = where(sum_sq > 0, sum(exp_avg_sq)**2 / (numel(param) * sum_sq), 1)"
    assert guarded in text
    path = tmp_path / "setadam.yaml"
    path.write_text(text.replace(guarded, "cos_sq = sum(exp_avg_sq)**2 / (numel(param) * sum_sq)"))
    findings = denominator_findings(optgen.load(path))
    (zero,) = [f for f in findings if "can be 0" in f.message]
    assert zero.loc.line == _line_of(path, "cos_sq = ")
    assert "grad = 0" in zero.message
    assert not [f for f in denominator_findings(optgen.load("setadam")) if "can be 0" in f.message]


def test_a_denominator_not_shown_positive_is_reported(tmp_path):
    text = (
        (FORMS / "sgd_classic.yaml")
        .read_text()
        .replace("param = param - velocity", "param = param - velocity / lr_noise")
    )
    text = text.replace("hyperparameters:\n", 'hyperparameters:\n  lr_noise: {default: 1.0, range: "(-inf, inf)"}\n')
    path = tmp_path / "noisy.yaml"
    path.write_text(text[: text.index("claims:")])
    (finding,) = denominator_findings(optgen.load(path))
    assert "lr_noise" in finding.message and finding.loc.line == _line_of(path, "param = param")


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_forms_are_not_in_the_built_catalog():
    assert FORMS.is_dir() and not any(n.startswith("forms") for n in catalog.names())


# --------------------------------------------------------------------------- the report
ADAMW_EXPECTING_PROVEN = """\
extends: {adamw}
name: AdamWClaimsTooMuch
claims:
  - equivalent_to: adam
    expect: proven
"""


def test_prove_marks_each_claim_as_expected_or_not(tmp_path, capsys):
    """A claim expected to be refuted that is refuted is as expected: its line says so, and
    only an unexpected verdict is in capitals, counted in the summary and fails the run."""
    assert main(["prove", "adamw"]) == 0
    lines = capsys.readouterr().out.splitlines()
    claims = [line for line in lines if " claim " in line and not line.startswith(" ")]
    assert len(claims) == 2
    assert claims[0].endswith("AdamW equivalent to Adam: refuted (as expected)")
    assert claims[1].endswith(": proven (as expected)")
    assert lines[-1].endswith("1 proven, 1 refuted; all as expected")

    path = tmp_path / "too_much.yaml"
    path.write_text(ADAMW_EXPECTING_PROVEN.format(adamw="adamw"))  # a catalog name: extends reads nothing else
    assert main(["prove", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("AdamWClaimsTooMuch equivalent to Adam: REFUTED (expected proven)") for line in lines)
    assert lines[-1].endswith("1 refuted; 1 unexpected: AdamWClaimsTooMuch claim 1 (refuted, expected proven)")
