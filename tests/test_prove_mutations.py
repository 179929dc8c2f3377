"""Every proven claim, broken on purpose (a flipped sign, a dropped factor, a wrong
coefficient, a changed init), must come back refuted with a counterexample; each
counterexample is replayed here, independently of the prover: both specs are run by the
Reference interpreter from the reported initial param and gradients, the claim's map is
recomputed by hand in NumPy, and the two results must differ (and match the report).

Mutations are made on copies of the spec text in a temporary folder, never on the catalog."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import optgen
from optgen import catalog
from optgen.prover import prove_spec_claims
from optgen.reference import Reference

SPECS = catalog.specs_dir()
FORMS = SPECS / "forms"
ALGEBRA = {"rtol": 1e-9, "atol": 1e-12}  # replay vs report: the same float64 computation


def diverge(a, b) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.any(np.abs(a - b) > 1e-6 * (1 + np.abs(a) + np.abs(b))))


# --------------------------------------------------------------------------- running specs
def history(spec, groups: Callable[[int], dict], x0, grads, inits: dict) -> list[dict]:
    """States after 0, 1, ..., len(grads) steps, by the Reference interpreter; `inits` are
    the states before the first step (which Reference does not expose)."""
    ref = Reference(optgen.load(spec), [{"params": [np.array(x0, float)], **groups(1)}])
    out = [{"param": np.array(x0, float), **inits}]
    for t, g in enumerate(grads, 1):
        ref.param_groups[0].update(groups(t))
        ref.step([np.array(g, float)])
        out.append({"param": ref.params[0].copy(), **{k: np.array(v, float) for k, v in ref.state[0].items()}})
    return out


@dataclass
class Pair:
    """How to replay an equivalence: each side's param group, the map (hand-written), the
    gradient points, the initial states."""

    b: Path | str
    group_a: Callable[[dict, int], dict]
    group_b: Callable[[dict, int], dict]
    mapped: Callable[[dict, dict, int, dict], dict]  # (b state, hyperparameters, steps done, cx)
    query_a: Callable[[dict, dict], np.ndarray] = lambda s, h: s["param"]
    query_b: Callable[[dict, dict], np.ndarray] = lambda s, h: s["param"]
    inits_a: dict | None = None
    inits_b: dict | None = None


def replay_equivalence(cx: dict, a_path: Path, pair: Pair, a_name: str, b_name: str) -> None:
    h, k = cx["hyperparameters"], cx["step"]
    x0, grads = np.array(cx["initial_param"]), [np.array(g) for g in cx["gradients"]]
    zeros = {n: np.zeros_like(x0) for n in ("exp_avg", "exp_avg_sq", "previous_grad", "velocity", "momentum_buffer")}
    a = history(a_path, lambda t: pair.group_a(h, t), x0, grads, {**zeros, **(pair.inits_a or {})})
    b = history(pair.b, lambda t: pair.group_b(h, t), x0, grads, {**zeros, **(pair.inits_b or {})})
    if cx["diverges"] == "gradient point":
        mine, theirs = pair.query_a(a[k - 1], h), pair.query_b(b[k - 1], h)
    else:
        mine, theirs = a[k][cx["diverges"]], pair.mapped(b[k], h, k, cx)[cx["diverges"]]
    assert diverge(mine, theirs)
    np.testing.assert_allclose(mine, cx[a_name]["result"], **ALGEBRA)
    np.testing.assert_allclose(theirs, cx[b_name]["result_mapped"], **ALGEBRA)


# --------------------------------------------------------------------------- the pairs
def adan_pair(param_sign=-1, exp_avg_factor=True, g_prev_coeff=1.0, ghost_init=0.0) -> Pair:
    def ghost(t, cx):
        return np.array(cx["gradients"][t - 1]) if t else np.full(len(cx["initial_param"]), ghost_init)

    def mapped(b, h, t, cx):
        lr, b1 = h["lr"], h["beta1"]
        g_prev = ghost(t, cx)
        m = (1 - b1) * b["exp_avg"] if exp_avg_factor else b["exp_avg"]
        return {
            "param": b["param"] + param_sign * lr * (1 - b1) * b["exp_avg"],
            "exp_avg": m + g_prev_coeff * g_prev,
            "previous_grad": g_prev,
        }

    group = lambda h, t: {"lr": h["lr"], "beta1": h["beta1"]}
    query_b = lambda s, h: s["param"] - h["lr"] * (1 - h["beta1"]) * s["exp_avg"]
    return Pair(FORMS / "adan_agd.yaml", group, group, mapped, query_b=query_b)


SGD_PLAIN = {"dampening": 0.0, "weight_decay": 0.0}


def sgd_pair(velocity_coeff=1.0, inits_a=None) -> Pair:
    return Pair(
        "sgd",
        lambda h, t: {"lr": h["lr"], "momentum": h["momentum"]},
        lambda h, t: {"lr": h["lr"], "momentum": h["momentum"], **SGD_PLAIN, "nesterov": False},
        lambda b, h, t, cx: {
            "param": b["param"],
            "velocity": velocity_coeff * h["lr"] * b.get("momentum_buffer", 0 * b["param"]),
        },
        inits_a=inits_a,
    )


def sutskever_pair(param_sign=1, lookahead_sign=-1) -> Pair:
    def mapped(b, h, t, cx):
        buf = b["momentum_buffer"]
        return {"param": b["param"] + param_sign * h["momentum"] * h["lr"] * buf, "velocity": h["lr"] * buf}

    return Pair(
        "sgd",
        lambda h, t: {"lr": h["lr"], "momentum": h["momentum"]},
        lambda h, t: {"lr": h["lr"], "momentum": h["momentum"], **SGD_PLAIN, "nesterov": True},
        mapped,
        query_a=lambda s, h: s["param"] + lookahead_sign * h["momentum"] * s["velocity"],
    )


def identity(b, h, t, cx):
    return b


def folded_pair(eps_of: Callable[[dict, int], float]) -> Pair:
    return Pair(
        FORMS / "adam_textbook.yaml",
        lambda h, t: {"lr": h["lr"], "betas": (h["beta1"], h["beta2"]), "eps_hat": h["eps_hat"]},
        lambda h, t: {"lr": h["lr"], "betas": (h["beta1"], h["beta2"]), "eps": eps_of(h, t)},
        identity,
    )


ADAM_GROUP = lambda h, t: {"lr": h["lr"], "betas": (h["beta1"], h["beta2"]), "eps": h["eps"]}
TEXTBOOK_VS_ADAM = Pair("adam", ADAM_GROUP, lambda h, t: {**ADAM_GROUP(h, t), "weight_decay": 0.0}, identity)
ADAMW_VS_ADAM = Pair(
    "adam",
    lambda h, t: {**ADAM_GROUP(h, t), "weight_decay": 0.5},
    lambda h, t: {**ADAM_GROUP(h, t), "weight_decay": 0.5},
    identity,
)


def nadam_group(decoupled: bool):
    def group(h, t):
        keys = ("lr", "eps", "weight_decay", "momentum_decay")
        return {**{k: h[k] for k in keys}, "betas": (h["beta1"], h["beta2"]), "decoupled_weight_decay": decoupled}

    return group


def adabound_pair() -> Pair:
    def group_a(h, t):
        keys = ("lr", "final_lr", "gamma", "eps", "base_lr")
        return {**{k: h[k] for k in keys}, "betas": (h["beta1"], h["beta2"]), "weight_decay": 0.0, "amsbound": False}

    def group_b(h, t):
        return {"lr": h["lr"], "betas": (h["beta1"], h["beta2"]), "eps_hat": 2 * h["eps"]}

    return Pair(FORMS / "adam_folded.yaml", group_a, group_b, identity)


def clamp_was_inactive(cx: dict, a_path: Path, pair: Pair) -> bool:
    """AdaBound's `when`: lower <= step_size / denom <= upper at every step of the run."""
    h = cx["hyperparameters"]
    x0, grads = np.array(cx["initial_param"]), [np.array(g) for g in cx["gradients"]]
    states = history(a_path, lambda t: pair.group_a(h, t), x0, grads, {})
    final = h["final_lr"] * h["lr"] / h["base_lr"]
    for t in range(1, cx["step"] + 1):
        step_size = h["lr"] * np.sqrt(1 - h["beta2"] ** t) / (1 - h["beta1"] ** t)
        x = step_size / (np.sqrt(states[t]["exp_avg_sq"]) + h["eps"])
        lower, upper = final * (1 - 1 / (h["gamma"] * t + 1)), final * (1 + 1 / (h["gamma"] * t))
        if not np.all((lower <= x) & (x <= upper)):
            return False
    return True


