"""Extra per-element inputs of step() (issue 10, item 4): a spec declares `inputs:`, the
update and state inits read them, and every path takes them: the Reference interpreter,
the torch for-loop, foreach and fused (C++ and Triton) paths; LaTeX prints them; the
prover refuses such a spec with a located error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import optgen
from optgen.errors import SpecError
from optgen.parse import loads
from optgen.reference import Reference

ROOT = Path(__file__).resolve().parents[1]

# A diagonal Newton-like step: the gradient scaled by an EMA of a curvature estimate that
# step() is given, plus the current estimate; the EMA starts at the first estimate.
NEWTON = textwrap.dedent(
    """\
    name: DiagNewton
    summary: A diagonal Newton-like step from a curvature estimate given to step().
    parity: independent
    inputs:
      hessian: {tex: 'h', doc: 'a curvature estimate, one value per element of each parameter'}
    hyperparameters:
      lr: {default: 0.1, range: '(0, inf)', tex: '\\gamma'}
      beta: {default: 0.9, range: '[0, 1)', tex: '\\beta'}
      eps: {default: 0.001, range: '(0, inf)', tex: '\\epsilon'}
    state:
      curvature: {init: abs(hessian), tex: 'c'}
    update: |
      curvature = beta * curvature + (1 - beta) * abs(hessian)
      param = param - lr * grad / (curvature + eps + abs(hessian))
    """
)

SHAPES = [(3, 4), (5,), (2, 3, 2), (7,)]
PATHS = ["for-loop", "foreach", "fused C++", "fused Triton"]


@pytest.fixture(scope="module")
def spec():
    return loads(NEWTON, "newton.yaml")


@pytest.fixture(scope="module")
def cls(spec):
    return optgen.compile(spec)


def _kwargs(path: str) -> dict:
    return {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}.get(path, {"fused": True})


@pytest.fixture
def runtime(monkeypatch, request):
    """fused=True on CPU tensors runs Triton's interpreter (the suite sets TRITON_INTERPRET=1
    without a GPU) or, for "fused C++", the C++ kernels. The variable itself stays set: a
    step taken while it is unset leaves Triton's interpreter unable to run a reduction."""
    from optgen.backends.triton import runtime as triton_runtime

    path = request.node.callspec.params["path"]
    if path == "fused Triton" and not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")
    if path == "fused C++":
        monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)


