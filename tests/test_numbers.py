"""Numbers a user expects (issue 9, section 4): SET-Adam's zero second moment, per-group
step counts, a tensor lr, and pickling."""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import SETAdam as SETAdamOracle
from reference_impls import max_rel_diff, muon_in_input_dtype

import optgen
from optgen.fused_support import fused_refusal
from optgen.reference import Reference

optimizers = pytest.importorskip("optgen.optimizers", reason="the torch backend is not built")
PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]
PATH_IDS = ["for-loop", "foreach", "fused"]


# --------------------------------------------------------------------------- SET-Adam at v = 0
def _setadam_run(dtype, grads_per_step, flags):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=dtype, requires_grad=True), torch.randn(4, dtype=dtype, requires_grad=True)]
    start = [p.detach().clone() for p in params]
    opt = optimizers.SETAdam(params, lr=0.1, weight_decay=0.0, **flags)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.to(dtype).clone()
        opt.step()
    return start, [p.detach() for p in params]


def _oracle(start, grads_per_step):
    oracle = SETAdamOracle([{"params": [p.double().numpy() for p in start]}], lr=0.1)
    for grads in grads_per_step:
        oracle.step([g.double().numpy() for g in grads])
    return oracle.params


@pytest.mark.parametrize("flags", PATHS, ids=PATH_IDS)
def test_setadam_stays_finite_on_zero_gradients_float64(flags):
    # a first step with all-zero gradients, then real ones: v is all zero at step 1 (0/0)
    gen = torch.Generator().manual_seed(1)
    steps = [[torch.zeros(5, 3), torch.zeros(4)]] + [
        [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)] for _ in range(3)
    ]
    start, ours = _setadam_run(torch.float64, steps, flags)
    expected = _oracle(start, steps)
    for a, b in zip(ours, expected):
        assert torch.isfinite(a).all()
        # the fused kernels compute in float32 whatever the parameter's dtype
        assert max_rel_diff(a.numpy(), b) <= (1e-5 if flags.get("fused") else 1e-12)


@pytest.mark.parametrize("flags", PATHS, ids=PATH_IDS)
def test_setadam_stays_finite_on_tiny_gradients_float32(flags):
    # |g| <= 1e-12: v ~ 1e-27 and sum(v^2) underflows to 0 in float32
    gen = torch.Generator().manual_seed(2)
    steps = [[1e-12 * torch.rand(5, 3, generator=gen), -1e-12 * torch.rand(4, generator=gen)] for _ in range(3)]
    start, ours = _setadam_run(torch.float32, steps, flags)
    expected = _oracle(start, steps)
    for a, b in zip(ours, expected):
        assert torch.isfinite(a).all()
        assert max_rel_diff(a.double().numpy(), b) <= 1e-6


def test_setadam_reference_interpreter_agrees_at_zero():
    spec = optgen.load("setadam")
    x0 = [np.linspace(-1, 1, 6).reshape(2, 3), np.array([0.5, -2.0])]
    steps = [[np.zeros((2, 3)), np.zeros(2)], [np.ones((2, 3)), np.array([0.0, 1.0])]]
    ref = Reference(spec, [{"params": [x.copy() for x in x0], "lr": 0.1}])
    oracle = SETAdamOracle([{"params": [x.copy() for x in x0]}], lr=0.1)
    for grads in steps:
        ref.step(grads)
        oracle.step(grads)
    for a, b in zip(ref.params, oracle.params):
        assert np.isfinite(a).all() and max_rel_diff(a, b) <= 1e-14


# --------------------------------------------------------------------------- a tensor lr
TORCH_PARITY = [n for n in optimizers.__all__ if getattr(optimizers, n).__doc__.count("``torch.optim.")]
OTHERS = [n for n in optimizers.__all__ if n not in TORCH_PARITY]


