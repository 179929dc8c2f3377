"""The fused C++ kernels of every catalog spec against the float64 Reference interpreter:
every option setting in float64 and float32, low-precision params and state, awkward sizes
(empty, one element, block boundaries), many small tensors, maximize, tensors at different
steps, reductions (Lamb, SETAdam) and a global norm (Adan, Lamb pre_norm) over groups."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpp_harness import Harness, _cpu_kernels, needs_compiler, option_settings, run, state_of  # noqa: F401

import optgen
from optgen import catalog
from optgen.backends.cpp import config, runtime
from optgen.backends.fused_matrix import is_matrix_spec
from optgen.fused_support import fused_refusal
from optgen.shapes import axis_constructs

pytestmark = needs_compiler

SHAPES = [(3, 5), (7,), (1,)]
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
def test_every_spec_and_option_float64(case):
    """float64 params and state compute in double: within 1e-12 of the reference after 10
    steps with lr changing every step."""
    name, options = case
    h = run(name, SHAPES, steps=10, options=options, dtype=torch.float64, state_dtype=torch.float64)
    h.assert_close(rtol=1e-12)


@pytest.mark.parametrize("name", FUSED)
def test_every_spec_float32(name):
    """float32 (float arithmetic) within 1e-5 of the float64 reference after 20 steps."""
    h = run(name, SHAPES, steps=20)
    h.assert_close()


@pytest.mark.parametrize("name", ["adam", "setadam", "lamb", "adan"])
def test_awkward_sizes(name):
    """Empty, 1, 7 elements, a block and one more, several blocks: partial blocks, block
    boundaries and per-tensor reductions combined over blocks."""
    b = config.BLOCK_SIZE
    empty = [] if name == "setadam" else [(0,)]  # the reference's amin has no value for an empty tensor
    h = run(name, [*empty, (1,), (7,), (b + 1,), (3 * b - 5,)], steps=2)
    h.assert_close()


def test_empty_tensor_with_a_min_reduction():
    """SETAdam's amin over an empty tensor: the kernel runs, nothing is touched."""
    p, g = torch.zeros(0), torch.zeros(0)
    states = {"exp_avg": [torch.zeros(0)], "exp_avg_sq": [torch.zeros(0)]}
    hyper = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "tau": 0.5}
    runtime.fused_step("setadam", params=[p, torch.ones(3)], grads=[g, torch.ones(3)],
                       states={k: v + [torch.zeros(3)] for k, v in states.items()}, steps=[1, 1],
                       hyper=hyper, options={}, global_values={}, maximize=False)  # fmt: skip
    assert p.numel() == 0


def test_many_small_tensors():
    h = run("setadam", [(1 + i % 5,) for i in range(300)], steps=2)
    h.assert_close()


@pytest.mark.parametrize("name", ["adam", "lion", "lamb"])
def test_maximize(name):
    h = run(name, SHAPES, steps=3, maximize=True)
    h.assert_close()


def test_tensors_at_different_steps():
    """A parameter without a gradient skips a step: each tensor's host row uses its step."""
    h = Harness("adam", [{"shapes": SHAPES}])
    for t in range(1, 6):
        h.step(t, present=lambda gi, i, t=t: not (i == 1 and t % 2 == 0))
    h.assert_close()


def test_param_groups_share_the_global_norm():
    """Adan with max_grad_norm: the gradient norm is over both groups (fused_global sums)."""
    h = Harness("adan", [{"shapes": [(4, 3), (2,)]}, {"shapes": [(6,)], "lr": 3e-3, "weight_decay": 0.0}])
    for t in range(1, 4):
        h.step(t)
    h.assert_close()


def test_lamb_pre_norm_over_groups():
    h = Harness("lamb", [{"shapes": [(4, 3)]}, {"shapes": [(5,), (1,)], "lr": 2e-3}], options={"pre_norm": True})
    for t in range(1, 4):
        h.step(t)
    h.assert_close()


def test_fused_global_matches_torch():
    g = [torch.randn(40000), torch.randn(3, 3), torch.zeros(0)]
    spec = optgen.load("adan")
    hyper = {n: h.default[i] for n, (h, i) in spec.scalar_hypers.items()}
    sums = runtime.fused_global("adan", params=[torch.zeros_like(x) for x in g], grads=g,
                                hyper=hyper, options={}, maximize=False)  # fmt: skip
    ((_, value),) = sums.items()
    expected = sum(float((x.double() ** 2).sum()) for x in g)
    assert abs(float(value) - expected) <= 1e-6 * expected


def test_non_contiguous_param_and_state():
    """A transposed param is updated through a contiguous copy written back."""
    h = Harness("adamw", [{"shapes": [(4, 6)]}])
    side = h.sides[0]
    side.params[0] = side.params[0].t().contiguous().t()
    assert not side.params[0].is_contiguous()
    for t in range(1, 4):
        h.step(t)
    h.assert_close()


# --------------------------------------------------------------------------- dtypes
def _ulps(actual: torch.Tensor, expected: np.ndarray) -> float:
    exp = torch.tensor(expected, dtype=torch.float64)
    spacing = torch.finfo(actual.dtype).eps * exp.abs().clamp_min(torch.finfo(actual.dtype).tiny)
    return float(((actual.double() - exp).abs() / spacing).max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["adam", "lamb", "sgd"])
def test_low_precision_params_with_float32_state(name, dtype):
    """One step from identical values: float32 state as the reference, and the param within
    half a unit (round to nearest) plus float32 noise of the float64 result."""
    h = run(name, SHAPES, steps=1, dtype=dtype)
    errors = h.errors()
    assert all(v < 1e-5 for k, v in errors.items() if k != "param"), errors
    for k, p in enumerate(h.sides[0].params):
        assert p.dtype == dtype
        assert _ulps(p, h.ref.params[k]) <= 0.51


