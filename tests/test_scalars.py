"""Cross-parameter values and `scope: group` states (issue 10, item 3).

Prodigy against pytorch_optimizer.Prodigy (float64 tight, float32) on the for-loop and
foreach paths and in the Reference interpreter, with several param groups, shapes and
options, a state_dict round trip mid-training and checkpoints moved from the reference;
small synthetic specs that combine global_sum / global_norm of states with group states
in other ways, each checked against the Reference on both eager paths (the fused paths:
tests/test_fused_groups.py); the checker's errors."""

from __future__ import annotations

import copy
import re
import textwrap

import numpy as np
import pytest
import torch

import optgen
from optgen.errors import CompileError, SpecError
from optgen.lower import lower
from optgen.parse import loads
from optgen.reference import Reference

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

SHAPES = [(3, 4), (5,), (2, 3, 2), (6,)]
EAGER = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}

# (constructor keywords, the two groups' own keywords): the second group differs in what the
# reference reads per group (weight_decay, eps); the rest is the same in every group, as the
# reference reads it from param_groups[0] (see the spec's notes)
SETTINGS = [
    ({}, ({}, {})),
    ({"d0": 1e-2}, ({}, {})),
    ({"lr": 0.5, "d0": 1e-2, "weight_decay": 0.1}, ({}, {"weight_decay": 0.0, "eps": 1e-6})),
    ({"d0": 1e-2, "bias_correction": True, "growth_rate": 1.5, "d_coef": 0.8}, ({}, {})),
    ({"d0": 1e-2, "safeguard_warmup": True, "betas": (0.8, 0.99)}, ({}, {})),
    ({"d0": 0.05, "fixed_decay": True, "weight_decay": 0.01, "beta3": 0.9}, ({}, {})),
]


@pytest.fixture(scope="module")
def prodigy():
    return optgen.optimizers.Prodigy


def _grads(params, rng):
    """A quadratic pull towards 1.5 plus noise: Prodigy's distance estimate then grows."""
    return [2 * (p.detach() - 1.5) + 0.1 * torch.as_tensor(rng.standard_normal(p.shape), dtype=p.dtype) for p in params]


def _groups(params, group_kw):
    return [{"params": params[:2], **group_kw[0]}, {"params": params[2:], **group_kw[1]}]


def _pair(cls, kw, group_kw, dtype, path, maximize=False):
    torch.manual_seed(0)
    start = [torch.randn(s, dtype=dtype) for s in SHAPES]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    opt = cls(_groups(ours, group_kw), maximize=maximize, **EAGER[path], **kw)
    ref = pytorch_optimizer.Prodigy(_groups(theirs, group_kw), maximize=maximize, foreach=False, **kw)
    return ours, theirs, opt, ref


def _steps(ours, theirs, opt, ref, steps, rng):
    for _ in range(steps):
        grads = _grads(theirs, rng)
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()


@pytest.fixture
def default_dtype():
    """The reference accumulates d_numerator and d_denom in torch's default dtype: float64
    runs set it to float64, else its float32 sums would limit the comparison."""
    old = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(old)


@pytest.mark.parametrize("path", list(EAGER))
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("maximize", [False, True])
def test_prodigy_float64_matches_pytorch_optimizer(prodigy, path, setting, maximize, default_dtype):
    default_dtype(torch.float64)
    kw, group_kw = SETTINGS[setting]
    ours, theirs, opt, ref = _pair(prodigy, kw, group_kw, torch.float64, path, maximize)
    _steps(ours, theirs, opt, ref, 10, np.random.default_rng(setting))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for ga, gb in zip(opt.param_groups, ref.param_groups):
        assert ga["d"] == pytest.approx(gb["d"], rel=1e-10)
        assert ga["d_max"] == pytest.approx(gb["d_max"], rel=1e-10)
        assert ga["d_numerator"] == pytest.approx(float(gb["d_numerator"]), rel=1e-9, abs=1e-15)