# --------------------------------------------------------------------------- mutations
@dataclass
class Mutation:
    id: str
    file: str  # relative to specs/
    index: int  # the claim
    old: str
    new: str
    pair: Pair | None = None


NME_MAP_PARAM = "param: param - lr * (1 - beta1) * exp_avg"
NME_MAP_M = "exp_avg: (1 - beta1) * exp_avg + g_prev"
FOLDED_EPS = "eps: eps_hat / sqrt(1 - beta2**step)"

EQUIVALENCES = [
    Mutation(
        "adan-map-sign",
        "forms/adan_nme.yaml",
        1,
        NME_MAP_PARAM,
        NME_MAP_PARAM.replace("- lr", "+ lr"),
        adan_pair(param_sign=+1),
    ),
    Mutation(
        "adan-map-dropped-factor",
        "forms/adan_nme.yaml",
        1,
        NME_MAP_M,
        "exp_avg: exp_avg + g_prev",
        adan_pair(exp_avg_factor=False),
    ),
    Mutation(
        "adan-map-coefficient",
        "forms/adan_nme.yaml",
        1,
        NME_MAP_M,
        NME_MAP_M.replace("+ g_prev", "+ 2 * g_prev"),
        adan_pair(g_prev_coeff=2.0),
    ),
    Mutation(
        "adan-ghost-init",
        "forms/adan_nme.yaml",
        1,
        "{init: 0, update: grad}",
        "{init: 1, update: grad}",
        adan_pair(ghost_init=1.0),
    ),
    Mutation(
        "adan-update-sign",
        "forms/adan_nme.yaml",
        1,
        "+ (1 - beta1) * (grad - previous_grad)",
        "- (1 - beta1) * (grad - previous_grad)",
        adan_pair(),
    ),
    Mutation(
        "sgd-map-coefficient",
        "forms/sgd_classic.yaml",
        1,
        "velocity: lr * momentum_buffer",
        "velocity: 2 * lr * momentum_buffer",
        sgd_pair(2.0),
    ),
    Mutation(
        "sgd-dropped-lr",
        "forms/sgd_classic.yaml",
        1,
        "|\n  velocity = momentum * velocity + lr * grad",
        "|\n  velocity = momentum * velocity + grad",
        sgd_pair(),
    ),
    Mutation(
        "sgd-init",
        "forms/sgd_classic.yaml",
        1,
        "velocity: {init: 0,",
        "velocity: {init: 1,",
        sgd_pair(inits_a={"velocity": 1.0}),
    ),
    Mutation(
        "nesterov-map-sign",
        "forms/sgd_sutskever.yaml",
        1,
        "param: param + momentum",
        "param: param - momentum",
        sutskever_pair(param_sign=-1),
    ),
    Mutation(
        "nesterov-lookahead-sign",
        "forms/sgd_sutskever.yaml",
        1,
        "gradient_at: param - momentum * velocity",
        "gradient_at: param + momentum * velocity",
        sutskever_pair(lookahead_sign=+1),
    ),
    Mutation(
        "folded-eps-inverted",
        "forms/adam_folded.yaml",
        1,
        FOLDED_EPS,
        "eps: eps_hat * sqrt(1 - beta2**step)",
        folded_pair(lambda h, t: h["eps_hat"] * np.sqrt(1 - h["beta2"] ** t)),
    ),
    Mutation(
        "folded-dropped-sqrt",
        "forms/adam_folded.yaml",
        1,
        "step_size = lr * sqrt(1 - beta2**step) / (1 - beta1**step)",
        "step_size = lr / (1 - beta1**step)",
        folded_pair(lambda h, t: h["eps_hat"] / np.sqrt(1 - h["beta2"] ** t)),
    ),
    Mutation(
        "textbook-bias-correction",
        "forms/adam_textbook.yaml",
        1,
        "exp_avg / (1 - beta1**step)",
        "exp_avg / (1 - beta1**(step + 1))",
        TEXTBOOK_VS_ADAM,
    ),
    Mutation("adamw-nonzero-decay", "adamw.yaml", 2, "{weight_decay: 0}", "{weight_decay: 0.5}", ADAMW_VS_ADAM),
    Mutation(
        "nadam-dropped-factor",
        "forms/nadam_dozat.yaml",
        1,
        "exp_avg_bar = (1 - mu) * grad_hat",
        "exp_avg_bar = grad_hat",
        Pair("nadam", nadam_group(False), nadam_group(False), identity),
    ),
    Mutation(
        "nadam-decoupled-schedule",
        "forms/nadam_dozat.yaml",
        2,
        "0.96**((step + 1) * momentum_decay)",
        "0.96**((step + 2) * momentum_decay)",
        Pair("nadam", nadam_group(True), nadam_group(True), identity),
    ),
    Mutation("adabound-eps", "adabound.yaml", 3, "{eps_hat: eps}", "{eps_hat: 2 * eps}", adabound_pair()),
]


