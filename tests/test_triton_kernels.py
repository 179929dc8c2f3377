"""The fused Triton kernels of every catalog spec against the float64 Reference interpreter:
every option setting, awkward sizes, empty and many-tensor groups, low-precision dtypes,
maximize, tensors at different steps, and several param groups sharing a global norm.

Runs under the Triton interpreter on CPU tensors without CUDA (see test_triton_harness.py),
compiled on the GPU with it. The interpreter is slow (a few ms per program), so sizes stay
small except in the few awkward-size cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_triton_harness import DEVICE, Harness, option_settings, run

import optgen
from optgen import catalog
from optgen.backends.fused_matrix import is_matrix_spec
from optgen.backends.triton import runtime
from optgen.errors import CompileError
from optgen.fused_support import fused_refusal
from optgen.shapes import axis_constructs

SHAPES = [(3, 5), (7,), (1,)]
STEPS = 20
# the specs this harness runs fused (the others refuse fused=True, or are tested elsewhere:
# matrix specs run fused in stages (kernels and torch between them): tests/test_fused_matrix.py;
# specs with axis reductions, reduced states or rank rules: tests/test_fused_axes.py (this
# harness keeps every state shaped like its param)
FUSED = [
    name
    for name in catalog.names()
    if not fused_refusal(spec := optgen.load(name)) and not is_matrix_spec(spec) and not axis_constructs(spec)
]
CASES = [(name, options) for name in FUSED for options in option_settings(optgen.load(name))]


def _id(case) -> str:
    name, options = case
    flipped = [k for k, v in options.items() if v != optgen.load(name).options[k].default]
    return name + ("[" + ",".join(flipped) + "]" if flipped else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_spec_and_option_matches_reference(case):
    """float32 within 1e-5 of the float64 reference after 20 steps, lr changing every step."""
    name, options = case
    h = run(name, SHAPES, steps=STEPS, options=options)
    h.assert_close()


@pytest.mark.parametrize("name", ["adam", "setadam", "lamb", "nadam"])
def test_awkward_sizes(name):
    """1, 7, 1025 and 65537 elements: partial blocks, a block boundary, many blocks."""
    h = run(name, [(1,), (7,), (1025,), (65537,)], steps=2)
    h.assert_close()


def test_many_tiny_tensors():
    h = run("setadam", [(1 + i % 5,) for i in range(60)], steps=2)
    h.assert_close()


def test_empty_group_is_a_no_op():
    runtime.fused_step(
        "adam",
        params=[],
        grads=[],
        states={},
        steps=[],
        hyper={"lr": 1e-3},
        options={},
        global_values={},
        maximize=False,
    )
    assert runtime.fused_global("adan", params=[], grads=[], hyper={}, options={}, maximize=False) == {}


def test_empty_tensor_in_a_group():
    """A 0-element tensor is skipped, but its per-tensor state (NAdam's mu_product) still steps."""
    h = run("nadam", [(0,), (5,)], steps=3)
    h.assert_close()
    assert abs(float(h.sides[0].states["mu_product"][0]) - h.ref.state[0]["mu_product"]) < 1e-6


@pytest.mark.parametrize("name", ["adam", "lion", "adan", "lamb"])
def test_maximize(name):
    options = {"pre_norm": True} if name == "lamb" else {}
    h = run(name, SHAPES, steps=5, maximize=True, options=options)
    h.assert_close()


def test_tensors_at_different_steps():
    """Parameters without a gradient are left out of a step, so tensors of one launch are at
    different steps: bias corrections come from each tensor's own row of the step table."""
    h = Harness("adam", [{"shapes": SHAPES}])
    for t in range(1, 8):
        h.step(t, present=lambda gi, i, t=t: (t + i) % (i + 1) == 0)
    assert len(set(h.sides[0].steps)) == 3
    h.assert_close()


def test_param_groups_share_the_global_norm():
    """Adan's gradient clipping: the norm runs over every group (each with its own lr and
    weight decay), summed from each group's fused_global."""
    h = Harness("adan", [{"shapes": [(4, 3), (2,)]}, {"shapes": [(6,)], "lr": 3e-3, "weight_decay": 0.0}])
    for t in range(1, 6):
        h.step(t)
    h.assert_close()


def test_lamb_pre_norm_over_groups():
    h = Harness("lamb", [{"shapes": [(4, 3)]}, {"shapes": [(5,), (1,)], "lr": 2e-3}], options={"pre_norm": True})
    for t in range(1, 6):
        h.step(t)
    h.assert_close()


def test_zero_param_takes_the_norm_zero_branch():
    """LAMB and LARS use trust ratio 1 where a norm is 0 (a zero-initialised tensor)."""
    for name in ("lamb", "lars"):
        h = Harness(name, [{"shapes": [(3, 4), (2, 2)]}])
        h.sides[0].params[1].zero_()
        h.ref.params[1][...] = 0.0
        for t in range(1, 4):
            h.step(t)
        h.assert_close()


def test_non_contiguous_param():
    """A transposed parameter is updated through a contiguous copy written back."""
    h = Harness("adamw", [{"shapes": [(4, 6)]}])
    side = h.sides[0]
    transposed = side.params[0].t().contiguous().t()  # same values, column-major
    assert not transposed.is_contiguous()
    side.params[0] = transposed
    for t in range(1, 4):
        h.step(t)
    h.assert_close()


# --------------------------------------------------------------------------- dtypes
def _rounding_ulps(actual: torch.Tensor, expected: np.ndarray) -> float:
    """Distance in units of the dtype's spacing at each expected value."""
    exp = torch.tensor(expected, dtype=torch.float64)
    spacing = torch.finfo(actual.dtype).eps * exp.abs().clamp_min(torch.finfo(actual.dtype).tiny)
    return float(((actual.double().cpu() - exp).abs() / spacing).max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["adam", "lamb", "nadam"])
def test_low_precision_params_with_float32_state(name, dtype):
    """One step from identical values: float32 state as the reference, and the param within
    one unit of its dtype's rounding of the float64 result (the interpreter truncates bf16;
    a GPU rounds to nearest)."""
    h = run(name, SHAPES, steps=1, dtype=dtype)
    errors = h.errors()
    assert all(v < 1e-5 for k, v in errors.items() if k != "param"), errors
    for side in h.sides:
        for i, p in enumerate(side.params):
            assert p.dtype == dtype
            assert _rounding_ulps(p, h.ref.params[i]) <= 1.0


def test_bf16_params_track_the_reference_over_steps():
    """20 steps with bf16 params: the reference is stepped from the same rounded params each
    step, so the comparison measures one update at a time, not accumulated rounding."""
    h = Harness("adamw", [{"shapes": SHAPES}], dtype=torch.bfloat16)
    for t in range(1, 21):
        for k, p in enumerate(h.sides[0].params):
            h.ref.params[k][...] = p.double().cpu().numpy()
        h.step(t)
        for k, p in enumerate(h.sides[0].params):
            assert _rounding_ulps(p, h.ref.params[k]) <= 1.0
    errors = h.errors()
    assert all(v < 1e-5 for k, v in errors.items() if k != "param"), errors


def test_bf16_state_option():
    """State kept in bf16 (the memory-saving option): arithmetic stays float32, each stored
    state is within a bf16 unit of the reference's."""
    h = run("adam", SHAPES, steps=1, state_dtype=torch.bfloat16)
    for name, tensors in h.sides[0].states.items():
        for k, t in enumerate(tensors):
            assert t.dtype == torch.bfloat16
            assert (
                _rounding_ulps(
                    t, np.asarray(h.ref.state[k][h.program.states[[s.name for s in h.program.states].index(name)].key])
                )
                <= 1.0
            )
    assert h.errors()["param"] < 1e-5


def test_mixed_dtypes_are_grouped():
    """fp32 and bf16 params in one call: two groups, each as if run alone."""
    spec = optgen.load("adam")
    rng = np.random.default_rng(1)
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    params = [torch.tensor(rng.standard_normal(5), dtype=d, device=DEVICE) for d in dtypes]
    grads = [torch.tensor(rng.standard_normal(5), dtype=d, device=DEVICE) for d in dtypes]
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def fresh_states(ps):
        return {
            "exp_avg": [torch.zeros(5, device=DEVICE) for _ in ps],
            "exp_avg_sq": [torch.zeros(5, device=DEVICE) for _ in ps],
        }

    together, states = [p.clone() for p in params], fresh_states(params)
    runtime.fused_step(
        "adam",
        params=together,
        grads=grads,
        states=states,
        steps=[1] * 4,
        hyper=hyper,
        options={},
        global_values={},
        maximize=False,
    )
    for dtype in (torch.float32, torch.bfloat16):
        idx = [i for i, d in enumerate(dtypes) if d == dtype]
        alone, alone_states = [params[i].clone() for i in idx], fresh_states(idx)
        runtime.fused_step(
            "adam",
            params=alone,
            grads=[grads[i] for i in idx],
            states=alone_states,
            steps=[1] * len(idx),
            hyper=hyper,
            options={},
            global_values={},
            maximize=False,
        )
        for j, i in enumerate(idx):
            assert torch.equal(alone[j], together[i])
            assert torch.equal(alone_states["exp_avg_sq"][j], states["exp_avg_sq"][i])
    assert not torch.equal(together[0], params[0])
    del spec


# --------------------------------------------------------------------------- registration and errors
def test_register_a_user_spec(tmp_path, monkeypatch):
    """optgen.compile'd specs: rendered in memory, cached as a file, imported by key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = (catalog.specs_dir() / "lion.yaml").read_text().replace("name: Lion", "name: MyLion")
    spec = optgen.load(text)
    key = runtime.register(spec)
    assert (tmp_path / "optgen" / f"{key}.py").is_file()
    p = torch.ones(4, device=DEVICE)
    g = torch.full((4,), 2.0, device=DEVICE)
    m = torch.zeros(4, device=DEVICE)
    hyper = {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    runtime.fused_step(
        key,
        params=[p],
        grads=[g],
        states={"exp_avg": [m]},
        steps=[1],
        hyper=hyper,
        options={},
        global_values={},
        maximize=False,
    )
    assert torch.allclose(p, torch.full((4,), 0.9, device=DEVICE))  # p - lr * sign(...)
    assert torch.allclose(m, torch.full((4,), 0.02, device=DEVICE))  # (1 - beta2) * g


def test_unknown_key():
    with pytest.raises(KeyError, match="optgen build"):
        runtime.load("no_such_optimizer")


def test_paper_forms_are_not_compiled():
    from optgen.backends.triton import render

    forms = sorted((catalog.specs_dir() / "forms").glob("*.yaml"))
    with_gradient_at = [p for p in forms if optgen.load(p).gradient_at is not None]
    if not with_gradient_at:
        pytest.skip("no spec with gradient_at in specs/forms/")
    with pytest.raises(CompileError, match="gradient"):
        render(optgen.load(with_gradient_at[0]))


def test_interpreter_needs_cpu_tensors():
    if not runtime.interpreting():
        pytest.skip("only meaningful under TRITON_INTERPRET=1")
    p = torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        runtime.fused_step(
            "sgd",
            params=[p],
            grads=[p],
            states={"momentum_buffer": [p]},
            steps=[1],
            hyper={},
            options={},
            global_values={},
            maximize=False,
        )


def test_global_value_left_out_when_unused():
    """Adan without clipping (max_grad_norm = 0): the caller leaves the gradient norm out, and
    the update matches the reference; asked for with clipping on, the missing norm is NaN and
    poisons the params rather than silently not clipping."""
    h = Harness("adan", [{"shapes": SHAPES, "max_grad_norm": 0.0}])
    real_global = runtime.fused_global
    try:
        runtime.fused_global = lambda *a, **k: {}
        for t in range(1, 4):
            h.step(t)
        h.assert_close()
        h = Harness("adan", [{"shapes": SHAPES}])
        h.step(1)
    finally:
        runtime.fused_global = real_global
    assert all(torch.isnan(p).all() for p in h.sides[0].params)


def test_spec_name_the_kernel_uses_is_renamed_in_the_kernel():
    from optgen.backends.triton import render

    text = (catalog.specs_dir() / "sgd.yaml").read_text()
    text = text.replace("param = param - lr * grad", "tensor = lr * grad\n  param = param - tensor")
    if "tensor = lr * grad" not in text:
        pytest.skip("sgd.yaml's last line changed")
    (module,) = render(optgen.load(text)).values()
    # the kernel's own `tensor` (the tensor of this program) stays; the spec's value is tensor_
    assert "tensor = tl.load(block_tensors + pid)" in module
    assert "tensor_ = " in module and "param = param - tensor_" in module


def test_missing_state_is_named():
    p = torch.zeros(4, device=DEVICE)
    hyper = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    states = {"exp_avg": [p.clone()], "exp_avg_sq": [p.clone()]}
    with pytest.raises(KeyError, match="max_exp_avg_sq"):
        runtime.fused_step(
            "adam",
            params=[p],
            grads=[p],
            states=states,
            steps=[1],
            hyper=hyper,
            options={"amsgrad": True},
            global_values={},
            maximize=False,
        )
