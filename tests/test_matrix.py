"""Matrix operations (`@`, transpose, rows/cols, bounded loops): Muon against torch.optim.Muon
on every eager path, the foreach path's batching of same-shaped matrices, small synthetic
specs against the float64 Reference, located check errors, and routing Muon + AdamW by
param group against torch.optim.Muon and torch.optim.AdamW run side by side.

torch.optim.Muon computes Newton-Schulz in bfloat16, and so does optgen's Muon by default
(the option bf16_newton_schulz, through the spec language's bfloat16()). For float64 and
float32 parity ours runs with bf16_newton_schulz=False and torch's with that one function
replaced by the same operations in the input dtype (reference_impls.muon_in_input_dtype,
patched only inside its step()); the defaults of both are compared in float32."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import optgen
from optgen.errors import SpecError
from optgen.reference import Reference
from optgen.routing import Routed, split_by_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import max_rel_diff, muon_in_input_dtype

Muon = optgen.compile(optgen.load("muon"))
AdamW = optgen.compile(optgen.load("adamw"))
PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}}
# two pairs of same-shaped matrices (one wide, one tall), a square one, a lone wide one
SHAPES = [(4, 6), (7, 3), (4, 6), (7, 3), (5, 5), (3, 8)]
HYPERS = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9}
IN_DTYPE = {"bf16_newton_schulz": False}  # ours in the parameter's dtype, as muon_in_input_dtype


def _run(make_ours, make_theirs, shapes, steps, dtype, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    ours = [torch.tensor(p, dtype=dtype) for p in init]
    theirs = [torch.tensor(p, dtype=dtype) for p in init]
    a, b = make_ours(ours), make_theirs(theirs)
    for _ in range(steps):
        grads = [rng.standard_normal(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = torch.tensor(g, dtype=dtype), torch.tensor(g, dtype=dtype)
        a.step()
        b.step()
    return ours, theirs, a, b


@pytest.mark.parametrize("path", PATHS)
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
def test_muon_matches_torch_in_float64(path, variant):
    theirs_kw = {**HYPERS, **variant}
    ours_kw = {k: v for k, v in theirs_kw.items() if k != "adjust_lr_fn"}
    ours_kw["match_rms_adamw"] = variant.get("adjust_lr_fn") == "match_rms_adamw"
    ours, theirs, a, b = _run(
        lambda ps: Muon(ps, **ours_kw, **IN_DTYPE, **PATHS[path]),
        lambda ps: muon_in_input_dtype()(ps, **theirs_kw),
        SHAPES,
        steps=5,
        dtype=torch.float64,
    )
    for p, q in zip(ours, theirs):
        assert max_rel_diff(p.numpy(), q.numpy()) < 1e-12
    for p, q in zip(ours, theirs):
        assert max_rel_diff(a.state[p]["momentum_buffer"].numpy(), b.state[q]["momentum_buffer"].numpy()) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_muon_matches_torch_in_float32(path):
    ours, theirs, _, _ = _run(
        lambda ps: Muon(ps, **HYPERS, **IN_DTYPE, **PATHS[path]),
        lambda ps: muon_in_input_dtype()(ps, **HYPERS),
        SHAPES,
        steps=3,
        dtype=torch.float32,
    )
    for p, q in zip(ours, theirs):
        assert max_rel_diff(p.numpy(), q.numpy()) < 1e-5


def _step_rel_diffs(make_ours, seed=3, dtype=torch.float32):
    """One step of ours and of the unpatched torch.optim.Muon: each tensor's relative
    difference of the steps taken."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES + [(48, 32)]]
    ours = [torch.tensor(p, dtype=dtype) for p in init]
    theirs = [torch.tensor(p, dtype=dtype) for p in init]
    a, b = make_ours(ours), torch.optim.Muon(theirs, **HYPERS)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in init]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = torch.tensor(g, dtype=dtype), torch.tensor(g, dtype=dtype)
    a.step()
    b.step()
    out = []
    for p, q, p0 in zip(ours, theirs, init):
        ours_step, theirs_step = p.double().numpy() - p0, q.double().numpy() - p0
        out.append(np.linalg.norm(ours_step - theirs_step) / np.linalg.norm(theirs_step))
    return out


