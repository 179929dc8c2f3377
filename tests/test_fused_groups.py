"""The fused path (C++ kernels, Triton under TRITON_INTERPRET=1) with `scope: group` states and
staged sums over all parameters that read states (optgen/backends/fused_groups.py).

Prodigy against pytorch_optimizer.Prodigy (its options, a first step with zero gradients, two
param groups, a state_dict round trip) and the float64 Reference interpreter; schedule-free
SGD and AdamW against the schedulefree package with train()/eval() switches and a state_dict
round trip; a synthetic spec whose group state follows a staged norm of a state and the
step. C++ in float64 (double arithmetic: tight) and float32; Triton computes in float32."""

from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch

import optgen
from optgen.fused_support import fused_refusal
from optgen.parse import loads
from optgen.reference import Reference

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
schedulefree = pytest.importorskip("schedulefree")

PATHS = ["fused C++", "fused Triton"]
SHAPES = [(3, 4), (5,), (2, 3, 2), (6,)]
SMALL = [(3, 2), (5,), (4,)]  # Triton's interpreter is slow: fewer, smaller tensors


@pytest.fixture
def runtime(monkeypatch, request):
    """fused=True on CPU tensors: Triton's interpreter (the suite sets TRITON_INTERPRET=1
    without a GPU) for "fused Triton", the C++ kernels for "fused C++"."""
    from optgen.backends.triton import runtime as triton_runtime

    path = request.node.callspec.params["path"]
    if path == "fused Triton" and not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")
    if path == "fused C++":
        monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    return path


@pytest.fixture
def default_dtype():
    """pytorch_optimizer.Prodigy sums d_numerator and d_denom in torch's default dtype: the
    float64 runs set it to float64."""
    old = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(old)


def _tolerance(path: str, dtype: torch.dtype) -> float:
    if path == "fused Triton" or dtype == torch.float32:
        return 1e-4  # float32 arithmetic, through a step size that sums over every parameter
    return 1e-10


@pytest.mark.parametrize("name", ["prodigy", "sgdschedulefree", "adamwschedulefree"])
def test_the_catalog_specs_have_a_fused_path(name):
    spec = optgen.load(name)
    assert fused_refusal(spec) == ""
    report = optgen.check(spec)
    assert report.ok
    assert not [f for f in report.findings if "fused" in f.message]


# --------------------------------------------------------------------------- Prodigy
# (constructor keywords, the second group's own keywords): what the reference reads per group
# (weight_decay, eps) may differ; the rest it reads from param_groups[0] (see the spec's notes)
PRODIGY = {
    "defaults": ({}, {}),
    "decay": ({"lr": 0.5, "d0": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.0, "eps": 1e-6}),
    "bias_correction": ({"d0": 1e-2, "bias_correction": True, "growth_rate": 1.5, "d_coef": 0.8}, {}),
    "safeguard_warmup": ({"d0": 1e-2, "safeguard_warmup": True, "betas": (0.8, 0.99)}, {}),
    "fixed_decay": ({"d0": 0.05, "fixed_decay": True, "weight_decay": 0.01, "beta3": 0.9}, {}),
}


def _prodigy_groups(params, own):
    return [{"params": params[:2]}, {"params": params[2:], **own}]


def _prodigy_grads(params, rng, t):
    """Zero at the first step (d_denom is 0: the reference leaves param and d alone, while
    the moments and s move), then a pull towards 1.5 plus noise, so that d grows."""
    if t == 0:
        return [torch.zeros_like(p) for p in params]
    noise = [torch.as_tensor(rng.standard_normal(p.shape), dtype=p.dtype) for p in params]
    return [2 * (p.detach() - 1.5) + 0.1 * n for p, n in zip(params, noise)]


def _prodigy_pair(setting: str, dtype, shapes, maximize=False):
    kw, own = PRODIGY[setting]
    torch.manual_seed(0)
    start = [torch.randn(s, dtype=dtype) for s in shapes]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    opt = optgen.optimizers.Prodigy(_prodigy_groups(ours, own), fused=True, maximize=maximize, **kw)
    ref = pytorch_optimizer.Prodigy(_prodigy_groups(theirs, own), foreach=False, maximize=maximize, **kw)
    return ours, theirs, opt, ref


def _prodigy_steps(ours, theirs, opts, steps, rng, start=0):
    for t in range(start, start + steps):
        grads = _prodigy_grads(theirs, rng, t)
        for params in (ours, theirs):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for opt in opts:
            opt.step()


