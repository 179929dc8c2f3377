"""Matrix specs that also use sums over all parameters (global_norm, global_sum) or group
states, on the fused path (optgen/backends/fused_matrix.py: the optimizer computes the sums
before the step, the stages and blocks read them as per-tensor values, group states as host
scalars): C++ kernels in float64 and float32, Triton's under its interpreter, and the eager
paths, each against the float64 Reference interpreter over several steps and two param
groups (each with its own lr, so a group state or a sum mixed up between groups shows)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import optgen
from optgen.backends import fused_axes, fused_matrix
from optgen.backends.cpp import runtime as cpp_runtime
from optgen.backends.triton import runtime as triton_runtime
from optgen.fused_support import fused_refusal
from optgen.parse import loads
from optgen.reference import Reference

HEADER = """
name: {name}
summary: a synthetic matrix spec combined with another construct.
paper: none
parity: independent
hyperparameters:
  lr:   {{default: 0.1, range: "(0, inf)", tex: '\\gamma'}}
  beta: {{default: 0.9, range: "[0, 1)", tex: '\\beta'}}
  eps:  {{default: 1.0e-3, range: "(0, inf)", tex: '\\epsilon'}}
"""

SPECS = {
    # a Muon-like step on momentum of the gradient clipped by the global gradient norm
    "ClipMuon": """
state:
  m: {init: 0, tex: m}
update: |
  clip = minimum(1, 2 / (global_norm(grad) + eps))
  m = beta * m + (1 - beta) * clip * grad
  X = m / (norm(m) + eps)
  for _ in range(2):
      A = X @ X.T
      X = 1.5 * X - 0.5 * A @ X
  param = param - lr * X
""",
    # a sum over all parameters of a state's new value, read by a matrix block and a stage
    "StateSum": """
state:
  m: {init: 0, tex: m}
  v: {init: 0, tex: v}
update: |
  m = beta * m + (1 - beta) * grad
  total = global_sum(m * m)
  P = (m @ m.T @ m) / (total + eps)
  v = beta * v + (1 - beta) * P * P
  param = param - lr * (P + m / sqrt(total + eps)) / (sqrt(v) + 1)
""",
    # group states: a counter (read by a block) and a scale fed by a sum over all parameters
    "GroupScale": """
state:
  m: {init: 0, tex: m}
  count: {scope: group, init: 0, tex: 'n'}
  scale: {scope: group, init: 1, tex: 's'}
update: |
  count = count + 1
  scale = beta * scale + (1 - beta) / (1 + global_sum(grad**2))
  m = beta * m + (1 - beta) * grad
  X = (m @ m.T @ m) / count
  param = param - lr * scale * X / (norm(X) + eps)
""",
    # a row-normalised update after a Newton-Schulz-like loop (an axis reduction of a
    # loop's result: once a check error, the loop's result taken for a per-tensor scalar)
    "RowNormMuon": """
state:
  m: {init: 0, tex: m}
update: |
  m = beta * m + (1 - beta) * grad
  X = m / (norm(m) + eps)
  for _ in range(2):
      X = 1.5 * X - 0.5 * X @ X.T @ X
  if ndim(param) >= 2:
      X = X / sqrt(mean(X * X, axis=-1) + eps)
  param = param - lr * X
""",
    # a row state fed by a block's result, and a column statistic of it
    "RowState": """
state:
  m: {init: 0, tex: m}
  row: {init: 0, shape: {reduce: [-1]}, ndim: ">= 2", tex: 'R'}
update: |
  m = beta * m + (1 - beta) * grad
  X = m @ m.T @ m
  if ndim(param) >= 2:
      row = beta * row + (1 - beta) * mean(X * X, axis=-1)
      X = X / (sqrt(row) + eps) + amax(abs(X), axis=-2)
  param = param - lr * X
""",
    # a rank rule: matrices through a block that reads a row state, vectors elementwise;
    # clipped by the global gradient norm, a group counter
    "RankMuon": """
state:
  m: {init: 0, tex: m}
  row: {init: 0, shape: {reduce: [-1]}, ndim: ">= 2", tex: 'R'}
  count: {scope: group, init: 0, tex: 'n'}