@pytest.mark.parametrize("path", PATHS)
def test_default_muon_matches_unpatched_torch_in_float32(path):
    """By default both iterate in bfloat16: the same operations in the same dtype (measured:
    the for-loop path identical, foreach's batched matmuls within 1e-6)."""
    assert max(_step_rel_diffs(lambda ps: Muon(ps, **HYPERS, **PATHS[path]))) < 1e-5


def test_muon_in_the_parameter_dtype_differs_from_torch_at_bfloat16_level():
    """torch iterates in bfloat16 (8 bits of mantissa), and five quintic Newton-Schulz steps
    amplify its rounding: in float32 the steps agree to about 1e-2 (measured: up to 2e-2)."""
    rel = _step_rel_diffs(lambda ps: Muon(ps, **HYPERS, **IN_DTYPE, foreach=True))
    assert max(rel) < 0.1
    assert min(rel) > 1e-3, "torch's bfloat16 iteration differs from a float32 one: the comparison must see it"


def test_muon_on_every_path_matches_the_reference():
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s) for s in SHAPES]
    ref = Reference(optgen.load("muon"), [{"params": [p.copy() for p in init], **HYPERS, **IN_DTYPE}])
    runs = {name: [torch.tensor(p) for p in init] for name in PATHS}
    opts = {name: Muon(ps, **HYPERS, **IN_DTYPE, **PATHS[name]) for name, ps in runs.items()}
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SHAPES]
        ref.step(grads)
        for name, ps in runs.items():
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g)
            opts[name].step()
    for name, ps in runs.items():
        for p, want in zip(ps, ref.params):
            assert max_rel_diff(p.numpy(), want) < 1e-12, name


def test_foreach_batches_same_shaped_matrices(monkeypatch):
    """Each shape's matrices are stacked once: torch.baddbmm runs once per shape group and
    Newton-Schulz step (twice per step), on a batch of that group's size; the for-loop path
    calls torch.addmm per tensor. Both give the same numbers."""
    calls = {"baddbmm": [], "addmm": 0, "stack": 0}
    baddbmm, addmm, stack = torch.baddbmm, torch.addmm, torch.stack

    def counting_stack(*args, **kw):
        calls["stack"] += 1
        return stack(*args, **kw)

    def counting_baddbmm(x, *args, **kw):
        calls["baddbmm"].append(x.shape[0])
        return baddbmm(x, *args, **kw)

    def counting_addmm(*args, **kw):
        calls["addmm"] += 1
        return addmm(*args, **kw)

    monkeypatch.setattr(torch, "baddbmm", counting_baddbmm)
    monkeypatch.setattr(torch, "addmm", counting_addmm)
    monkeypatch.setattr(torch, "stack", counting_stack)
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [rng.standard_normal(s) for s in SHAPES]
    results = {}
    for name, keywords in PATHS.items():
        ps = [torch.tensor(p) for p in init]
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g)
        Muon(ps, **HYPERS, ns_steps=5, **IN_DTYPE, **keywords).step()
        results[name] = ps
    groups = {(4, 6): 2, (7, 3): 2, (5, 5): 1, (3, 8): 1}
    assert sorted(calls["baddbmm"]) == sorted(n for n in groups.values() for _ in range(2 * 5))
    assert calls["addmm"] == 2 * 5 * len(SHAPES)
    assert calls["stack"] == len(groups)  # the three blocks of a group share one stack
    for p, q in zip(results["forloop"], results["foreach"]):
        assert max_rel_diff(p.numpy(), q.numpy()) < 1e-12


def test_generated_foreach_code_stacks_and_uses_baddbmm():
    text = (Path(__file__).resolve().parents[1] / "generated/torch/muon.py").read_text()
    multi = text[text.index("def _multi_tensor_muon") :]
    assert "torch.stack(" in multi and "torch.baddbmm(" in multi
    single = text[text.index("def _single_tensor_muon") : text.index("def _multi_tensor_muon")]
    assert "torch.addmm(" in single and "torch.stack(" not in single