def test_prodigy_distance_estimate_moves(prodigy, default_dtype):
    """The settings above are not vacuous: d leaves d0 (so d, d_max and the sums matter)."""
    default_dtype(torch.float64)
    ours, theirs, opt, ref = _pair(prodigy, {"d0": 1e-2}, ({}, {}), torch.float64, "foreach")
    _steps(ours, theirs, opt, ref, 10, np.random.default_rng(0))
    assert opt.param_groups[0]["d"] > 10 * 1e-2
    assert opt.param_groups[0]["d"] == opt.param_groups[1]["d"]


@pytest.mark.parametrize("path", list(EAGER))
@pytest.mark.parametrize("setting", [0, 2, 3])
def test_prodigy_float32_matches_pytorch_optimizer(prodigy, path, setting):
    kw, group_kw = SETTINGS[setting]
    ours, theirs, opt, ref = _pair(prodigy, kw, group_kw, torch.float32, path)
    _steps(ours, theirs, opt, ref, 8, np.random.default_rng(setting))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert opt.param_groups[0]["d"] == pytest.approx(ref.param_groups[0]["d"], rel=1e-4)


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_reference_interpreter_matches_pytorch_optimizer(setting, default_dtype):
    default_dtype(torch.float64)
    kw, group_kw = SETTINGS[setting]
    torch.manual_seed(0)
    start = [torch.randn(s) for s in SHAPES]
    theirs = [p.clone().requires_grad_(True) for p in start]
    ref = pytorch_optimizer.Prodigy(_groups(theirs, group_kw), foreach=False, **kw)
    groups = [{"params": [p.numpy() for p in start[:2]], **kw, **group_kw[0]}]
    groups.append({"params": [p.numpy() for p in start[2:]], **kw, **group_kw[1]})
    interp = Reference(optgen.load("prodigy"), groups)
    rng = np.random.default_rng(setting)
    for _ in range(10):
        grads = _grads(theirs, rng)
        for b, g in zip(theirs, grads):
            b.grad = g.clone()
        ref.step()
        interp.step([g.numpy() for g in grads])
    for got, want in zip(interp.params, theirs):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert interp.param_groups[1]["d"] == pytest.approx(ref.param_groups[1]["d"], rel=1e-10)


@pytest.mark.parametrize("path", list(EAGER))
def test_prodigy_state_dict_round_trip_mid_training(prodigy, path, default_dtype):
    """Group states travel in state_dict()["param_groups"]; a fresh optimizer loaded from a
    checkpoint continues exactly as the one that wrote it."""
    default_dtype(torch.float64)
    kw, group_kw = SETTINGS[2]
    ours, theirs, opt, ref = _pair(prodigy, kw, group_kw, torch.float64, path)
    rng = np.random.default_rng(7)
    _steps(ours, theirs, opt, ref, 4, rng)
    # a copy, as a checkpoint on disk is: torch's load_state_dict keeps a state tensor of the
    # right dtype and device as it is, so the two optimizers would otherwise share them
    saved = copy.deepcopy(opt.state_dict())
    assert {"d", "d_max", "d_numerator"} <= set(saved["param_groups"][1])
    copies = [p.detach().clone().requires_grad_(True) for p in ours]
    resumed = prodigy(_groups(copies, group_kw), **EAGER[path], **kw)
    resumed.load_state_dict(saved)
    for _ in range(4):
        grads = _grads(ours, rng)
        for a, c, g in zip(ours, copies, grads):
            a.grad, c.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    for a, c in zip(ours, copies):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert resumed.param_groups[0]["d"] == opt.param_groups[0]["d"]


