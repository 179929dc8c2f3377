"""The torch optimizer classes with fused=True on CPU tensors (the C++ runtime): every catalog
class against its own foreach path, state_dict round trips, optgen.compile'd specs, param
groups, and the class-level errors."""

from __future__ import annotations

import copy
import inspect
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpp_harness import _cpu_kernels, needs_compiler  # noqa: F401

import optgen
from optgen import catalog
from optgen.backends.cpp import runtime
from optgen.backends.fused_matrix import is_matrix_spec
from optgen.fused_support import fused_refusal

optimizers = pytest.importorskip("optgen.optimizers", reason="the torch backend is not built")
pytestmark = needs_compiler

KEYWORDS = {"weight_decay": 0.05, "momentum": 0.9, "max_grad_norm": 0.5}
SHAPES = [(4, 3), (7,), (1,), (300, 70)]

# the optimizers the fused kernels run whole (matrix specs run in stages: tests/test_fused_matrix.py)
FUSED = [
    n
    for n in optimizers.__all__
    if not fused_refusal(optgen.load(n.lower())) and not is_matrix_spec(optgen.load(n.lower()))
]


def _construct(cls, params, **flags):
    accepted = inspect.signature(cls.__init__).parameters
    return cls(params, **{k: v for k, v in KEYWORDS.items() if k in accepted}, **flags)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale else diff


def _run(cls, flag, start, grads, dtype=torch.float32, **kwargs):
    params = [p.clone().to(dtype).requires_grad_() for p in start]
    opt = _construct(cls, params, **{flag: True}, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 + 0.3 * (t % 3))
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone().to(dtype)
        opt.step()
        sched.step()
    return params, opt


# the classes the fused path runs (the others refuse fused=True: tests/test_matrix.py, test_axes.py)
@pytest.mark.parametrize("name", FUSED)
def test_fused_cpu_matches_foreach(name, monkeypatch):
    """10 steps, lr changing: the C++ kernels (really: the runtime is called) against foreach."""
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(10)]
    calls = []
    real = runtime.fused_step
    monkeypatch.setattr(runtime, "fused_step", lambda *a, **k: calls.append(a) or real(*a, **k))
    pa, oa = _run(cls, "foreach", start, grads)
    pb, ob = _run(cls, "fused", start, grads)
    assert len(calls) == 10
    for a, b in zip(pa, pb):
        assert _rel(b.detach(), a.detach()) <= 1e-5, name
        for key, value in oa.state[a].items():
            if torch.is_tensor(value) and value.is_floating_point():
                assert _rel(ob.state[b][key].float(), value.float()) <= 1e-5, (name, key)


@pytest.mark.parametrize("name", ["Adam", "Lamb", "Adan"])
def test_fused_cpu_float64_matches_foreach_to_rounding(name):
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(5)]
    pa, _ = _run(cls, "foreach", start, grads, dtype=torch.float64)
    pb, _ = _run(cls, "fused", start, grads, dtype=torch.float64)
    for a, b in zip(pa, pb):
        assert _rel(b.detach(), a.detach()) <= 1e-13


def test_state_dict_round_trip():
    """A fused optimizer's state_dict restores into a fresh one (and into a foreach one):
    the next steps are identical."""
    gen = torch.Generator().manual_seed(2)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(6)]
    params, opt = _run(optimizers.AdamW, "fused", start, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    snapshot = [p.detach().clone() for p in params]
    for flag in ("fused", "foreach"):
        ps = [p.clone().requires_grad_() for p in snapshot]
        fresh = optimizers.AdamW(ps, **{flag: True}, weight_decay=0.05)
        fresh.load_state_dict(copy.deepcopy(saved))  # load_state_dict may alias the saved tensors
        for p, g in zip(ps, grads[3]):
            p.grad = g.clone()
        fresh.step()
        if flag == "fused":
            first = [p.detach().clone() for p in ps]
        else:
            for a, b in zip(first, ps):
                assert _rel(b.detach(), a) <= 1e-6
    for p, g in zip(params, grads[3]):
        p.grad = g.clone()
    opt.step()
    for a, b in zip(params, first):
        assert torch.equal(a.detach(), b)


def test_bf16_params_with_float32_state_dtype():
    """bf16 params, fp32 state (state_dtype): fp32 math, the same as fp32 params rounded."""
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen).bfloat16() for s in SHAPES]
    grads = [[torch.randn(s, generator=gen).bfloat16() for s in SHAPES]]
    params = [p.clone().requires_grad_() for p in start]
    opt = optimizers.Adam(params, fused=True, state_dtype=torch.float32, lr=1e-2)
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()
    ref = [p.float().clone().requires_grad_() for p in start]
    ropt = optimizers.Adam(ref, foreach=True, lr=1e-2)
    for p, g in zip(ref, grads[0]):
        p.grad = g.float()
    ropt.step()
    for p, r in zip(params, ref):
        assert p.dtype == torch.bfloat16
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(p.detach(), r.detach().bfloat16())


