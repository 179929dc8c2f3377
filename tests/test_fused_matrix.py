"""The fused path on matrix specs (optgen/backends/fused_matrix.py): elementwise stages as
C++ kernels (Triton's under its interpreter), matrix blocks through torch between them.

Muon fused against the float64 Reference interpreter and torch.optim.Muon (patched to keep
the input dtype for float64/float32 parity, as tests/test_matrix.py does; unpatched at the
default bfloat16 Newton-Schulz), on wide, tall and square matrices, several steps, every
option; and small synthetic specs that use matrix results in other ways (a state computed
from a matmul, a state read after it was stored, transposes only)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import optgen
from optgen.backends import fused_matrix
from optgen.backends.cpp import runtime as cpp_runtime
from optgen.backends.triton import runtime as triton_runtime
from optgen.fused_support import fused_refusal
from optgen.reference import Reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import max_rel_diff, muon_in_input_dtype

Muon = optgen.compile(optgen.load("muon"))
# two pairs of same-shaped matrices (one wide, one tall), a square one, a lone wide one
SHAPES = [(4, 6), (7, 3), (4, 6), (7, 3), (5, 5), (3, 8)]
SMALL = [(3, 5), (6, 2), (4, 4)]  # for Triton's interpreter (slow)
HYPERS = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9}
IN_DTYPE = {"bf16_newton_schulz": False}


@pytest.fixture
def cpp(monkeypatch):
    """fused=True on CPU runs the C++ kernels (the suite sets TRITON_INTERPRET=1); each stage's
    kernel call is counted."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    calls = []
    real = cpp_runtime.fused_step
    monkeypatch.setattr(cpp_runtime, "fused_step", lambda key, **kw: calls.append(key) or real(key, **kw))
    return calls


@pytest.fixture
def triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    real = triton_runtime.fused_step
    monkeypatch.setattr(triton_runtime, "fused_step", lambda key, **kw: calls.append(key) or real(key, **kw))
    return calls


def _grads(rng, shapes, steps):
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def _run(make, init, grads, dtype):
    params = [torch.tensor(p, dtype=dtype) for p in init]
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return params, opt