def test_prodigy_loads_a_pytorch_optimizer_checkpoint(prodigy, default_dtype):
    """Drop-in: the reference's state_dict (state keys, group["d"], a tensor d_numerator, an
    integer group step) loads into the generated class, which then continues as it does."""
    default_dtype(torch.float64)
    # beta3 given: the reference's default, None, is not a value the generated class takes
    kw, group_kw = {"d0": 1e-2, "beta3": 0.95}, ({}, {})
    ours, theirs, opt, ref = _pair(prodigy, kw, group_kw, torch.float64, "foreach")
    rng = np.random.default_rng(3)
    _steps(ours, theirs, opt, ref, 3, rng)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    _steps(ours, theirs, opt, ref, 4, rng)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_prodigy_has_a_fused_path(prodigy):
    """Group states and sums that read states run fused (tests/test_fused_groups.py compares
    the numbers): fused=True is accepted and `optgen check` warns of no missing fused path."""
    prodigy([torch.zeros(3, requires_grad=True)], fused=True)
    report = optgen.check(optgen.load("prodigy"))
    assert report.ok
    assert not [f.message for f in report.findings if "no fused path" in f.message]


def test_latex_prints_the_sum_over_parameters_and_scalar_group_states():
    tex = optgen.latex(optgen.load("prodigy"))
    assert r"\sum_{\mathcal{P}} \sum_{i} \left|{s_{t}}\right|" in tex
    assert r"d_{\max,t} \leftarrow" in tex and r"d_{t-1}" in tex