def mutated_copy(tmp_path: Path, m: Mutation) -> Path:
    """The spec with exactly one textual change; forms are copied with their siblings (a
    form may extend another)."""
    shutil.copytree(FORMS, tmp_path / "forms")
    path = tmp_path / m.file
    if not path.exists():
        shutil.copy(SPECS / m.file, path)
    text = path.read_text()
    assert text.count(m.old) == 1, f"{m.old!r} must occur once in {m.file}"
    path.write_text(text.replace(m.old, m.new))
    return path


def refuted(path: Path, index: int) -> dict:
    result = prove_spec_claims(optgen.load(path))[index - 1]
    assert result.proof.status == "refuted", "\n".join(map(str, result.proof.obligations))
    assert not result.as_expected
    return result.proof.counterexample


@pytest.mark.parametrize("m", EQUIVALENCES, ids=lambda m: m.id)
def test_a_broken_equivalence_is_refuted_and_replays(tmp_path, m):
    path = mutated_copy(tmp_path, m)
    original = prove_spec_claims(optgen.load(SPECS / m.file))[m.index - 1]
    assert original.proof.status == "proven"
    cx = refuted(path, m.index)
    a_name = optgen.load(path).name
    b_name = next(k for k, v in cx.items() if isinstance(v, dict) and "result_mapped" in v)
    replay_equivalence(cx, path, m.pair, a_name, b_name)
    if m.id == "adabound-eps":
        assert clamp_was_inactive(cx, path, m.pair)