def _run(spec, cls, path: str, dtype: torch.dtype, steps: int = 4, maximize: bool = False):
    """Torch params and the Reference's after `steps` steps with the same gradients and
    curvature estimates; two param groups, and a parameter without a gradient (it needs no
    input and does not move)."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
    params = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
    groups = [{"params": params[:2], "lr": 0.3}, {"params": params[2:], "beta": 0.5}]
    opt = cls(groups, maximize=maximize, **_kwargs(path))
    ref_groups = [dict(g, params=[p.detach().double().numpy().copy() for p in g["params"]]) for g in groups]
    ref = Reference(spec, [dict(g, maximize=maximize) for g in ref_groups])
    for _ in range(steps):
        grads = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        hessians = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        grads[3] = None  # the last parameter never has a gradient
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.to(dtype)
        opt.step(hessian={p: h.to(dtype) for p, h, g in zip(params, hessians, grads) if g is not None})
        ref.step(
            [None if g is None else g.numpy() for g in grads],
            hessian=[None if g is None else h.numpy() for h, g in zip(hessians, grads)],
        )
    return opt, params, ref, start


@pytest.mark.parametrize("path", PATHS)
def test_float64_matches_the_reference(spec, cls, path, runtime):
    opt, params, ref, start = _run(spec, cls, path, torch.float64)
    # Triton's kernels compute in float32 whatever the tensors' dtype
    tol = 2e-6 if path == "fused Triton" else 1e-13
    for p, r in zip(params, ref.params):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=tol, atol=tol)
    for i in range(3):  # the EMA of the input, started from the first one
        np.testing.assert_allclose(
            opt.state[params[i]]["curvature"].numpy(), ref.state[i]["curvature"], rtol=tol, atol=tol
        )
    assert torch.equal(params[3].detach(), start[3])  # no gradient: not updated, no state
    assert params[3] not in opt.state
    assert not np.allclose(ref.params[0], start[0].numpy())  # the steps moved it


@pytest.mark.parametrize("path", PATHS)
def test_float32_matches_the_reference(spec, cls, path, runtime):
    _, params, ref, _ = _run(spec, cls, path, torch.float32, maximize=True)
    for p, r in zip(params, ref.params):
        np.testing.assert_allclose(p.detach().double().numpy(), r, rtol=2e-5, atol=2e-6)


def test_the_input_changes_the_update(spec, cls):
    """A test that cannot fail is a defect: a different curvature gives a different step."""
    p, q = (
        torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
        torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
    )
    for x in (p, q):
        x.grad = torch.ones(3, dtype=torch.float64)
    cls([p], foreach=False).step(hessian={p: torch.full((3,), 1.0, dtype=torch.float64)})
    cls([q], foreach=False).step(hessian={q: torch.full((3,), 4.0, dtype=torch.float64)})
    # lr * g / (c + eps + |h|), c = |h| at the first step
    np.testing.assert_allclose(p.detach().numpy(), 1 - 0.1 / (2.0 + 0.001))
    np.testing.assert_allclose(q.detach().numpy(), 1 - 0.1 / (8.0 + 0.001))


# --------------------------------------------------------------------------- step() errors
@pytest.mark.parametrize("path", ["for-loop", "foreach", "fused C++"])
def test_a_missing_input_is_a_clear_error(cls, path, runtime):
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(3)]
    for p in params:
        p.grad = torch.ones(2, dtype=torch.float64)
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], **_kwargs(path))
    with pytest.raises(ValueError, match=r"input `hessian` for parameter 0 \(shape \(2,\)\).*got NoneType"):
        opt.step()
    with pytest.raises(ValueError, match=r"input `hessian` for parameter 2 .*got NoneType"):
        opt.step(hessian={p: torch.ones(2, dtype=torch.float64) for p in params[:2]})
    with pytest.raises(ValueError, match=r"parameter 1 .*got shape \(3,\)"):
        opt.step(hessian={p: torch.ones(3 if p is params[1] else 2, dtype=torch.float64) for p in params})
    with pytest.raises(TypeError, match=r"input `hessian`: expected a dict"):
        opt.step(hessian=[torch.ones(2, dtype=torch.float64)] * 3)
    assert all(torch.equal(p.detach(), torch.zeros(2, dtype=torch.float64)) for p in params)
    params[2].grad = None  # a parameter without a gradient needs no input
    opt.step(hessian={p: torch.ones(2, dtype=torch.float64) for p in params[:2]})
    assert not torch.equal(params[0].detach(), torch.zeros(2, dtype=torch.float64))


def test_step_documents_the_input(cls):
    doc = cls.step.__doc__
    assert "hessian (dict): a curvature estimate, one value per element of each parameter" in doc
    assert "a dict mapping each parameter that has a gradient" in " ".join(doc.split())


def test_the_reference_needs_every_input(spec):
    ref = Reference(spec, [{"params": [np.zeros(2)]}])
    with pytest.raises(ValueError, match="needs the input `hessian`"):
        ref.step([np.ones(2)])
    with pytest.raises(ValueError, match="input `hessian` is missing for parameter 0"):
        ref.step([np.ones(2)], hessian=[None])
    with pytest.raises(TypeError, match="unknown input"):
        ref.step([np.ones(2)], hessian=[np.ones(2)], curvature=[np.ones(2)])


# --------------------------------------------------------------------------- spec errors
def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        loads(text, "s.yaml")
    return info.value


def test_assigning_an_input_is_a_located_error():
    err = _error(NEWTON.replace("  curvature = beta", "  hessian = 2 * hessian\n  curvature = beta"))
    assert (err.loc.line, err.loc.col) == (13, 3)
    assert "`hessian` is an input of step() and cannot be assigned" in err.message


@pytest.mark.parametrize(
    "declaration, line, message",
    [
        ("  lr: {tex: 'h'}", 5, "duplicate name `lr`: already declared at line 8"),
        ("  grad: {}", 5, "bad input name: 'grad' shadows the built-in input `grad`"),
        ("  closure: {}", 5, "bad input name: 'closure' is reserved for generated code"),
    ],
)
def test_input_name_collisions_are_located(declaration, line, message):
    err = _error(NEWTON.replace("inputs:\n", f"inputs:\n{declaration}\n"))
    assert f"s.yaml:{line}:3: {message}" in str(err), str(err)


def test_a_state_named_like_an_input_is_located():
    err = _error(NEWTON.replace("state:\n", "state:\n  hessian: {init: 0}\n"))
    assert (err.loc.line, err.loc.col) == (11, 3)
    assert "duplicate name `hessian`: already declared at line 5" in err.message


def test_an_input_takes_its_tex_in_its_declaration():
    err = _error(NEWTON + "tex:\n  hessian: 'H'\n")
    assert err.loc.line == 16 and "`hessian` is an input: give its tex in its declaration" in err.message


def test_input_keys_and_budget():
    err = _error(NEWTON.replace("tex: 'h', doc:", "tex: 'h', scope: element, doc:"))
    assert err.loc.line == 5 and "unknown key 'scope' in input `hessian`" in err.message
    many = "".join(f"  h{i}: {{}}\n" for i in range(9))
    err = _error(NEWTON.replace("inputs:\n", "inputs:\n" + many))
    assert err.loc.line == 13 and "too many inputs: at most 8" in err.message


def test_cli_reports_a_collision_with_exit_status_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(NEWTON.replace("state:\n", "state:\n  hessian: {init: 0}\n"))
    result = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "check", str(path)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert f"{path}:11:3: duplicate name `hessian`: already declared at line 5" in out
    assert "unknown name" not in out  # no cascade from the clash


def test_check_runs_every_stage_and_passes(spec):
    report = optgen.check(spec)
    assert report.ok, str(report)
    from optgen.lower import lower
    from optgen.show import show

    assert "inputs: param, grad, hessian, step;" in show(lower(spec))


# --------------------------------------------------------------------------- LaTeX, prover
def test_latex_prints_the_input_with_its_symbol(spec):
    tex = optgen.latex(spec)
    assert r"h_{t} \text{ (hessian, given to step)}" in tex  # the box's input line
    assert r"c_{0} \leftarrow \left|{h_{1}}\right|" in tex  # the state's init
    assert r"\left(1 - \beta\right) \left|{h_{t}}\right|" in tex
    assert "hessian}" not in tex.replace(r"(hessian, given to step)}", "")


def test_the_prover_refuses_a_spec_with_inputs():
    text = NEWTON + "claims:\n  - invariant: curvature >= 0\n"
    from optgen.prover import prove_spec_claims

    with pytest.raises(SpecError) as info:
        prove_spec_claims(loads(text, "s.yaml"))
    assert (info.value.loc.line, info.value.loc.col) == (5, 3)
    assert "the prover does not reason about inputs beyond grad" in info.value.message


# --------------------------------------------------------------------------- reductions, options
# An input under per-tensor reductions (a kernel pass that only reduces, then the update)
# and an option; the input has no tex (LaTeX takes its default symbol).
MASKED = textwrap.dedent(
    """\
    name: Masked
    summary: Momentum on a masked gradient, normalised by the mask's norm.
    parity: independent
    inputs:
      mask: {}
    hyperparameters:
      lr: {default: 0.05, range: '(0, inf)'}
      beta: {default: 0.9, range: '[0, 1)'}
      eps: {default: 0.001, range: '(0, inf)'}
    options:
      centered: false
    state:
      exp_avg: {init: 0}
    update: |
      if centered:
          g = grad - mean(mask * grad)
      else:
          g = grad
      exp_avg = beta * exp_avg + (1 - beta) * g * mask
      param = param - lr * exp_avg / (norm(mask) + eps)
    """
)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_an_input_under_reductions_matches_the_reference(path, centered, runtime):
    spec = loads(MASKED, "masked.yaml")
    cls = optgen.compile(spec)
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, generator=gen)) for s in SHAPES]
    opt = cls(params, centered=centered, **_kwargs(path))
    ref = Reference(spec, [{"params": [p.detach().numpy().copy() for p in params], "centered": centered}])
    for _ in range(3):
        grads = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        masks = [(torch.rand(s, generator=gen) > 0.3).double() for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step(mask=dict(zip(params, masks)))
        ref.step([g.numpy() for g in grads], mask=[m.numpy() for m in masks])
    tol = 2e-6 if path == "fused Triton" else 1e-13
    for p, r in zip(params, ref.params):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=tol, atol=tol)


# a global reduction of an input (global_norm(hessian)) runs since issue 10 item 3: see
# tests/test_scalars.py::test_a_global_norm_of_an_input_matches_the_reference


@pytest.mark.parametrize("path", PATHS)
def test_a_strided_or_expanded_input_is_read_not_written(cls, path, runtime):
    """An input may be any tensor of the parameter's shape (a transposed view, a number
    expanded to it, another dtype); every path reads it as the for-loop does, and the
    caller's tensor is left as it was."""
    gen = torch.Generator().manual_seed(2)
    start = [torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(2)]
    grads = [torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(2)]
    inputs = [torch.randn(3, 4, generator=gen).t(), torch.tensor(0.5).expand(4, 3)]  # float32
    kept = [h.clone() for h in inputs]
    sides = []
    for kwargs in (_kwargs(path), {"foreach": False}):
        params = [torch.nn.Parameter(x.clone()) for x in start]
        opt = cls(params, **kwargs)
        for _ in range(2):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step(hessian=dict(zip(params, inputs)))
        sides.append(params)
    tol = 2e-6 if path == "fused Triton" else 1e-13
    for a, b in zip(*sides):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=tol, atol=tol)
    assert all(torch.equal(h, k) for h, k in zip(inputs, kept))