update: |
  count = count + 1
  clip = minimum(1, 2 / (global_norm(grad) + eps))
  m = beta * m + (1 - beta) * clip * grad
  if ndim(param) >= 2:
      row = beta * row + (1 - beta) * mean(m * m, axis=-1)
      X = (m / (sqrt(row) + eps)) @ m.T @ m
      X = X / (norm(X) + eps)
  else:
      X = m / (norm(m) + eps)
  param = param - lr * X / sqrt(count)
""",
}
MATRICES = [(3, 5), (6, 2), (3, 5), (4, 4), (2, 7)]
MIXED = [(3, 5), (5,), (6, 2), (4, 4), (3,), (2, 7)]  # a rank rule: vectors too
SHAPES = {name: MIXED if name == "RankMuon" else MATRICES for name in SPECS}
SMALL = {name: [(3, 4), (5,), (2, 3)] if name == "RankMuon" else [(3, 4), (5, 2), (2, 3)] for name in SPECS}
STEPS = 4


def _spec(name: str):
    return loads(HEADER.format(name=name) + textwrap.dedent(SPECS[name]).strip("\n") + "\n", f"{name}.yaml")


def _run(spec, shapes, dtype, flags: dict, steps: int = STEPS, seed: int = 0):
    """`steps` steps on two param groups (the second with its own lr) and the Reference's."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s) for s in shapes]
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in start]
    half = len(shapes) // 2
    opt = optgen.compile(spec)([{"params": params[:half]}, {"params": params[half:], "lr": 0.03}], lr=0.05, **flags)
    ref = Reference(spec, [{"params": start[:half], "lr": 0.05}, {"params": start[half:], "lr": 0.03}])
    for _ in range(steps):
        grads = [rng.standard_normal(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        ref.step(grads)
    return params, start, opt, ref


def _rel(got: torch.Tensor, want: np.ndarray, start: np.ndarray) -> float:
    step = want - start
    return float(np.abs(got.detach().double().numpy() - want).max() / np.abs(step).max())


def _check(spec, params, start, opt, ref, tol):
    for p, want, p0 in zip(params, ref.params, start):
        assert _rel(p, want, p0) < tol
    for p, state in zip(params, ref.state):
        for name, want in state.items():
            if name in opt.state[p] and name != "step":
                np.testing.assert_allclose(
                    opt.state[p][name].double().numpy(), want, rtol=tol, atol=tol * np.abs(want).max()
                )
    group_states = [s.name for s in spec.state.values() if s.scope == "group"]
    for group, want in zip(opt.param_groups, ref.param_groups):
        for name in group_states:
            assert group[name] == pytest.approx(want[name], rel=tol)


@pytest.fixture
def cpp(monkeypatch):
    """fused=True on CPU runs the C++ kernels; each kernel call is counted. (Not by
    TRITON_INTERPRET=0: triton reads it once imported, and a later interpreted kernel that
    calls triton's own jit functions, as tl.minimum, would fail.)"""
    monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)
    calls = []
    real = cpp_runtime.fused_step
    monkeypatch.setattr(cpp_runtime, "fused_step", lambda key, **kw: calls.append(key) or real(key, **kw))
    return calls


@pytest.mark.parametrize("name", SPECS)
def test_check_accepts_and_the_fused_path_runs_it(name):
    spec = _spec(name)
    report = optgen.check(spec)
    assert report.ok and fused_refusal(spec) == ""
    assert not [f for f in report.findings if "fused" in f.message]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", SPECS)
def test_fused_cpp_matches_the_reference(cpp, name, dtype):
    spec = _spec(name)
    tol = 1e-11 if dtype == torch.float64 else 1e-4
    _check(spec, *_run(spec, SHAPES[name], dtype, {"fused": True}), tol)
    assert len([k for k in cpp if "#matrix" not in k]) >= 2 * STEPS  # two stages a step, at least


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("name", SPECS)
def test_eager_paths_match_the_reference(name, foreach):
    spec = _spec(name)
    _check(spec, *_run(spec, SHAPES[name], torch.float64, {"foreach": foreach}), 1e-11)


@pytest.mark.parametrize("name", SPECS)
def test_fused_triton_interpreter_matches_the_reference(monkeypatch, name):
    pytest.importorskip("triton")
    if not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")
    calls = []
    real = triton_runtime.fused_step
    monkeypatch.setattr(triton_runtime, "fused_step", lambda key, **kw: calls.append(key) or real(key, **kw))
    spec = _spec(name)
    _check(spec, *_run(spec, SMALL[name], torch.float32, {"fused": True}, steps=2), 1e-4)
    assert calls


def test_the_sums_change_the_result(cpp):
    """Not by accident: ClipMuon's clip is active (the global norm is above 2) and
    GroupScale's scale moves, so a sum read wrong (NaN, zero, one group's) would show."""
    spec = _spec("ClipMuon")
    params, *_ = _run(spec, MATRICES, torch.float64, {"foreach": True}, steps=1)
    assert np.sqrt(sum((g**2).sum() for g in [p.grad.numpy() for p in params])) > 2
    spec = _spec("GroupScale")
    _, _, opt, _ = _run(spec, MATRICES, torch.float64, {"fused": True}, steps=2)
    assert [g["count"] for g in opt.param_groups] == [2, 2]
    assert 0 < opt.param_groups[0]["scale"] < 0.9


def test_a_sum_over_a_matrix_result_is_a_check_error():
    """A sum over all parameters runs before any block (on every path): it may not read a
    matrix operation's result, which `check` says (it once passed check and raised NameError
    on the eager paths)."""
    text = HEADER.format(name="NormOfBlock") + textwrap.dedent(
        """\
        state:
          m: {init: 0, tex: m}
        update: |
          m = beta * m + (1 - beta) * grad
          X = m @ m.T @ m
          param = param - lr * X / (global_norm(X) + eps)
        """
    )
    report = optgen.check(loads(text, "NormOfBlock.yaml"))
    assert not report.ok
    assert any("may not read a matrix operation's result" in f.message for f in report.findings)


def test_each_rank_class_plans_its_own_stages():
    """RankMuon: the vectors' plan has no block and no row state; the matrices' reads the
    row state in its block (a reduced scratch between the stages)."""
    spec = _spec("RankMuon")
    classes = fused_axes.spec_rank_classes(spec, {})
    vectors = fused_matrix.plan(spec, {}, next(c for c in classes if 1 in c))
    matrices = fused_matrix.plan(spec, {}, next(c for c in classes if 2 in c))
    assert not [b for stage in vectors.stages for b in stage.blocks]
    assert all("row" not in stage.states for stage in vectors.stages)
    assert [b for stage in matrices.stages for b in stage.blocks]
    assert any(axes == frozenset({-1}) for axes in matrices.scratch_axes.values())


@pytest.mark.parametrize("flags", [{"foreach": False}, {"foreach": True}, {"fused": True}], ids=str)
def test_a_matrix_rule_on_a_3d_parameter_is_refused_on_every_path(cpp, flags):
    """RankMuon's `ndim(param) >= 2` side multiplies matrices: a 3-D parameter is the same
    ValueError on every path."""
    p = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match="needs a 2-D parameter"):
        optgen.compile(_spec("RankMuon"))([p], **flags).step()