# --------------------------------------------------------------------------- other claims
INVARIANTS = [
    Mutation(
        "invariant-wrong-state", "forms/adam_textbook.yaml", 2, "invariant: exp_avg_sq >= 0", "invariant: exp_avg >= 0"
    ),
    Mutation(
        "invariant-flipped-update",
        "forms/adan_paper.yaml",
        1,
        "(1 - beta3) * exp_avg_sq + beta3",
        "(1 - beta3) * exp_avg_sq - beta3",
    ),
]


@pytest.mark.parametrize("m", INVARIANTS, ids=lambda m: m.id)
def test_a_broken_invariant_is_refuted_by_a_run(tmp_path, m):
    path = mutated_copy(tmp_path, m)
    cx = refuted(path, m.index)
    spec = optgen.load(path)
    h = cx["hyperparameters"]
    group = {k: (tuple(h[n] for n in hp.names) if hp.is_tuple else h[k]) for k, hp in spec.hyperparameters.items()}
    grads = [np.array(g) for g in cx["gradients"]]
    x0 = np.array(cx["initial_param"])
    state = "exp_avg" if "exp_avg >=" in m.new else "exp_avg_sq"
    run = history(path, lambda t: group, x0, grads, {})
    assert np.any(run[cx["step"]][state] < 0)
    np.testing.assert_allclose(run[cx["step"]][state], cx["state"][state], **ALGEBRA)


