"""Specs that combine the structured constructs in ways no catalog spec does (a rank rule,
an axis reduction, a reduced state, a group state, a sum over all parameters, an extra
input, train/eval modes), on every path against the float64 Reference interpreter: the
constructs compose, and `check` accepting them means every path runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optgen
from optgen.fused_support import fused_refusal
from optgen.parse import loads
from optgen.reference import Reference

HEADER = """
name: {name}
summary: a synthetic spec combining structured constructs.
paper: none
parity: independent
hyperparameters:
  lr:   {{default: 0.1, range: "(0, inf)", tex: '\\gamma'}}
  beta: {{default: 0.9, range: "[0, 1)", tex: '\\beta'}}
  eps:  {{default: 1.0e-3, range: "(0, inf)", tex: '\\epsilon'}}
"""

SPECS = {
    # a rank rule with a row-mean state, a group state fed by a sum over all parameters
    "AxisGroup": """
state:
  row: {init: 0, shape: {reduce: [-1]}, ndim: ">= 2", tex: 'R'}
  v:   {init: 0, ndim: "< 2", tex: 'V'}
  scale: {scope: group, init: 1, tex: 's'}
update: |
  total = global_sum(grad**2)
  if ndim(param) >= 2:
      row = beta * row + (1 - beta) * mean(grad**2, axis=-1)
      denom = sqrt(row) + eps
  else:
      v = beta * v + (1 - beta) * grad**2
      denom = sqrt(v) + eps
  scale = beta * scale + (1 - beta) / (1 + total)
  param = param - lr * scale * grad / denom
""",
    # an extra step input reduced over columns (amax) into a matrices-only state
    "AxisInput": """
inputs:
  hessian: {tex: 'h', doc: 'a curvature estimate'}
state:
  col: {init: 0, shape: {reduce: [-2]}, ndim: ">= 2", tex: 'C'}
update: |
  if ndim(param) >= 2:
      col = beta * col + (1 - beta) * amax(abs(hessian), axis=-2)
      denom = col + eps
  else:
      denom = abs(hessian) + eps
  param = param - lr * grad / denom
""",
    # train/eval modes beside a row-norm state and a group counter
    "ModesAxis": """
state:
  z:   {init: param, tex: 'z'}
  row: {init: 0, shape: {reduce: [-1]}, ndim: ">= 2", tex: 'R'}
  count: {scope: group, init: 0, tex: 'n'}
modes:
  eval: |
    param = param + 0.5 * (z - param)
  train: |
    param = 2 * param - z
update: |
  count = count + 1
  if ndim(param) >= 2:
      row = beta * row + (1 - beta) * norm(grad, axis=-1)**2
      step_size = lr / (sqrt(row) + eps)
  else:
      step_size = lr
  z = z - step_size * grad
  param = param + (z - param) / (count + 1)
""",
}
SHAPES = [(4, 6), (7,), (2, 3, 5), (), (1, 3)]
PATHS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused C++": {"fused": True}}


def _spec(name: str):
    return loads(HEADER.format(name=name) + SPECS[name].lstrip("\n"), f"{name.lower()}.yaml")


def _inputs(spec, grads, wrap):
    return {"hessian": wrap([np.abs(g) for g in grads])} if "hessian" in spec.inputs else {}


def _run(spec, keywords: dict, dtype: torch.dtype, steps: int = 4):
    """(params after `steps` steps and an eval() switch where the spec has modes, the Reference's)."""
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    groups = [{"params": [p.copy() for p in init[:3]], "lr": 0.05}, {"params": [p.copy() for p in init[3:]]}]
    ref = Reference(spec, groups)
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in init]
    opt = optgen.compile(spec)([{"params": params[:3], "lr": 0.05}, {"params": params[3:]}], **keywords)
    if spec.modes is not None:
        ref.train()
        opt.train()
    for gs in grads:
        ref.step(gs, **_inputs(spec, gs, list))
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step(**_inputs(spec, gs, lambda hs: {p: torch.tensor(h, dtype=dtype) for p, h in zip(params, hs)}))
    if spec.modes is not None:
        ref.eval()
        opt.eval()
    return [p.detach().double().numpy() for p in params], ref.params


@pytest.fixture
def cpp_runtime(monkeypatch):
    """The C++ kernels for fused=True on CPU tensors, even where the suite interprets Triton."""
    from optgen.backends.triton import runtime as triton_runtime

    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", SPECS)
def test_combined_constructs_match_the_reference_on_every_path(name, path, dtype, cpp_runtime):
    spec = _spec(name)
    assert optgen.check(spec).ok and fused_refusal(spec) == ""
    ours, want = _run(spec, PATHS[path], dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for got, expected in zip(ours, want):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", SPECS)
def test_combined_constructs_on_triton(name):
    from optgen.backends.triton import runtime as triton_runtime

    if not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")
    ours, want = _run(_spec(name), {"fused": True}, torch.float32, steps=2)
    for got, expected in zip(ours, want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