def test_muon_state_dict_round_trip_and_torch_checkpoint():
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s) for s in SHAPES[:3]]
    grads = [[rng.standard_normal(p.shape) for p in init] for _ in range(4)]
    theirs = [torch.tensor(p) for p in init]
    torch_opt = muon_in_input_dtype()(theirs, **HYPERS)
    for g in grads[:2]:
        for p, x in zip(theirs, g):
            p.grad = torch.tensor(x)
        torch_opt.step()
    # torch.optim.Muon's checkpoint loads into optgen's Muon (same state keys), and back
    ours = [p.detach().clone() for p in theirs]
    ours_opt = Muon(ours, **HYPERS, **IN_DTYPE, foreach=True)
    ours_opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # torch's load keeps the tensors
    again = [p.detach().clone() for p in theirs]
    again_opt = Muon(again, **HYPERS, **IN_DTYPE, foreach=False)
    again_opt.load_state_dict(copy.deepcopy(ours_opt.state_dict()))
    for g in grads[2:]:
        for ps in (theirs, ours, again):
            for p, x in zip(ps, g):
                p.grad = torch.tensor(x)
        torch_opt.step()
        ours_opt.step()
        again_opt.step()
    for p, q, r in zip(ours, theirs, again):
        assert max_rel_diff(p.numpy(), q.numpy()) < 1e-12
        assert max_rel_diff(r.numpy(), q.numpy()) < 1e-12


@pytest.mark.parametrize("shape", [(5,), (4, 2, 3)])
def test_muon_refuses_other_ranks(shape):
    """Matrix operations need a 2-D parameter, as torch.optim.Muon does: a vector or a
    conv-like weight is a ValueError on every path and in the Reference."""
    bias = torch.zeros(shape, requires_grad=True)
    bias.grad = torch.ones(shape)
    for keywords in PATHS.values():
        with pytest.raises(ValueError, match="needs a 2-D parameter"):
            Muon([bias], **keywords).step()
    ref = Reference(optgen.load("muon"), [{"params": [np.zeros(shape)]}])
    with pytest.raises(ValueError, match="needs a 2-D parameter"):
        ref.step([np.ones(shape)])
    report = optgen.check(optgen.load("muon"))
    warnings = [f.message for f in report.findings if f.severity == "warning"]
    assert report.ok and not any("fused" in w for w in warnings)  # fused: tests/test_fused_matrix.py


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
update: |
"""

SYNTHETIC = {
    # a Gram-matrix preconditioner, with a rows x rows value in between and a per-tensor host
    # value (the step) read inside a block
    "GramPre": """
  m = beta * m + (1 - beta) * grad
  P = m @ m.T
  P = P / (norm(P) + eps)
  U = P @ m / sqrt(step) + eps * m
  param = param - lr * U
""",
    # a fixed-count power iteration on the gradient's Gram matrix, started at the momentum
    "PowerIter": """
  m = beta * m + (1 - beta) * grad
  V = m
  for _ in range(3):
      V = grad @ (transpose(grad) @ V)
      V = V / maximum(norm(V), eps)
  param = param - lr * (V + m)
""",
    # matmul()/transpose() spelled as functions, a cols x cols product, and a loop with a
    # count from a hyperparameter whose range bounds it
    "ColsLoop": """
  m = beta * m + (1 - beta) * grad
  Q = matmul(transpose(m), m) / (sum(m * m) + eps)
  W = m
  for _ in range(2):
      W = 0.5 * W + matmul(W, Q)
  param = param - lr * W / (norm(W) + eps)
""",
    # a block that is a view of a state (no matmul: X is m itself or its transpose), scaled
    # afterwards: the state must not change through the view
    "StateView": """
  m = beta * m + (1 - beta) * grad
  X = where(rows(param) > cols(param), m.T, m)
  X = X * 2
  X = where(rows(param) > cols(param), X.T, X)
  param = param - lr * X