def _assert_prodigy_close(ours, theirs, opt, ref, tol):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol / 100)
    for ga, gb in zip(opt.param_groups, ref.param_groups):
        assert ga["d"] == pytest.approx(gb["d"], rel=tol)
        assert ga["d_max"] == pytest.approx(gb["d_max"], rel=tol)
        assert ga["d_numerator"] == pytest.approx(float(gb["d_numerator"]), rel=tol * 10, abs=1e-15)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("setting", list(PRODIGY))
def test_prodigy_fused_cpp_float64_matches_pytorch_optimizer(setting, maximize, default_dtype, monkeypatch):
    from optgen.backends.triton import runtime as triton_runtime

    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    default_dtype(torch.float64)
    ours, theirs, opt, ref = _prodigy_pair(setting, torch.float64, SHAPES, maximize)
    rng = np.random.default_rng(len(setting))
    _prodigy_steps(ours, theirs, [opt, ref], 1, rng)
    assert opt.param_groups[0]["d"] == opt.param_groups[0]["d0"]  # the zero step left d alone
    assert any(float(opt.state[p]["exp_avg_sq"].abs().sum()) == 0 for p in ours)
    _prodigy_steps(ours, theirs, [opt, ref], 9, rng, start=1)
    _assert_prodigy_close(ours, theirs, opt, ref, 1e-10)
    assert opt.param_groups[0]["d"] > 1.5 * opt.param_groups[0]["d0"]  # d moved: the sums matter


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("setting", ["decay", "bias_correction", "safeguard_warmup"])
def test_prodigy_fused_float32_matches_pytorch_optimizer(setting, path, runtime):
    shapes = SHAPES if path == "fused C++" else SMALL
    ours, theirs, opt, ref = _prodigy_pair(setting, torch.float32, shapes)
    _prodigy_steps(ours, theirs, [opt, ref], 6, np.random.default_rng(2))
    _assert_prodigy_close(ours, theirs, opt, ref, 1e-4)


def test_prodigy_fused_triton_float64(default_dtype, runtime_triton):
    """float64 params through Triton (float32 arithmetic), compared in float64."""
    default_dtype(torch.float64)
    ours, theirs, opt, ref = _prodigy_pair("bias_correction", torch.float64, SMALL)
    _prodigy_steps(ours, theirs, [opt, ref], 5, np.random.default_rng(3))
    _assert_prodigy_close(ours, theirs, opt, ref, 1e-4)


@pytest.fixture
def runtime_triton():
    from optgen.backends.triton import runtime as triton_runtime

    if not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")


