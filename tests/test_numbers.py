"""Numbers a user expects (issue 9, section 4): SET-Adam's zero second moment, per-group
step counts, a tensor lr, and pickling."""

from __future__ import annotations

import sys
from pathlib import Path

import json
import pickle

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import SETAdam as SETAdamOracle
from reference_impls import max_rel_diff

import optgen
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
    steps = [[torch.zeros(5, 3), torch.zeros(4)]] + [[torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)] for _ in range(3)]
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
    ours = _lr_run(getattr(optimizers, name), lr, foreach=foreach)
    theirs = _lr_run(getattr(torch.optim, name), lr, foreach=foreach)
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
    import copy

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