def _lr_run(cls, lr, **flags):
    """Three steps on two float64 tensors; the final params, or the exception raised."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(4, 3, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2)]
    try:
        opt = cls(params, lr=lr, **flags)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, dtype=torch.float64, generator=gen)
            opt.step()
    except Exception as error:  # noqa: BLE001 - compared with torch.optim's
        return error
    return [p.detach() for p in params]


def _same(a, b) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return all(torch.allclose(x, y, rtol=1e-12, atol=0) for x, y in zip(a, b))


def test_every_torch_parity_class_is_found():
    assert {"Adam", "AdamW", "Adagrad", "NAdam", "SGD"} <= set(TORCH_PARITY) and "Adan" in OTHERS


@pytest.mark.parametrize("name", TORCH_PARITY)
@pytest.mark.parametrize("foreach", [False, True, None])
def test_a_tensor_lr_behaves_as_in_torch_optim(name, foreach):
    lr = torch.tensor(0.01, dtype=torch.float64)
    in_dtype = {"bf16_newton_schulz": False} if name == "Muon" else {}  # as the patched torch class
    ours = _lr_run(getattr(optimizers, name), lr, foreach=foreach, **in_dtype)
    # torch.optim.Muon iterates in bfloat16: compared with its float64 form (tests/test_matrix.py)
    torch_cls = muon_in_input_dtype() if name == "Muon" else getattr(torch.optim, name)
    # torch.optim.Muon has one implementation and no `foreach` keyword
    flags = {"foreach": foreach} if "foreach" in inspect.signature(torch_cls.__init__).parameters else {}
    theirs = _lr_run(torch_cls, lr, **flags)
    assert _same(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("name", TORCH_PARITY)
def test_a_tensor_lr_of_two_elements_is_refused_as_in_torch_optim(name):
    lr = torch.tensor([0.01, 0.02], dtype=torch.float64)
    ours, theirs = _lr_run(getattr(optimizers, name), lr), _lr_run(getattr(torch.optim, name), lr)
    assert isinstance(ours, ValueError) and isinstance(theirs, ValueError) and "1-element" in str(ours)


def test_adam_refuses_a_tensor_lr_set_later_on_foreach_as_torch_does():
    for cls in (optimizers.Adam, torch.optim.Adam):
        p = torch.zeros(2, requires_grad=True)
        opt = cls([p], foreach=True)
        opt.param_groups[0]["lr"] = torch.tensor(0.1)
        p.grad = torch.ones(2)
        with pytest.raises(RuntimeError, match="lr as a Tensor is not supported"):
            opt.step()


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("flags", PATHS, ids=PATH_IDS)
def test_a_tensor_lr_is_read_as_its_value_elsewhere(name, flags):
    if flags.get("fused") and fused_refusal(optgen.load(name.lower())):
        pytest.skip(f"the fused kernels refuse {name} (tests/test_scalars.py checks the refusal)")
    cls = getattr(optimizers, name)
    ours = _lr_run(cls, torch.tensor(0.01, dtype=torch.float64), **flags)
    assert not isinstance(ours, Exception), ours
    assert _same(ours, _lr_run(cls, 0.01, **flags))


# --------------------------------------------------------------------------- pickling
_FRESH = """
import json, pickle, sys, torch
optimizer = {load}
assert type(optimizer).__name__ == sys.argv[2], type(optimizer)
params = optimizer.param_groups[0]["params"]
for p in params:
    p.grad = torch.full_like(p, 0.5)