def test_muon_runs_fused():
    assert fused_refusal(optgen.load("muon")) == ""
    report = optgen.check(optgen.load("muon"))
    assert report.ok and not [f for f in report.findings if "fused" in f.message]


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("match_rms_adamw", [False, True])
def test_muon_fused_float64_matches_the_reference(cpp, nesterov, match_rms_adamw):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads(rng, SHAPES, 4)
    options = {"nesterov": nesterov, "match_rms_adamw": match_rms_adamw, **IN_DTYPE}
    ref = Reference(optgen.load("muon"), [{"params": [p.copy() for p in init], **HYPERS, **options}])
    for gs in grads:
        ref.step(gs)
    params, opt = _run(lambda ps: Muon(ps, **HYPERS, **options, fused=True), init, grads, torch.float64)
    assert (
        len([k for k in cpp if "#matrix" not in k]) == 2 * 4
    )  # two stages a step: before and after the Newton-Schulz blocks
    for p, want, p0 in zip(params, ref.params, init):
        assert max_rel_diff(p.numpy() - p0, want - p0) < 1e-12
    for p, state in zip(params, ref.state):
        assert max_rel_diff(opt.state[p]["momentum_buffer"].numpy(), state["momentum_buffer"]) < 1e-12


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"nesterov": False},
        {"adjust_lr_fn": "match_rms_adamw"},
        {"ns_steps": 3, "ns_coefficients": (2.0, -1.5, 0.5)},
    ],
    ids=["default", "no-nesterov", "match-rms-adamw", "ns-variant"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_muon_fused_matches_torch_in_the_input_dtype(cpp, variant, dtype):
    theirs_kw = {**HYPERS, **variant}
    ours_kw = {k: v for k, v in theirs_kw.items() if k != "adjust_lr_fn"}
    ours_kw["match_rms_adamw"] = variant.get("adjust_lr_fn") == "match_rms_adamw"
    rng = np.random.default_rng(2)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = _grads(rng, SHAPES, 5)
    ours, a = _run(lambda ps: Muon(ps, **ours_kw, **IN_DTYPE, fused=True), init, grads, dtype)
    theirs, b = _run(lambda ps: muon_in_input_dtype()(ps, **theirs_kw), init, grads, dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for p, q in zip(ours, theirs):
        assert max_rel_diff(p.numpy(), q.numpy()) < tol
        assert max_rel_diff(a.state[p]["momentum_buffer"].numpy(), b.state[q]["momentum_buffer"].numpy()) < tol
    assert cpp


def _step_rel_diffs(make, shapes, steps=1, dtype=torch.float32, seed=3):
    """Each tensor's relative difference of `steps` steps of `make`'s optimizer and of the
    unpatched torch.optim.Muon (Newton-Schulz in bfloat16)."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = _grads(rng, shapes, steps)
    ours, _ = _run(make, init, grads, dtype)
    theirs, _ = _run(lambda ps: torch.optim.Muon(ps, **HYPERS), init, grads, dtype)
    return [
        np.linalg.norm(p.double().numpy() - q.double().numpy()) / np.linalg.norm(q.double().numpy() - p0)
        for p, q, p0 in zip(ours, theirs, init)
    ]


def test_default_muon_fused_matches_torch_in_bfloat16(cpp):
    """Both iterate in bfloat16 with the same operations (addmm as baddbmm over a stack of
    same-shaped matrices): one step within the foreach path's 1e-5 of torch.optim.Muon. Later
    steps differ at bfloat16 level (measured 4e-3 after 2): the kernel's momentum differs from
    torch's lerp in the last float32 bit, which flips a bfloat16 rounding now and then."""
    shapes = SHAPES + [(48, 32)]
    assert max(_step_rel_diffs(lambda ps: Muon(ps, **HYPERS, fused=True), shapes)) < 1e-5
    assert max(_step_rel_diffs(lambda ps: Muon(ps, **HYPERS, fused=True), shapes, steps=3)) < 3e-2
    # and not by accident: in the parameter's dtype the fused step is visibly not torch's
    assert min(_step_rel_diffs(lambda ps: Muon(ps, **HYPERS, **IN_DTYPE, fused=True), shapes)) > 1e-3


@pytest.mark.parametrize("shape", [(5,), (4, 2, 3)])
def test_muon_fused_refuses_other_ranks(cpp, shape):
    """As torch.optim.Muon and the eager paths: a matrix operation needs a 2-D parameter."""
    bias = torch.zeros(shape, requires_grad=True)
    bias.grad = torch.ones(shape)
    with pytest.raises(ValueError, match="needs a 2-D parameter"):
        Muon([bias], fused=True).step()


def test_muon_fused_triton_interpreter(triton):
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(s) for s in SMALL]
    grads = _grads(rng, SMALL, 2)
    ref = Reference(optgen.load("muon"), [{"params": [p.copy() for p in init], **HYPERS, **IN_DTYPE}])
    for gs in grads:
        ref.step(gs)
    params, _ = _run(lambda ps: Muon(ps, **HYPERS, **IN_DTYPE, fused=True), init, grads, torch.float32)
    assert len([k for k in triton if "#matrix" not in k]) == 2 * 2
    for p, want, p0 in zip(params, ref.params, init):
        assert max_rel_diff(p.numpy() - p0, want - p0) < 1e-4
    rel = _step_rel_diffs(lambda ps: Muon(ps, **HYPERS, fused=True), SMALL)
    assert max(rel) < 1e-5


# --------------------------------------------------------------------------- synthetic specs
HEADER = """
name: {name}
summary: a synthetic spec using matrix operations.
paper: none
parity: independent
hyperparameters:
  lr:   {{default: 0.1, range: "(0, inf)", tex: '\\gamma'}}
  beta: {{default: 0.9, range: "[0, 1)", tex: '\\beta'}}
  eps:  {{default: 1.0e-3, range: "(0, inf)", tex: '\\epsilon'}}
state:
  m: {{init: 0, tex: m}}
  v: {{init: 0, tex: v}}
update: |
"""

SYNTHETIC = {
    # a state whose new value is a matmul's result: stored by the stage after its block
    "StateFromMatmul": """
  v = beta * v + (1 - beta) * grad * grad
  P = grad @ grad.T
  m = beta * m + (1 - beta) * P @ grad / (norm(P) + eps)
  param = param - lr * m / (sqrt(v) + eps)
""",
    # a state whose new value is a block's result that nothing else reads: a stage only stores it
    "StoredOnly": """
  m = beta * m + (1 - beta) * grad
  param = param - lr * m / (sqrt(abs(v)) + 1)
  v = beta * v + (1 - beta) * grad @ grad.T @ grad / (norm(grad) ** 2 + eps)
""",
    # the momentum before this step, read after the stage that stores the new one
    "OldMomentum": """
  d = m
  m = beta * m + (1 - beta) * grad
  v = v + grad * grad
  P = m @ m.T
  U = P @ m / (norm(P) + eps) - d
  param = param - lr * U / (sqrt(v) + 1)
""",
    # transposes only, chained with a per-tensor reduction of the block's result
    "Transposes": """
  m = beta * m + (1 - beta) * grad
  X = where(rows(param) > cols(param), m.T, m)
  X = X / (norm(X) + eps)
  Y = where(rows(param) > cols(param), X.T, X)
  v = v + Y * Y
  param = param - lr * (Y + amax(abs(Y)) * m) / (sqrt(v) + 1)
""",
    # a loop whose count is a constant, scaled by the step before and after
    "LoopStep": """
  m = beta * m + (1 - beta) * grad
  W = m / sqrt(step)
  for _ in range(2):
      W = 0.5 * W + 0.1 * W @ (W.T @ W)
  v = beta * v + (1 - beta) * W * W
  param = param - lr * W * sqrt(step) / (sqrt(v) + 1)
""",
}
SYNTHETIC_SHAPES = [(3, 5), (6, 2), (3, 5), (4, 4)]


def _spec(tmp_path, name, body):
    path = tmp_path / f"{name.lower()}.yaml"
    path.write_text(HEADER.format(name=name) + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    return optgen.load(path)


def _against_reference(spec, dtype, shapes, steps, path=None):
    path = path or {"fused": True}
    cls = optgen.compile(spec)
    rng = np.random.default_rng(len(spec.name))
    init = [rng.standard_normal(s) for s in shapes]
    grads = _grads(rng, shapes, steps)
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    for gs in grads:
        ref.step(gs)
    params, opt = _run(lambda ps: cls(ps, lr=0.05, **path), init, grads, dtype)
    rel = [max_rel_diff(p.double().numpy() - p0, want - p0) for p, want, p0 in zip(params, ref.params, init)]
    for p, state in zip(params, ref.state):
        rel += [max_rel_diff(opt.state[p][s].double().numpy(), state[s]) for s in ("m", "v")]
    return rel


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_matrix_specs_fused_match_the_reference(cpp, tmp_path, name):
    spec = _spec(tmp_path, name, SYNTHETIC[name])
    assert optgen.check(spec).ok and fused_refusal(spec) == ""
    assert max(_against_reference(spec, torch.float64, SYNTHETIC_SHAPES, 3)) < 1e-11
    assert max(_against_reference(spec, torch.float32, SYNTHETIC_SHAPES, 3)) < 1e-4
    assert cpp


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_matrix_specs_eager_match_the_reference(tmp_path, name, foreach):
    """The eager paths on the same specs: a state whose new value is a block's result
    (StateFromMatmul, StoredOnly) is copied into the state's buffer."""
    spec = _spec(tmp_path, name, SYNTHETIC[name])
    assert max(_against_reference(spec, torch.float64, SYNTHETIC_SHAPES, 3, {"foreach": foreach})) < 1e-11


def test_the_plan_of_a_state_read_after_its_store(tmp_path):
    """OldMomentum's block U reads m from before the step, after stage 0 stored the new m:
    stage 0 copies the old one first (`m_before`), and the block reads the copy."""
    spec = _spec(tmp_path, "OldMomentum", SYNTHETIC["OldMomentum"])
    plan = fused_matrix.plan(spec, {})
    first, second = plan.stages
    copy = plan.renamed["m"]
    assert copy in first.exports and [a.target for a in first.spec.update].index(copy) == 0
    assert "m" in first.states and not second.states and [b.name for b in first.blocks] == ["P", "U"]
    assert second.inputs == ["U", "v_1"] and not second.blocks


def test_synthetic_matrix_spec_fused_triton(triton, tmp_path):
    spec = _spec(tmp_path, "OldMomentum", SYNTHETIC["OldMomentum"])
    assert max(_against_reference(spec, torch.float32, [(3, 4), (5, 2)], 2)) < 1e-4
    assert triton


def test_scratch_and_block_results_are_kept_across_steps(monkeypatch):
    """The stages read the same scratch and result buffers every step, so the kernels'
    tables (cached by the tensors' addresses) are built once."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    seen = []
    real = cpp_runtime.fused_step

    def spy(key, **kw):
        arrays = {**kw["states"], **(kw.get("inputs") or {})}
        seen.append((key, {name: [t.data_ptr() for t in ts] for name, ts in arrays.items()}))
        return real(key, **kw)

    monkeypatch.setattr(cpp_runtime, "fused_step", spy)
    params = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    opt = Muon(params, **HYPERS, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    stages = [(k, ptrs) for k, ptrs in seen if "#matrix" not in k]
    assert len(stages) == 6 and stages[0] == stages[2] == stages[4] and stages[1] == stages[3] == stages[5]
    assert any(name.startswith("X") for name in stages[1][1])  # the Newton-Schulz result, read by stage 1


def test_maximize_and_a_step_input_reach_the_blocks(cpp, tmp_path):
    """A block that reads grad itself (not through a stage) sees it negated under maximize,
    and a spec's step() input reaches both the kernels and the blocks; the block's result is
    a state's new value (odd in grad: a sign lost in the block shows). Fused against the
    float64 Reference."""
    body = """
  m = beta * m + (1 - beta) * grad
  P = grad @ hessian.T
  v = beta * v + (1 - beta) * P @ hessian / (norm(P) + eps)
  param = param - lr * (m + v) * hessian
"""
    text = HEADER.format(name="GradBlock").replace("update: |", "inputs:\n  hessian: {tex: h}\nupdate: |")
    path = tmp_path / "gradblock.yaml"
    path.write_text(text + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    spec = optgen.load(path)
    assert optgen.check(spec).ok and fused_refusal(spec) == ""
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05, "maximize": True}])
    params = [torch.tensor(p) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, maximize=True, fused=True)
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
        hessians = [rng.uniform(0.5, 1.5, s) for s in SYNTHETIC_SHAPES]
        ref.step(grads, hessian=hessians)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step(hessian={p: torch.tensor(h) for p, h in zip(params, hessians)})
    for p, want, p0, state in zip(params, ref.params, init, ref.state):
        assert max_rel_diff(p.numpy() - p0, want - p0) < 1e-12
        assert max_rel_diff(opt.state[p]["v"].numpy(), state["v"]) < 1e-12
    assert cpp


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            (
                "  X = grad @ grad.T @ grad\n  if ndim(param) >= 3:\n"
                "      X = X / sqrt(mean(X * X, axis=-3) + amax(abs(X), axis=-1) + eps)\n"
                "  param = param - lr * X\n"
            ),
            "reduces over the axes -3, -1",
        ),
    ],
    ids=["axis-3"],
)
def test_what_the_stages_do_not_run_is_still_refused(tmp_path, body, message):
    """A matrix spec that also uses another construct the fused kernels do not run keeps
    that construct's refusal (and only it): fused=True is a ValueError naming it."""
    path = tmp_path / "mixed.yaml"
    path.write_text(HEADER.format(name="Mixed") + body)
    spec = optgen.load(path)
    refusal = fused_refusal(spec)
    assert message in refusal and "matrix operations (@" not in refusal
    with pytest.raises(ValueError, match=message):
        optgen.compile(spec)([torch.zeros(3, 3, requires_grad=True)], fused=True)


# matrices through a block, 3-D and 4-D tensors through a reduction over -3 (a view of each
# as (outer, rows, cols) whose rows are axis -3: fused_axes.py), vectors elementwise
MATRIX_AND_DEPTH = """
  m = beta * m + (1 - beta) * grad
  v = v + grad * grad
  if ndim(param) == 2:
      P = m @ m.T
      u = P @ m / (norm(P) + eps)
  elif ndim(param) >= 3:
      u = m / (amax(abs(m), axis=-3) + eps)
  else:
      u = m
  param = param - lr * u / (sqrt(v) + 1)
"""
DEPTH_SHAPES = [(3, 5), (2, 3, 4), (6,), (4, 4), (2, 2, 3, 2)]


def test_a_matrix_spec_with_a_reduction_over_axis_minus_3_runs_fused(cpp, tmp_path):
    spec = _spec(tmp_path, "MatrixAndDepth", MATRIX_AND_DEPTH)
    assert optgen.check(spec).ok and fused_refusal(spec) == ""
    assert max(_against_reference(spec, torch.float64, DEPTH_SHAPES, 3)) < 1e-11
    assert cpp


def test_a_matrix_spec_with_a_reduction_over_axis_minus_3_runs_in_triton(triton, tmp_path):
    spec = _spec(tmp_path, "MatrixAndDepth", MATRIX_AND_DEPTH)
    assert max(_against_reference(spec, torch.float32, DEPTH_SHAPES, 2)) < 1e-4
    assert triton