# --------------------------------------------------------------------------- synthetic specs
def _spec(name: str, state: str, update: str, extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
            name: {name}
            summary: A synthetic spec for cross-parameter values.
            paper: none
            parity: independent
            {extra}
            hyperparameters:
              lr: {{default: 0.1, range: '(0, inf)', tex: '\\gamma'}}
              beta: {{default: 0.9, range: '[0, 1)', tex: '\\beta'}}
              eps: {{default: 1.0e-3, range: '(0, inf)', tex: '\\epsilon'}}
            state:
            """
        )
        + textwrap.indent(textwrap.dedent(state), "  ")
        + "update: |\n"
        + textwrap.indent(textwrap.dedent(update), "  ")
    )


SYNTHETIC = {
    # a sum over all parameters of a state feeds a group scale that later scales the update
    "ScaledMomentum": _spec(
        "ScaledMomentum",
        """\
        m: {init: 0, tex: m}
        scale: {scope: group, init: 1, tex: 'c'}
        """,
        """\
        m = beta * m + (1 - beta) * grad
        total = global_sum(m * m)
        scale = where(total > 0, 0.5 * scale + 0.5 / sqrt(total), scale)
        param = param - lr * scale * m
        """,
    ),
    # a global norm of a bias-corrected state (reads step, per tensor), no group state
    "NormalizedMomentum": _spec(
        "NormalizedMomentum",
        "m: {init: 0, tex: m}\n",
        """\
        m = beta * m + (1 - beta) * grad
        m_hat = m / (1 - beta**step)
        param = param - lr * m_hat / (global_norm(m_hat) + eps)
        """,
    ),
    # AdaGrad-Norm: one accumulator per group of every squared gradient, a count of the
    # group's steps kept as a group state, and a size of all parameters (param only: a sum
    # computed before the states are made)
    "AdaGradNorm": _spec(
        "AdaGradNorm",
        """\
        acc: {scope: group, init: eps, tex: 'b^2'}
        count: {scope: group, init: 0, tex: 'k'}
        """,
        """\
        acc = acc + global_sum(grad**2)
        count = count + 1
        size = global_sum(abs(param)) / (1 + global_sum(param**2))
        param = param - lr * (1 + size) * grad / sqrt(acc)
        """,
        "step: per_group",
    ),
}


def _synthetic_run(spec, path: str, dtype: torch.dtype, steps: int = 5):
    cls = optgen.compile(spec)
    rng = np.random.default_rng(1)
    start = [rng.standard_normal(s) for s in SHAPES]
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in start]
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": 0.05}]
    opt = cls(groups, **EAGER[path])
    interp = Reference(spec, [{"params": start[:3]}, {"params": start[3:], "lr": 0.05}])
    for t in range(steps):
        grads = [rng.standard_normal(s) for s in SHAPES]
        if t == 2:
            grads[1] = None  # a parameter without a gradient this step: not in the sums
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
        interp.step(grads)
    return params, interp, opt


@pytest.mark.parametrize("path", list(EAGER))
@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_specs_match_the_reference_float64(name, path):
    spec = loads(SYNTHETIC[name], f"{name}.yaml")
    assert optgen.check(spec).ok, [str(f) for f in optgen.check(spec).findings]
    params, interp, opt = _synthetic_run(spec, path, torch.float64)
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-11, atol=1e-13)
    for group, ref_group in zip(opt.param_groups, interp.param_groups):
        for s in spec.state.values():
            if s.scope == "group":
                assert group[s.key] == pytest.approx(ref_group[s.key], rel=1e-11)


@pytest.mark.parametrize("path", list(EAGER))
@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_specs_match_the_reference_float32(name, path):
    spec = loads(SYNTHETIC[name], f"{name}.yaml")
    params, interp, _ = _synthetic_run(spec, path, torch.float32)
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=2e-5, atol=2e-6)


def test_group_states_are_what_the_update_computed():
    """The synthetic group states hold the numbers their formulas give (not just agreement
    between two implementations): AdaGrad-Norm's count is the group's step count and its
    accumulator eps plus every squared gradient seen."""
    spec = loads(SYNTHETIC["AdaGradNorm"], "AdaGradNorm.yaml")
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = optgen.compile(spec)([{"params": [p]}, {"params": [q]}], foreach=False)
    for g in (1.0, 2.0):
        p.grad, q.grad = torch.full_like(p, g), torch.full_like(q, g)
        opt.step()
    for group in opt.param_groups:
        assert group["count"] == 2
        assert group["acc"] == pytest.approx(1e-3 + 7 * (1 + 4))


# --------------------------------------------------------------------------- errors
def test_a_global_sum_of_a_per_tensor_reduction_is_refused():
    text = _spec("Bad", "m: {init: 0, tex: m}\n", "m = beta * m + grad\nparam = param - lr * global_sum(m - sum(m))\n")
    with pytest.raises(CompileError, match="may not read a per-tensor reduction"):
        lower(loads(text, "bad.yaml"))


def test_a_group_state_assigned_a_per_element_value_is_refused():
    text = _spec("Bad", "c: {scope: group, init: 0, tex: c}\n", "c = c + grad\nparam = param - lr * c * grad\n")
    report = optgen.check(loads(text, "bad.yaml"))
    assert not report.ok
    assert any("per param group" in f.message and "per-element" in f.message for f in report.findings)


def test_a_group_state_reading_a_per_tensor_step_is_refused():
    text = _spec("Bad", "c: {scope: group, init: 0, tex: c}\n", "c = c + step\nparam = param - lr * c * grad\n")
    report = optgen.check(loads(text, "bad.yaml"))
    assert any("counts per tensor" in f.message for f in report.findings)


def test_a_group_state_init_reads_hyperparameters_only():
    text = _spec("Bad", "c: {scope: group, init: param, tex: c}\n", "c = c + 1\nparam = param - lr * c * grad\n")
    with pytest.raises(SpecError, match="init may read only hyperparameters"):
        lower(loads(text, "bad.yaml"))


def test_a_compiled_prodigy_step_gives_the_eager_numbers(prodigy, default_dtype):
    """Under torch.compile the step recompiles when d changes (a float in the group dict, as
    in the reference), but computes what the eager step does."""
    default_dtype(torch.float64)
    torch._dynamo.reset()
    sides = []
    for compiled in (False, True):
        torch.manual_seed(0)
        params = [torch.randn(s, requires_grad=True) for s in SHAPES]
        opt = prodigy(_groups(params, ({}, {})), d0=1e-2, foreach=False)
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        rng = np.random.default_rng(5)
        for _ in range(4):
            for p, g in zip(params, _grads(params, rng)):
                p.grad = g
            step()
        sides.append(params)
    torch._dynamo.reset()
    for a, b in zip(*sides):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", list(EAGER))
def test_a_group_state_reading_the_group_step_matches_the_reference(path):
    """With `step: per_group` a group state may read `step` (the group's count, one value
    for its tensors): a warmup that a group state accumulates, as schedule-free's
    weight_sum does."""
    text = _spec(
        "Warmup",
        "c: {scope: group, init: 0, tex: c}\nm: {init: 0, tex: m}\n",
        """\
        c = c + lr * minimum(1, step / 3)
        m = beta * m + (1 - beta) * grad
        param = param - c * m / (1 + step)
        """,
        "step: per_group",
    )
    spec = loads(text, "warmup.yaml")
    assert optgen.check(spec).ok
    params, interp, opt = _synthetic_run(spec, path, torch.float64)
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["c"] == pytest.approx(0.1 * (1 / 3 + 2 / 3 + 1 + 1 + 1))


@pytest.mark.parametrize("path", list(EAGER))
def test_the_group_step_under_a_key_of_its_own_matches_the_reference(path):
    """`step: {count: per_group, key: t}` keeps the group's count in group["t"] (a package's
    own key, as schedulefree's k): the same run as `per_group`, and no group["step"]."""
    text = _spec(
        "KeyedStep",
        "m: {init: 0, tex: m}\n",
        "m = beta * m + (1 - beta) * grad\nparam = param - lr * m / (1 - beta**step)\n",
        "step: {count: per_group, key: t}",
    )
    spec = loads(text, "keyed.yaml")
    assert optgen.check(spec).ok and spec.step_key == "t"
    params, interp, opt = _synthetic_run(spec, path, torch.float64)
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    groups = opt.state_dict()["param_groups"]
    assert all("step" not in g and int(g["t"]) == 5 for g in groups), groups


@pytest.mark.parametrize(
    ("step", "message", "column"),
    [
        ("{count: per_group, key: lr}", "step key 'lr' is already a key of the param group", 31),
        ("{count: per_group, key: foreach}", "step key 'foreach' is already a key", 31),
        ("{count: per_group, key: '2k'}", "step key '2k' is not an identifier", 31),
        ("{count: per_tensor, key: k}", "`step` as a mapping is {count: per_group, key: name}", 7),
        ("{count: per_group, keys: k}", "unknown key 'keys' in `step`; did you mean `key`?", 26),
    ],
)
def test_a_bad_step_key_is_a_located_error(step, message, column):
    text = _spec("Bad", "m: {init: 0, tex: m}\n", "param = param - lr * grad\n", f"step: {step}")
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        loads(text, "bad.yaml")
    assert f"bad.yaml:5:{column}" in str(info.value), str(info.value)


INPUT_NORM = _spec(
    "InputNorm",
    "c: {init: 0, tex: c}\n",
    """\
    c = beta * c + (1 - beta) * abs(hessian)
    param = param - lr * grad / (c + eps + abs(hessian)) / (1 + global_norm(hessian))
    """,
    "inputs: {hessian: {tex: 'h'}}",
)


@pytest.mark.parametrize("path", list(EAGER))
def test_a_global_norm_of_an_input_matches_the_reference(path):
    """A sum over all parameters of a step() input (not only grad) on both eager paths."""
    spec = loads(INPUT_NORM, "InputNorm.yaml")
    cls = optgen.compile(spec)
    rng = np.random.default_rng(4)
    start = [rng.standard_normal(s) for s in SHAPES]
    params = [torch.tensor(p, requires_grad=True) for p in start]
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], **EAGER[path])
    interp = Reference(spec, [{"params": start[:2]}, {"params": start[2:]}])
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SHAPES]
        hessians = [rng.standard_normal(s) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step(hessian={p: torch.tensor(h) for p, h in zip(params, hessians)})
        interp.step(grads, hessian=hessians)
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-11, atol=1e-13)


def test_the_prover_refuses_a_spec_with_group_states():
    """No claim about a spec with group states is ever "proven" (the prover does not model
    them): a located refusal."""
    with pytest.raises(SpecError, match="does not reason about group states") as info:
        optgen.prove(optgen.load("prodigy"), optgen.load("prodigy"))
    assert info.value.loc.line == optgen.load("prodigy").state["d"].loc.line