def test_param_groups_and_global_norm():
    """Adan with max_grad_norm over two param groups, fused vs foreach."""
    gen = torch.Generator().manual_seed(4)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(4)]
    sides = []
    for flag in ("foreach", "fused"):
        ps = [p.clone().requires_grad_() for p in start]
        opt = optimizers.Adan([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3}], max_grad_norm=0.5, **{flag: True})
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        sides.append(ps)
    for a, b in zip(*sides):
        assert _rel(b.detach(), a.detach()) <= 1e-5


def test_many_small_tensors_and_empty_and_non_contiguous():
    gen = torch.Generator().manual_seed(5)
    start = [torch.randn(1 + i % 7, generator=gen) for i in range(500)] + [torch.zeros(0)]
    start.append(torch.randn(6, 4, generator=gen).t())  # non-contiguous
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(3)]
    sides = []
    for flag in ("foreach", "fused"):
        ps = [p.clone() if flag == "foreach" else p.t().clone().t() if p.dim() == 2 else p.clone() for p in start]
        ps = [p.requires_grad_() for p in ps]
        assert not ps[-1].is_contiguous() or flag == "foreach"
        opt = optimizers.Lamb(ps, **{flag: True})
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        sides.append(ps)
    for a, b in zip(*sides):
        assert _rel(b.detach(), a.detach()) <= 1e-5


def test_compiled_spec_runs_fused_on_cpu():
    """optgen.compile'd specs: fused=True on CPU tensors runs the C++ kernels."""
    text = (catalog.specs_dir() / "lion.yaml").read_text().replace("name: Lion", "name: MyLion")
    cls = optgen.compile(optgen.load(text))
    gen = torch.Generator().manual_seed(6)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(3)]
    pa, _ = _run(cls, "foreach", start, grads)
    pb, _ = _run(cls, "fused", start, grads)
    for a, b in zip(pa, pb):
        assert _rel(b.detach(), a.detach()) <= 1e-6
    assert any(key.startswith("mylion@") for key in runtime._SPECS)


def test_select_routes_by_device(monkeypatch):
    from optgen.backends.triton import runtime as triton_runtime

    assert runtime.select(torch.device("cpu")) == (runtime.fused_step, runtime.register)
    assert runtime.select(torch.device("cuda")) == (triton_runtime.fused_step, triton_runtime.register)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.select(torch.device("cpu"))[0] is triton_runtime.fused_step


@pytest.mark.parametrize("name", ["AdaBound", "Lamb", "Adamax"])
def test_nan_propagates_as_in_foreach(name):
    """maximum/minimum (AdaBound's clamp, Lamb's weight-norm cap, Adamax's max) propagate NaN
    as torch.maximum does: a NaN gradient element gives the same NaN pattern on both paths."""
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(7)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES]]
    grads[0][1][3] = float("nan")
    pa, _ = _run(cls, "foreach", start, grads)
    pb, _ = _run(cls, "fused", start, grads)
    for a, b in zip(pa, pb):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a[~a.isnan()], b[~b.isnan()], rtol=1e-5, atol=1e-7)