""",
    # shape queries in elementwise code: a per-tensor host branch (the foreach path splits
    # its batches on it) and a per-tensor scale, on every shape including a 3-D one
    "Oriented": """
  m = beta * m + (1 - beta) * grad
  s = where(rows(param) > cols(param), 2 * m, m / 2)
  param = param - lr * s * cols(param) / rows(param)
""",
}
SYNTHETIC_SHAPES = [(3, 5), (6, 2), (3, 5), (4, 4), (2, 3)]


def _spec(tmp_path, name, body):
    path = tmp_path / f"{name.lower()}.yaml"
    path.write_text(HEADER.format(name=name) + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    return optgen.load(path)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_matrix_specs_match_the_reference_on_every_path(tmp_path, name):
    spec = _spec(tmp_path, name, SYNTHETIC[name])
    assert optgen.check(spec).ok
    cls = optgen.compile(spec)
    rng = np.random.default_rng(len(name))
    init = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    runs = {path: [torch.tensor(p) for p in init] for path in PATHS}
    opts = {path: cls(ps, lr=0.05, **PATHS[path]) for path, ps in runs.items()}
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
        ref.step(grads)
        for path, ps in runs.items():
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g)
            opts[path].step()
    for path, ps in runs.items():
        for p, want, p0 in zip(ps, ref.params, init):
            assert max_rel_diff(p.numpy(), want) < 1e-11, path
            assert np.max(np.abs(want - p0)) > 1e-3  # the step moved it
    # float32 on the foreach path, against the float64 Reference
    ps = [torch.tensor(p, dtype=torch.float32) for p in init]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    opt = cls(ps, lr=0.05, foreach=True)
    grads = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
    ref.step(grads)
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    for p, want in zip(ps, ref.params):
        assert max_rel_diff(p.numpy(), want) < 1e-5


def test_synthetic_specs_are_not_all_the_same(tmp_path):
    """The programs compute different updates (a test of one would not pass another)."""
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    results = []
    for name, body in SYNTHETIC.items():
        ref = Reference(_spec(tmp_path, name, body), [{"params": [p0.copy()]}])
        ref.step([g])
        results.append(ref.params[0])
    assert all(max_rel_diff(a, b) > 1e-3 for i, a in enumerate(results) for b in results[i + 1 :])


ERRORS = [
    (
        "  U = grad\n  for _ in range(3):\n      A = U @ U.T\n      U = A @ U\n  param = param - lr * A @ U",
        "`A` is a temporary of the loop at",
        (15, 3),
    ),
    ("  U = grad @ grad\n  param = param - lr * U", "inner dimensions do not match", (11, 3)),
    ("  U = lr @ grad\n  param = param - lr * U", "the left operand `lr` is a scalar", (11, 3)),
    (
        "  U = grad @ grad.T + grad\n  param = param - lr * U",
        "cannot combine a rows×cols matrix with a rows×rows matrix",
        (11, 3),
    ),
    ("  param = grad @ grad.T", "`param` is shaped like the parameter, but this is a rows×rows", (11, 3)),
    ("  U = grad.shape\n  param = param - lr * U", "attribute `.shape` is not allowed", (11, 7)),
    (
        "  U = grad\n  for _ in range(1000):\n      U = U @ U.T @ U\n  param = param - lr * U",
        "at most 100 times",
        (12, 3),
    ),
    (
        "  U = grad\n  for _ in range(lr):\n      U = U @ U.T @ U\n  param = param - lr * U",
        "the loop count `lr` must have a range within [0, 100]",
        (12, 3),
    ),
    (
        "  U = grad\n  for i in range(3):\n      U = U @ U.T @ U\n  param = param - lr * U",
        "its index cannot be read",
        (12, 3),
    ),
    ("  U = bfloat16(lr) * grad\n  param = param - U", "bfloat16: `lr` is a scalar", (11, 3)),
    ("  U = bfloat16(grad, 2)\n  param = param - U", "bfloat16() takes 1 positional argument", (11, 7)),
    (
        "  n = norm(bfloat16(grad))\n  param = param - lr * n * grad",
        "round in one statement and reduce it in the next",
        (11, 3),
    ),
    (
        "  U = grad\n  for _ in range(3):\n      U = U.T\n  param = param - lr * U",
        "the loop changes the shape of `U`: a rows×cols matrix becomes a cols×rows",
        (12, 3),
    ),
]


@pytest.mark.parametrize("body, message, where", ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_matrix_check_errors_are_located(tmp_path, body, message, where):
    path = tmp_path / "bad.yaml"
    text = HEADER.format(name="Bad").replace("state:\n  m: {init: 0, tex: m}\n", "") + body + "\n"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        spec = optgen.load(path)
        report = optgen.check(spec)
        errors = [f for f in report.findings if f.severity == "error"]
        raise SpecError(errors[0].loc, errors[0].message)
    err = info.value
    assert message in err.message
    assert (err.loc.line, err.loc.col) == where, str(err)


def test_prover_refuses_matrix_specs():
    with pytest.raises(SpecError, match="does not reason about them"):
        optgen.prove(optgen.load("muon"), optgen.load("muon"))


def test_latex_prints_products_transposes_and_the_loop():
    tex = optgen.latex(optgen.load("muon"))
    assert r"O \leftarrow \mathrm{NS}_{k}(O)" in tex and r"\text{ times }" in tex  # tests/test_latex_loops.py
    assert r"^{\top}" in tex and r"\operatorname{rows}" in tex


# --------------------------------------------------------------------------- bfloat16()
BF16_SPECS = {
    # rounded once and stored at once: the torch paths convert it back where the parameter
    # reads it, so they agree with the Reference's rounding exactly (the cast is the same)
    "Bf16Round": """
  m = beta * m + (1 - beta) * grad
  V = bfloat16(m)
  param = param - lr * (V + 0.5 * grad)