@pytest.mark.parametrize("setting", ["decay", "safeguard_warmup"])
def test_prodigy_fused_cpp_matches_the_reference_interpreter(setting, monkeypatch):
    from optgen.backends.triton import runtime as triton_runtime

    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    kw, own = PRODIGY[setting]
    torch.manual_seed(0)
    start = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    ours = [p.clone().requires_grad_(True) for p in start]
    opt = optgen.optimizers.Prodigy(_prodigy_groups(ours, own), fused=True, **kw)
    groups = [{"params": [p.numpy() for p in start[:2]], **kw}, {"params": [p.numpy() for p in start[2:]], **kw, **own}]
    interp = Reference(optgen.load("prodigy"), groups)
    rng = np.random.default_rng(5)
    for t in range(8):
        grads = _prodigy_grads(ours, rng, t)
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step()
        interp.step([g.numpy() for g in grads])
    for got, want in zip(ours, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    for group, want in zip(opt.param_groups, interp.param_groups):
        assert group["d"] == pytest.approx(want["d"], rel=1e-10)
        assert group["d_numerator"] == pytest.approx(want["d_numerator"], rel=1e-9)


def test_prodigy_fused_state_dict_round_trip_and_foreach_agree(default_dtype, monkeypatch):
    """A fused optimizer's checkpoint (group states in its param groups) resumes on the
    foreach path and on a fresh fused optimizer with the same numbers."""
    from optgen.backends.triton import runtime as triton_runtime

    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    default_dtype(torch.float64)
    kw, own = PRODIGY["decay"]
    ours, theirs, opt, ref = _prodigy_pair("decay", torch.float64, SHAPES)
    rng = np.random.default_rng(7)
    _prodigy_steps(ours, theirs, [opt, ref], 4, rng)
    saved = copy.deepcopy(opt.state_dict())
    assert {"d", "d_max", "d_numerator"} <= set(saved["param_groups"][1])
    fused = [p.detach().clone().requires_grad_(True) for p in ours]
    eager = [p.detach().clone().requires_grad_(True) for p in ours]
    resumed = optgen.optimizers.Prodigy(_prodigy_groups(fused, own), fused=True, **kw)
    resumed.load_state_dict(copy.deepcopy(saved))  # a copy each: load_state_dict keeps the tensors
    saved["param_groups"] = [{**g, "fused": None, "foreach": True} for g in saved["param_groups"]]
    foreach = optgen.optimizers.Prodigy(_prodigy_groups(eager, own), foreach=True, **kw)
    foreach.load_state_dict(saved)
    for t in range(4, 8):
        grads = _prodigy_grads(ours, rng, t)
        for params in (ours, theirs, fused, eager):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for o in (opt, ref, resumed, foreach):
            o.step()
    for a, b, c in zip(ours, fused, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
    _assert_prodigy_close(ours, theirs, opt, ref, 1e-10)
    assert resumed.param_groups[1]["d"] == opt.param_groups[1]["d"]


# --------------------------------------------------------------------------- schedule-free
SF = {
    "sgdschedulefree": (schedulefree.SGDScheduleFree, [{"lr": 0.5, "momentum": 0.8}, {"lr": 0.2, "weight_decay": 0.1}]),
    "adamwschedulefree": (
        schedulefree.AdamWScheduleFree,
        [{"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 0.05}, {"lr": 0.02, "eps": 1e-6}],
    ),
}


class _SchedulePair:
    """Ours (fused=True) and the schedulefree package on copies of the same parameters: a
    warmup on one group, a gradient skipped every third step, lr decayed every step."""

    def __init__(self, name: str, dtype: torch.dtype, shapes, weighting: dict):
        make, hypers = SF[name]
        self.gen = torch.Generator().manual_seed(len(name))
        start = [torch.randn(s, dtype=torch.float64, generator=self.gen) for s in shapes]
        self.ours = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
        self.theirs = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
        self.cls = optgen.compile(optgen.load(name))
        self.hypers, self.shapes, self.dtype, self.t = hypers, shapes, dtype, 0
        self.opt = self.cls(self.groups(self.ours), fused=True, **weighting)
        self.ref = make(self.groups(self.theirs), foreach=False, **weighting)

    def groups(self, params):
        return [{"params": params[:2], **self.hypers[0], "warmup_steps": 2}, {"params": params[2:], **self.hypers[1]}]

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.t += 1
            grads = [torch.randn(s, dtype=torch.float64, generator=self.gen) for s in self.shapes]
            if self.t % 3 == 0:
                grads[1] = None
            for opt, params in ((self.opt, self.ours), (self.ref, self.theirs)):
                for group in opt.param_groups:
                    group["lr"] *= 0.9
                for p, g in zip(params, grads):
                    p.grad = None if g is None else (g + 0.5 * p.detach().double()).to(self.dtype)
                opt.step()

    def both(self, method: str) -> None:
        getattr(self.opt, method)()
        getattr(self.ref, method)()

    def assert_close(self, tol: float) -> None:
        for a, b in zip(self.ours, self.theirs):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
            for key in self.ref.state[b]:
                torch.testing.assert_close(self.opt.state[a][key], self.ref.state[b][key], rtol=tol, atol=tol)
        for ours, theirs in zip(self.opt.param_groups, self.ref.param_groups):
            assert ours["lr_max"] == pytest.approx(theirs["lr_max"], rel=1e-12)
            assert ours["weight_sum"] == pytest.approx(theirs["weight_sum"], rel=1e-12)
            assert ours["k"] == theirs["k"]  # the package's key for the group's count


SF_CASES = [
    ("sgdschedulefree", "fused C++", torch.float64, {}),
    ("sgdschedulefree", "fused C++", torch.float32, {"r": 0.5, "weight_lr_power": 1.5}),
    ("adamwschedulefree", "fused C++", torch.float64, {"r": 0.5, "weight_lr_power": 1.5}),
    ("adamwschedulefree", "fused C++", torch.float32, {}),
    ("sgdschedulefree", "fused Triton", torch.float32, {}),
    ("adamwschedulefree", "fused Triton", torch.float64, {"r": 0.5, "weight_lr_power": 1.5}),
]


@pytest.mark.parametrize(("name", "path", "dtype", "weighting"), SF_CASES, ids=lambda x: str(x))
def test_schedulefree_fused_parity_with_mode_switches_and_a_state_dict_round_trip(
    name, path, dtype, weighting, runtime
):
    """train(), steps, eval() twice, train(), steps, eval(); a state_dict saved in eval mode
    loads into a fresh fused optimizer, which resumes after train()."""
    shapes = SHAPES if path == "fused C++" else SMALL
    pair = _SchedulePair(name, dtype, shapes, weighting)
    tol = _tolerance(path, dtype) if dtype == torch.float64 and path == "fused C++" else 2e-5
    pair.both("train")
    pair.steps(4)
    pair.assert_close(tol)
    pair.both("eval")
    pair.both("eval")
    pair.assert_close(tol)
    pair.both("train")
    pair.steps(3)
    pair.both("eval")
    pair.assert_close(tol)
    saved = copy.deepcopy(pair.opt.state_dict())
    pair.opt = pair.cls(pair.groups(pair.ours), fused=True, **weighting)
    pair.opt.load_state_dict(saved)
    pair.both("train")
    pair.steps(3)
    pair.assert_close(tol)
    assert pair.opt.param_groups[0]["weight_sum"] > 0


# --------------------------------------------------------------------------- synthetic
# Group states fed by staged sums: a count of the elements whose new momentum passes a
# threshold that reads the group state `scale` before its update, and `scale`, an EMA of the
# global norm of the bias-corrected momentum (the sum reads a state's new value and `step`),
# which the update then reads after assigning it; a third sum of momentum times param.
SYNTHETIC = textwrap.dedent(
    """\
    name: NormTracked
    summary: Momentum whose step is divided by a per-group running norm of the momentum.
    step: per_group
    hyperparameters:
      lr: {default: 0.1, range: '(0, inf)', tex: '\\gamma'}
      beta: {default: 0.9, range: '[0, 1)', tex: '\\beta'}
      eps: {default: 1.0e-3, range: '(0, inf)', tex: '\\epsilon'}
    options:
      squared: false
    state:
      m: {init: 0, tex: m}
      scale: {scope: group, init: 1, tex: 'c'}
      seen: {scope: group, init: 0, tex: 'k'}
    update: |
      m = beta * m + (1 - beta) * grad
      m_hat = m / (1 - beta**step)
      seen = seen + global_sum(where(abs(m) > eps * scale, 1, 0))
      if squared:
          scale = beta * scale + (1 - beta) * global_sum(m_hat**2)
      else:
          scale = beta * scale + (1 - beta) * global_norm(m_hat)
      param = param - lr * m_hat / (scale + eps) / (1 + global_sum(m * param) ** 2)
    """
)


def _synthetic_run(path: str, dtype: torch.dtype, keywords: dict):
    spec = loads(SYNTHETIC, "NormTracked.yaml")
    assert fused_refusal(spec) == ""
    cls = optgen.compile(spec)
    rng = np.random.default_rng(1)
    shapes = SMALL if path == "fused Triton" else SHAPES
    start = [rng.standard_normal(s) for s in shapes]
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in start]
    flags = {"foreach": True} if path == "foreach" else {"fused": True}
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], **flags, **keywords)
    groups = [{"params": start[:2]}, {"params": start[2:], "lr": 0.05}]
    interp = Reference(spec, [{**g, **keywords} for g in groups])
    return params, opt, interp, rng, shapes


@pytest.mark.parametrize("squared", [False, True], ids=["norm", "squared"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", PATHS)
def test_a_synthetic_group_state_spec_matches_the_reference(path, dtype, squared, runtime):
    """Also: the sums are over both groups whatever the option (a sum needed in every
    setting once read `is None and squared or not squared and params`: per group)."""
    params, opt, interp, rng, shapes = _synthetic_run(path, dtype, {"squared": squared})
    for t in range(5):
        grads = [rng.standard_normal(s) for s in shapes]
        if t == 2:
            grads[1] = None  # a parameter without a gradient this step: not in the sums
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
        interp.step(grads)
    tol = 1e-11 if (path, dtype) == ("fused C++", torch.float64) else 1e-4
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=tol, atol=tol / 10)
    for group, want in zip(opt.param_groups, interp.param_groups):
        assert group["scale"] == pytest.approx(want["scale"], rel=tol)
        assert group["seen"] == want["seen"]
    assert opt.param_groups[0]["seen"] > 0 and opt.param_groups[0]["scale"] != 1


@pytest.mark.parametrize("path", ["foreach", "fused C++"])
def test_a_sum_that_only_a_group_state_reads_is_over_every_group_at_zero_momentum(path, monkeypatch):
    """With beta=0 the sum behind `seen` still feeds a group state: the optimizer computes it
    over every group (it once took beta=0 for a switch that turns the sum off, and each
    group then summed its own tensors)."""
    from optgen.backends.triton import runtime as triton_runtime

    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    params, opt, interp, rng, shapes = _synthetic_run(path, torch.float64, {"beta": 0.0})
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
        interp.step(grads)
    seen = [group["seen"] for group in opt.param_groups]
    assert seen == [group["seen"] for group in interp.param_groups]
    # (almost) every element of both groups at each step: more than one group's elements hold
    assert seen[0] == seen[1] > 3 * max(sum(int(np.prod(s)) for s in part) for part in (shapes[:2], shapes[2:]))
    for got, want in zip(params, interp.params):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-11, atol=1e-12)