def test_the_shape_walkers_read_through_a_loop(tmp_path):
    """shapes' statement walkers (the sharded-parameter check, the fused refusal) go into a
    `for` loop's body: a loop has no `orelse`, and its count's symbols are read."""
    from optgen.shapes import _symbols_of, axis_constructs, fused_refusal

    path = tmp_path / "loopaxis.yaml"
    path.write_text(
        "name: LoopAxis\nsummary: a loop, then a row reduction.\npaper: none\nparity: independent\n"
        "hyperparameters:\n"
        "  lr:   {default: 0.1, range: \"(0, inf)\", tex: '\\gamma'}\n"
        "  k:    {default: 3, range: \"[0, 9]\", tex: 'k'}\n"
        "update: |\n"
        "  X = grad / (norm(grad) + 1)\n"
        "  for _ in range(k):\n"
        "      X = 1.5 * X - 0.5 * X @ X.T @ X\n"
        "  X = X / (sqrt(mean(X**2, axis=-1)) + 1)\n"
        "  param = param - lr * X\n"
    )
    spec = optgen.load(path)
    assert axis_constructs(spec) == ["axis reductions (mean(x, axis=...))"]
    assert fused_refusal(spec) is None
    assert "k" in {s.name for s in _symbols_of(spec.update)}