""",
    # a Gram-matrix step carried in bfloat16 across two statements and a loop, read by a
    # per-tensor norm outside the blocks: the Reference rounds only at the cast, torch
    # computes every operation in bfloat16
    "Bf16Gram": """
  m = beta * m + (1 - beta) * grad
  X = bfloat16(m) / 4
  P = X @ X.T
  for _ in range(2):
      X = X + 0.1 * P @ X
  n = norm(X)
  param = param - lr * X / (n + eps)
""",
}


def _run_against_reference(spec, dtype, steps=3):
    cls = optgen.compile(spec)
    rng = np.random.default_rng(17)
    init = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    runs = {path: [torch.tensor(p, dtype=dtype) for p in init] for path in PATHS}
    opts = {path: cls(ps, lr=0.05, **PATHS[path]) for path, ps in runs.items()}
    for _ in range(steps):
        grads = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
        ref.step(grads)
        for path, ps in runs.items():
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g, dtype=dtype)
            opts[path].step()
    steps_ref = [want - p0 for want, p0 in zip(ref.params, init)]
    return {
        path: [np.linalg.norm(p.double().numpy() - p0 - d) / np.linalg.norm(d) for p, p0, d in zip(ps, init, steps_ref)]
        for path, ps in runs.items()
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bfloat16_rounding_matches_the_reference_exactly(tmp_path, dtype):
    """The Reference rounds to nearest even on the float32 bit pattern, as .bfloat16() does."""
    spec = _spec(tmp_path, "Bf16Round", BF16_SPECS["Bf16Round"])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for path, rel in _run_against_reference(spec, dtype).items():
        assert max(rel) < tol, path


def test_bfloat16_rounding_is_visible():
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-9, -3.14159, 1e-30, np.inf])
    got = optgen.matrix.round_bfloat16(x)
    assert np.array_equal(got, torch.tensor(x).bfloat16().double().numpy())
    assert got[1] == 1.0 and got[2] == 1.0 + 2.0**-6  # ties to even, both ways


def test_bfloat16_computation_matches_the_reference_at_bfloat16_tolerance(tmp_path):
    spec = _spec(tmp_path, "Bf16Gram", BF16_SPECS["Bf16Gram"])
    assert optgen.check(spec).ok
    for path, rel in _run_against_reference(spec, torch.float32).items():
        # bfloat16 carries 8 bits: each step within a few 2^-8 of the Reference's, never equal
        assert max(rel) < 3e-2 and min(rel) > 1e-5, (path, rel)
    assert r"\mathrm{bf16}\left(m_{t}\right)" in optgen.latex(spec)


def test_bfloat16_spec_runs_fused_and_matches_the_reference_exactly(tmp_path, monkeypatch):
    """The fused path (C++ kernels, the rounding through torch between them) rounds as the
    Reference does."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    spec = _spec(tmp_path, "Bf16Round", BF16_SPECS["Bf16Round"])
    cls = optgen.compile(spec)
    rng = np.random.default_rng(17)
    init = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    params = [torch.tensor(p) for p in init]
    opt = cls(params, lr=0.05, fused=True)
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SYNTHETIC_SHAPES]
        ref.step(grads)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
    for p, want, p0 in zip(params, ref.params, init):
        assert max_rel_diff(p.numpy() - p0, want - p0) < 1e-12