LIMITS = [
    (
        "limit-coefficient",
        "{expr: lower_bound, as: step -> oo, equals: final_lr}",
        "{expr: lower_bound, as: step -> oo, equals: 2 * final_lr}",
        1.0,
    ),
    (
        "limit-changed-base",
        "hyperparameters: {base_lr: lr}\n    expect: proven\n  - limit: {expr: upper",
        "hyperparameters: {base_lr: 2 * lr}\n    expect: proven\n  - limit: {expr: upper",
        0.5,
    ),
]


@pytest.mark.parametrize("mid, old, new, scale", LIMITS, ids=[x[0] for x in LIMITS])
def test_a_wrong_limit_is_refuted_and_the_bound_is_near_the_true_limit(tmp_path, mid, old, new, scale):
    path = mutated_copy(tmp_path, Mutation(mid, "adabound.yaml", 1, old, new))
    cx = refuted(path, 1)
    h = cx["hyperparameters"]
    t = cx["step"]
    base_lr = h["lr"] * (2 if "2 * lr" in new else 1)
    lower_bound = h["final_lr"] * h["lr"] / base_lr * (1 - 1 / (h["gamma"] * t + 1))
    assert not diverge(lower_bound, h["final_lr"] * scale)  # the true limit, reached
    assert diverge(lower_bound, cx["claimed"])


SCALE = [
    (
        "scale-claim-expr",
        "{expr: cos_sq, of: exp_avg_sq}",
        "{expr: cos_sq * sum(exp_avg_sq), of: exp_avg_sq}",
        lambda v, n: np.sum(v) ** 3 / (n * np.sum(v**2)),
    ),
    (
        "scale-update-power",
        "cos_sq = where(sum_sq > 0, sum(exp_avg_sq)**2 / (numel(param) * sum_sq), 1)",
        "cos_sq = where(sum_sq > 0, sum(exp_avg_sq) / (numel(param) * sum_sq), 1)",
        lambda v, n: np.sum(v) / (n * np.sum(v**2)),
    ),
]


def test_a_guard_that_is_not_scale_invariant_is_not_proven(tmp_path):
    # sum(v^2) > 1 picks a different branch for c * v than for v: never proven
    old = "cos_sq = where(sum_sq > 0, "
    path = mutated_copy(tmp_path, Mutation("scale-guard", "setadam.yaml", 1, old, "cos_sq = where(sum_sq > 1, "))
    (result,) = prove_spec_claims(optgen.load(path))
    assert result.proof.status != "proven"


@pytest.mark.parametrize("mid, old, new, factor", SCALE, ids=[x[0] for x in SCALE])
def test_a_broken_scale_invariance_is_refuted(tmp_path, mid, old, new, factor):
    path = mutated_copy(tmp_path, Mutation(mid, "setadam.yaml", 1, old, new))
    cx = refuted(path, 1)
    v, c = np.array(cx["point"]["exp_avg_sq.value"]), cx["point"]["scale"]
    n = v.size
    assert diverge(factor(v, n), factor(c * v, n))
    np.testing.assert_allclose([factor(v, n), factor(c * v, n)], [cx["value"], cx["value scaled"]], **ALGEBRA)