def test_bf16_params_track_the_reference_over_steps():
    h = Harness("adamw", [{"shapes": SHAPES}], dtype=torch.bfloat16)
    for t in range(1, 11):
        for k, p in enumerate(h.sides[0].params):
            h.ref.params[k][...] = p.double().numpy()
        h.step(t)
        for k, p in enumerate(h.sides[0].params):
            assert _ulps(p, h.ref.params[k]) <= 0.51
    assert all(v < 1e-5 for k, v in h.errors().items() if k != "param")


def test_bf16_state():
    h = run("adam", SHAPES, steps=1, state_dtype=torch.bfloat16)
    for name, tensors in h.sides[0].states.items():
        for k, t in enumerate(tensors):
            assert t.dtype == torch.bfloat16
            assert _ulps(t, np.asarray(state_of(h, name, k))) <= 0.51
    assert h.errors()["param"] < 1e-5


def test_bf16_rounding_is_to_nearest_even_and_keeps_nan():
    """The kernel's bf16 store rounds as torch.s .to(torch.bfloat16), NaN included."""
    values = torch.tensor([1.0, 1.00390625, 1.01171875, -2.5e-3, 3.0e38, float("nan"), 0.0, -0.0])
    values = torch.cat([values, torch.randn(1000)])
    param = values.to(torch.bfloat16)
    out = param.clone()
    # SGD with lr=0 writes param + 0 * grad back: exactly the bf16 round trip of float(param)
    runtime.fused_step("sgd", params=[out], grads=[torch.zeros_like(out)],
                       states={"momentum_buffer": [torch.zeros_like(out)]}, steps=[1],
                       hyper={"lr": 0.0, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0},
                       options={}, global_values={}, maximize=False)  # fmt: skip
    assert torch.equal(out.isnan(), param.isnan())
    keep = ~param.isnan()
    assert torch.equal(out[keep], param[keep])
    # and a float32 state rounded on store: exp_avg_sq in bf16 vs torch's rounding of the fp32 value
    grads = torch.randn(4097)
    states = {
        "exp_avg": [torch.zeros(4097, dtype=torch.bfloat16)],
        "exp_avg_sq": [torch.zeros(4097, dtype=torch.bfloat16)],
    }
    hyper = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    runtime.fused_step("adam", params=[torch.zeros(4097)], grads=[grads], states=states, steps=[1], hyper=hyper,
                       options={}, global_values={}, maximize=False)  # fmt: skip
    expected = (grads * grads * torch.tensor(1 - 0.999, dtype=torch.float32)).to(torch.bfloat16)
    assert torch.equal(states["exp_avg_sq"][0], expected)


def test_mixed_dtypes_are_grouped():
    """fp32 and bf16 params in one call: two groups, each as if run alone."""
    rng = np.random.default_rng(1)
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    params = [torch.tensor(rng.standard_normal(5), dtype=d) for d in dtypes]
    grads = [torch.tensor(rng.standard_normal(5), dtype=d) for d in dtypes]
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def step(ps, gs):
        states = {"exp_avg": [torch.zeros(5) for _ in ps], "exp_avg_sq": [torch.zeros(5) for _ in ps]}
        runtime.fused_step("adam", params=ps, grads=gs, states=states, steps=[1] * len(ps), hyper=hyper,
                           options={}, global_values={}, maximize=False)  # fmt: skip
        return states

    together = [p.clone() for p in params]
    states = step(together, grads)
    for dtype in (torch.float32, torch.bfloat16):
        idx = [i for i, d in enumerate(dtypes) if d == dtype]
        alone = [params[i].clone() for i in idx]
        alone_states = step(alone, [grads[i] for i in idx])
        for j, i in enumerate(idx):
            assert torch.equal(alone[j], together[i])
            assert torch.equal(alone_states["exp_avg_sq"][j], states["exp_avg_sq"][i])
    assert not torch.equal(together[0], params[0])


# --------------------------------------------------------------------------- errors
def test_empty_group_is_a_no_op():
    runtime.fused_step("adam", params=[], grads=[], states={"exp_avg": [], "exp_avg_sq": []}, steps=[],
                       hyper={}, options={}, global_values={}, maximize=False)  # fmt: skip


def test_missing_state_is_named():
    with pytest.raises(KeyError, match="exp_avg_sq"):
        runtime.fused_step("adam", params=[torch.zeros(3)], grads=[torch.zeros(3)],
                           states={"exp_avg": [torch.zeros(3)]}, steps=[1],
                           hyper={"lr": 1.0, "beta1": 0.9, "beta2": 0.9, "eps": 1e-8, "weight_decay": 0.0},
                           options={}, global_values={}, maximize=False)  # fmt: skip


def test_wrong_lengths_and_devices_are_named():
    with pytest.raises(ValueError, match="grads"):
        runtime.fused_step("sgd", params=[torch.zeros(3)], grads=[], states={}, steps=[1], hyper={},
                           options={}, global_values={}, maximize=False)  # fmt: skip
    with pytest.raises(TypeError, match="int64"):
        runtime.fused_step("sgd", params=[torch.zeros(3, dtype=torch.int64)], grads=[torch.zeros(3, dtype=torch.int64)],
                           states={}, steps=[1], hyper={}, options={}, global_values={}, maximize=False)  # fmt: skip


def test_a_spec_name_the_kernel_uses_is_a_compile_error():
    from optgen.backends.cpp.kernels import build
    from optgen.errors import CompileError

    text = (catalog.specs_dir() / "sgd.yaml").read_text().replace("momentum_buffer", "double")
    spec = optgen.load(text)
    with pytest.raises(CompileError, match="double"):
        build(spec, spec.default_options())