def test_generated_muon_runs_newton_schulz_in_bfloat16_by_default():
    text = (Path(__file__).resolve().parents[1] / "generated/torch/muon.py").read_text()
    assert "bf16_newton_schulz: bool = True" in text or "bf16_newton_schulz=True" in text
    assert ".bfloat16()" in text and ".to(param.dtype)" in text and ".to(params[i].dtype)" in text
    assert r"\mathrm{bf16}" in optgen.latex(optgen.load("muon"))


# --------------------------------------------------------------------------- routing
def _model_params(rng):
    shapes = {"embed": (10, 4), "hidden1": (4, 6), "hidden2": (6, 4), "hidden3": (4, 6), "bias": (6,), "head": (4, 10)}
    return {name: torch.tensor(rng.standard_normal(s), requires_grad=True) for name, s in shapes.items()}


@pytest.mark.parametrize("path", PATHS)
def test_routed_muon_and_adamw_match_torch_side_by_side(path):
    rng = np.random.default_rng(2)
    ours, theirs = _model_params(rng), None
    theirs = {k: v.detach().clone().requires_grad_() for k, v in ours.items()}
    hidden, rest = split_by_shape(ours.items(), exclude=("embed", "head"))
    assert len(hidden) == 3 and len(rest) == 3
    muon_kw, adamw_kw = {"lr": 0.02, "weight_decay": 0.05}, {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.01}
    opt = Routed(
        [{"params": hidden, "use_muon": True, **muon_kw, **IN_DTYPE}, {"params": rest, "use_muon": False, **adamw_kw}],
        rules={True: Muon, False: AdamW},
        defaults={True: PATHS[path], False: PATHS[path]},
    )
    t_hidden, t_rest = split_by_shape(theirs.items(), exclude=("embed", "head"))
    t_muon = muon_in_input_dtype()(t_hidden, **muon_kw)
    t_adamw = torch.optim.AdamW(t_rest, **adamw_kw)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (t_muon, t_adamw)]
    for step in range(5):
        grads = {k: rng.standard_normal(tuple(v.shape)) for k, v in ours.items()}
        for k in ours:
            ours[k].grad, theirs[k].grad = torch.tensor(grads[k]), torch.tensor(grads[k])
        opt.step()
        t_muon.step()
        t_adamw.step()
        scheduler.step()
        for s in schedulers:
            s.step()
        if step == 2:  # a checkpoint in the middle: the routed optimizer reloads it
            saved = opt.state_dict()
            opt = Routed(
                [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}],
                rules={True: Muon, False: AdamW},
            )
            opt.load_state_dict(saved)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5, last_epoch=step)
    for k in ours:
        assert max_rel_diff(ours[k].detach().numpy(), theirs[k].detach().numpy()) < 1e-12, k
    assert set(opt.state[hidden[0]]) == {"step", "momentum_buffer"}
    assert set(opt.state[rest[0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_routed_needs_a_rule_for_every_group():
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="has no `use_muon`"):
        Routed([{"params": [p]}], rules={True: Muon})
    with pytest.raises(ValueError, match="names no rule"):
        Routed([{"params": [p], "use_muon": False}], rules={True: Muon})
