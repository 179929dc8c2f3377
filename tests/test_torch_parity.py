"""Parity of the generated torch optimizers (optgen.optimizers, the committed catalog).

Every case of tests/test_parity.py (two param groups, non-default hyperparameters, the lr
changed before every step, every option that matters), in both the for-loop and the foreach
path, against the implementation it is a drop-in for and against optgen's float64 Reference
interpreter: within 1e-9 relative in float64, within 2e-4 in float32.

Checkpoints: a torch.optim Adam, AdamW, SGD and NAdam state_dict taken mid-run loads into the
optgen class (and the other way round) and the run continues as if uninterrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_optimizer.optimizer.adan
import pytorch_optimizer.optimizer.lamb
import torch

import optgen
from optgen.reference import Reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import SETAdam, max_rel_diff
from test_parity import (
    CASES,
    RTOL,
    STEPS,
    Case,
    NumpyDriver,
    TorchDriver,
    _float64_grad_norm_sq,
    _init_params,
    _state_pairs,
    lr_schedule,
)

FLOAT32_RTOL = 2e-4
CHECKPOINT_RTOL = 1e-12


def optgen_class(case: Case):
    return getattr(optgen.optimizers, optgen.load(case.spec).name)


def _run(driver, case, noise, base_lrs, steps=range(1, STEPS + 1)):
    for t in steps:
        for gi, lr0 in enumerate(base_lrs):
            driver.set_lr(gi, lr0 * lr_schedule(t))
        skip = 1 if case.skip_every and t % case.skip_every == 0 else None  # parameter 1 gets no gradient
        driver.step([None if i == skip else noise[t - 1][i] + 0.5 * p for i, p in enumerate(driver.params())])


def _problem(case: Case):
    rng = np.random.default_rng(sum(map(ord, case.id)) + 1)
    init = _init_params(rng, case)
    flat = [p for g in init for p in g]
    noise = [[rng.standard_normal(p.shape) for p in flat] for _ in range(STEPS)]
    return init, noise, [hp["lr"] for hp in case.groups]


class ReferenceDriver:
    def __init__(self, case: Case, init):
        groups = [{"params": [p.copy() for p in g], **case.shared, **hp} for g, hp in zip(init, case.groups)]
        self.ref = Reference(optgen.load(case.spec), groups)

    def set_lr(self, index, lr):
        self.ref.param_groups[index]["lr"] = lr

    def params(self):
        return [np.asarray(p).copy() for p in self.ref.params]

    def step(self, grads):
        self.ref.step(grads)

    def state(self, i):
        return self.ref.state[i]


def _compare(case, ours, theirs, n, rtol, what, states=True):
    failures = []
    for i, (a, b) in enumerate(zip(ours.params(), theirs.params())):
        d = max_rel_diff(a, b)
        if not d <= rtol:
            failures.append(f"param {i} {b.shape}: max rel diff {d:.3g} vs {what}")
    compared = set()
    if states:
        for i in range(n):
            for key, a, b in _state_pairs(case, ours.state(i), theirs.state(i)):
                compared.add(key)
                d = max_rel_diff(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
                if not d <= rtol:
                    failures.append(f"state {key!r} of param {i}: max rel diff {d:.3g} vs {what}")
        assert compared - {"step"}, f"no state was compared with {what}"
    return failures


@pytest.fixture
def default_dtype():
    old = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(old)


def _patch_global_norm(case, monkeypatch):
    if case.float64_global_norm:
        monkeypatch.setattr(pytorch_optimizer.optimizer.adan, "get_global_gradient_norm", _float64_grad_norm_sq)
        monkeypatch.setattr(pytorch_optimizer.optimizer.lamb, "get_global_gradient_norm", _float64_grad_norm_sq)


def _ours(case: Case, foreach: bool) -> Case:
    return dataclasses.replace(case, make=functools.partial(optgen_class(case), foreach=foreach))


PATHS = [pytest.param(False, id="for-loop"), pytest.param(True, id="foreach")]


class _Finished:
    """The parameters and states at the end of a run (shared by the for-loop and foreach tests)."""

    def __init__(self, driver, n):
        self._params = driver.params()
        self._states = [dict(driver.state(i)) for i in range(n)]

    def params(self):
        return self._params

    def state(self, i):
        return self._states[i]


_FINISHED: dict = {}


def _finished(kind: str, case: Case, make_driver, init, noise, base_lrs, n) -> _Finished:
    if (kind, case.id) not in _FINISHED:
        driver = make_driver(case, init)
        _run(driver, case, noise, base_lrs)
        _FINISHED[kind, case.id] = _Finished(driver, n)
    return _FINISHED[kind, case.id]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_float64(case: Case, foreach: bool, monkeypatch, default_dtype):
    default_dtype(torch.float64)  # torch.optim keeps scalar state (step, mu_product) in it
    _patch_global_norm(case, monkeypatch)
    init, noise, base_lrs = _problem(case)
    n = sum(len(g) for g in init)
    ours = TorchDriver(_ours(case, foreach), init)
    _run(ours, case, noise, base_lrs)
    reference = _finished("reference", case, ReferenceDriver, init, noise, base_lrs, n)
    theirs = _finished("theirs", case, NumpyDriver if case.make is SETAdam else TorchDriver, init, noise, base_lrs, n)
    failures = _compare(case, ours, theirs, n, RTOL, case.make.__qualname__)
    same_keys = dataclasses.replace(case, state_map={})  # the interpreter keeps optgen's state
    failures += _compare(same_keys, ours, reference, n, RTOL, "the Reference interpreter")
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(ours.params(), [p for g in init for p in g])]
    assert min(moved) > 1e-6, f"a parameter barely moved: {moved}"
    assert not failures, f"{case.id} ({'foreach' if foreach else 'for-loop'}):\n" + "\n".join(failures)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.make is not SETAdam])
def test_float32(case: Case, foreach: bool, monkeypatch, default_dtype):
    """Both in float32, from the same float32 starting point and noise."""
    default_dtype(torch.float32)
    init, noise, base_lrs = _problem(case)
    init = [[p.astype(np.float32) for p in g] for g in init]
    noise = [[g.astype(np.float32) for g in step] for step in noise]
    ours = _Float32Driver(_ours(case, foreach), init)
    theirs = _Float32Driver(case, init)
    for driver in (ours, theirs):
        _run(driver, case, noise, base_lrs)
    failures = _compare(case, ours, theirs, 0, FLOAT32_RTOL, case.make.__qualname__, states=False)
    assert not failures, f"{case.id} float32 ({'foreach' if foreach else 'for-loop'}):\n" + "\n".join(failures)


class _Float32Driver(TorchDriver):
    def __init__(self, case, init):
        self.tensors = [[torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in g] for g in init]
        groups = [{"params": ts, **hp} for ts, hp in zip(self.tensors, case.groups)]
        self.opt = case.make(groups, **case.shared)
        self.flat = [t for g in self.tensors for t in g]

    def step(self, grads):
        for t, g in zip(self.flat, grads):
            t.grad = None if g is None else torch.tensor(g, dtype=torch.float32)
        self.opt.step()


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_CASES = [
    c for c in CASES if c.id in ("adam", "adam-amsgrad", "adamw", "sgd-momentum-dampening", "sgd-nesterov", "nadam")
]


@pytest.mark.parametrize("direction", ["torch-to-optgen", "optgen-to-torch"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CHECKPOINT_CASES])
def test_checkpoint_round_trip(case: Case, direction: str, default_dtype):
    """Half a run in one implementation, its state_dict loaded into the other, the second
    half there: the same parameters as an uninterrupted torch.optim run."""
    default_dtype(torch.float64)
    init, noise, base_lrs = _problem(case)
    half = STEPS // 2
    uninterrupted = TorchDriver(case, init)
    _run(uninterrupted, case, noise, base_lrs)

    first, second = (case, _ours(case, False)) if direction == "torch-to-optgen" else (_ours(case, True), case)
    before = TorchDriver(first, init)
    _run(before, case, noise, base_lrs, steps=range(1, half + 1))
    after = TorchDriver(second, [[np.zeros_like(p) for p in g] for g in init])
    with torch.no_grad():
        for dst, src in zip(after.flat, before.flat):
            dst.copy_(src)
    after.opt.load_state_dict(before.opt.state_dict())
    _run(after, case, noise, base_lrs, steps=range(half + 1, STEPS + 1))
    for i, (a, b) in enumerate(zip(after.params(), uninterrupted.params())):
        d = max_rel_diff(a, b)
        assert d <= CHECKPOINT_RTOL, f"param {i}: max rel diff {d:.3g} after a {direction} checkpoint"