optimizer.step()
print(json.dumps([p.tolist() for p in params]))
"""


def _in_fresh_process(load: str, path: Path, name: str) -> list:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH.format(load=load), str(path), name],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _stepped(cls):
    params = [torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()]
    optimizer = cls(params, lr=0.1)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    return optimizer


def _next_step(optimizer) -> list:
    optimizer = copy.deepcopy(optimizer)
    params = optimizer.param_groups[0]["params"]
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    optimizer.step()
    return [p.tolist() for p in params]


LOADERS = {
    "pickle": "pickle.load(open(sys.argv[1], 'rb'))",
    "torch.load": "torch.load(sys.argv[1], weights_only=False)",
}


def _save(how: str, optimizer, path: Path) -> None:
    if how == "pickle":
        path.write_bytes(pickle.dumps(optimizer))
    else:
        torch.save(optimizer, path)


@pytest.mark.parametrize("how", list(LOADERS))
@pytest.mark.parametrize("name", ["Adam", "Adan", "SETAdam"])
def test_a_catalog_optimizer_unpickles_in_a_fresh_process(tmp_path, how, name):
    optimizer = _stepped(getattr(optimizers, name))
    assert type(optimizer).__module__ == f"optgen.optimizers.{name.lower()}"
    _save(how, optimizer, tmp_path / "opt.pkl")
    assert _in_fresh_process(LOADERS[how], tmp_path / "opt.pkl", name) == _next_step(optimizer)


@pytest.mark.parametrize("how", list(LOADERS))
def test_a_compiled_optimizer_pickles_and_unpickles_in_a_fresh_process(tmp_path, how):
    text = (Path(optgen.catalog.specs_dir()) / "lion.yaml").read_text().replace("name: Lion", "name: MyLion")
    optimizer = _stepped(optgen.compile(optgen.load(text)))
    _save(how, optimizer, tmp_path / "opt.pkl")
    assert _in_fresh_process(LOADERS[how], tmp_path / "opt.pkl", "MyLion") == _next_step(optimizer)


# --------------------------------------------------------------------------- per-group step counts
def _po_class(name):
    import pytorch_optimizer

    return getattr(pytorch_optimizer, name)


# which parameters get no gradient (None) at each step: a whole group (params 2, 3) at steps
# 2 and 3, parameter 0 at step 4
_MISSING = {2: {2, 3}, 3: {2, 3}, 4: {0}}


def _group_run(make, steps: int, optimizer=None, params=None, start_step: int = 1):
    gen = torch.Generator().manual_seed(7)
    if params is None:
        params = [
            torch.randn(s, dtype=torch.float64, generator=gen).requires_grad_() for s in ((3, 4), (5,), (2, 2), (6,))
        ]
    if optimizer is None:
        optimizer = make([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}])
    for t in range(start_step, start_step + steps):
        noise = torch.Generator().manual_seed(100 + t)
        for i, p in enumerate(params):
            g = torch.randn(p.shape, dtype=torch.float64, generator=noise) + 0.5 * p.detach()
            p.grad = None if i in _MISSING.get(t, ()) else g
        optimizer.step()
    return optimizer, params


@pytest.mark.parametrize("name", ["Lamb", "Adan", "AdaBelief", "PAdam"])
@pytest.mark.parametrize("flags", PATHS, ids=PATH_IDS)
def test_steps_are_counted_per_group_as_pytorch_optimizer_does(name, flags):
    ours_opt, ours = _group_run(lambda groups: getattr(optimizers, name)(groups, lr=0.01, **flags), 6)
    theirs_opt, theirs = _group_run(lambda groups: _po_class(name)(groups, lr=0.01), 6)
    tol = 1e-5 if flags.get("fused") else 1e-10
    for a, b in zip(ours, theirs):
        assert max_rel_diff(a.detach().numpy(), b.detach().numpy()) <= tol
    assert [g["step"] for g in ours_opt.param_groups] == [g["step"] for g in theirs_opt.param_groups] == [6, 6]


def test_the_reference_counts_per_group_too():
    spec = optgen.load("lamb")
    assert spec.step_count == "per_group" and optgen.load("adam").step_count == "per_tensor"
    _, theirs = _group_run(lambda groups: _po_class("Lamb")(groups, lr=0.01), 6)
    gen = torch.Generator().manual_seed(7)
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in ((3, 4), (5,), (2, 2), (6,))]
    ref = Reference(
        spec,
        [
            {"params": [p.numpy() for p in start[:2]], "lr": 0.01},
            {"params": [p.numpy() for p in start[2:]], "lr": 0.02},
        ],
    )
    for t in range(1, 7):
        noise = torch.Generator().manual_seed(100 + t)
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=noise).numpy() + 0.5 * p for p in ref.params]
        ref.step([None if i in _MISSING.get(t, ()) else g for i, g in enumerate(grads)])
    for a, b in zip(ref.params, theirs):
        assert max_rel_diff(a, b.detach().numpy()) <= 1e-10


# (Adan's state dict differs anyway: pytorch_optimizer keeps previous_grad negated)
@pytest.mark.parametrize("name", ["Lamb", "AdaBelief", "PAdam"])
def test_a_pytorch_optimizer_state_dict_carries_the_group_step(name):
    # 4 steps in pytorch_optimizer, then its state dict continues in ours (and theirs) for 2
    theirs_opt, theirs = _group_run(lambda groups: _po_class(name)(groups, lr=0.01), 4)
    ours_params = [p.detach().clone().requires_grad_() for p in theirs]
    ours_opt = getattr(optimizers, name)(
        [{"params": ours_params[:2]}, {"params": ours_params[2:], "lr": 0.02}], lr=0.01
    )
    ours_opt.load_state_dict(copy.deepcopy(theirs_opt.state_dict()))  # loading shares the tensors
    _group_run(None, 2, theirs_opt, theirs, start_step=5)
    _group_run(None, 2, ours_opt, ours_params, start_step=5)
    for a, b in zip(ours_params, theirs):
        assert max_rel_diff(a.detach().numpy(), b.detach().numpy()) <= 1e-10
    assert ours_opt.state_dict()["param_groups"][0]["step"] == 6


def test_a_state_dict_counting_per_tensor_resumes_at_the_largest_count():
    # a checkpoint from before `step: per_group`: no group["step"], a step per tensor
    opt, params = _group_run(lambda groups: optimizers.Lamb(groups, lr=0.01), 3)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["step"]
    fresh = optimizers.Lamb([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.01)
    fresh.load_state_dict(saved)
    _group_run(None, 1, fresh, params, start_step=4)
    # group 1 had no gradients at steps 2 and 3: its tensors last counted 1
    assert [g["step"] for g in fresh.param_groups] == [4, 2]


def test_a_bad_step_count_is_a_located_error():
    text = (Path(optgen.catalog.specs_dir()) / "lion.yaml").read_text()
    bad = text.replace("step: per_group", "step: per_epoch")
    with pytest.raises(optgen.SpecError) as info:
        optgen.load(bad)
    assert info.value.loc is not None and info.value.loc.line == bad.splitlines().index("step: per_epoch") + 1
    assert "per_tensor, per_group" in str(info.value)
