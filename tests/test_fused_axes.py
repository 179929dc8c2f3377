"""The fused C++ kernels on axis reductions, reduced-shape states, rank rules and
rows/cols (optgen/backends/fused_axes.py, optgen/backends/cpp/axes.py): Adafactor against
torch.optim.Adafactor and the float64 Reference interpreter (float64 and float32, every
rank, tensors spanning many kernel blocks, several threads, options), and small specs that
use the constructs in other ways (amax/amin/sum/norm over -1 and -2, a sum over a reduced
state, rank rules splitting 0-d, 1-D and N-D)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from cpp_harness import needs_compiler

import optgen
from optgen.backends import fused_axes
from optgen.backends.cpp import config as cpp_config
from optgen.backends.cpp import runtime as cpp_runtime
from optgen.lower import lower
from optgen.parse import loads
from optgen.reference import Reference

pytestmark = needs_compiler

# 0-d, 1-D, 2-D wide and tall, 3-D and 4-D, a 1x1 and a 1-row matrix
SHAPES = [(), (7,), (3, 11), (13, 2), (2, 3, 5), (2, 2, 3, 2), (1, 1), (1, 6)]
# a matrix of several kernel blocks whose rows and columns cross block boundaries
BIG = (cpp_config.BLOCK_SIZE // 96 + 3, 97)


@pytest.fixture(autouse=True)
def _cpu_kernels(monkeypatch):
    """fused=True on CPU tensors runs the C++ kernels (the suite sets TRITON_INTERPRET=1)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def adafactor():
    return optgen.compile(optgen.load("adafactor"))


def _tensors(shapes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


def _compare_with_torch(adafactor, shapes, dtype, rtol, atol, steps=5, **kw):
    init = _tensors(shapes, dtype, 1)
    grads = [_tensors(shapes, dtype, 10 + k) for k in range(steps)]
    mine = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    opt = adafactor(mine, fused=True, **kw)
    ref = torch.optim.Adafactor(theirs, foreach=False, **kw)
    _run(opt, mine, grads)
    _run(ref, theirs, grads)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)
        assert opt.state[a].keys() == ref.state[b].keys()
        for key in ref.state[b]:
            torch.testing.assert_close(opt.state[a][key], ref.state[b][key], rtol=rtol, atol=atol, check_dtype=False)
    return opt, mine


# --------------------------------------------------------------------------- Adafactor
@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-11, 1e-14), (torch.float32, 2e-5, 2e-6)])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.3, "beta2_decay": -0.5, "d": 1.5, "maximize": True},
        {"lr": 1e-3, "eps": (1e-3, 1e-2)},
    ],
)
def test_adafactor_fused_matches_torch(adafactor, dtype, rtol, atol, kw):
    """Every rank in one param group (a kernel per rank class), params and every state."""
    calls = []
    real = cpp_runtime.fused_step
    try:
        cpp_runtime.fused_step = lambda *a, **k: calls.append(a) or real(*a, **k)
        _compare_with_torch(adafactor, SHAPES, dtype, rtol, atol, **kw)
    finally:
        cpp_runtime.fused_step = real
    assert len(calls) == 5  # the C++ runtime ran every step


@pytest.mark.parametrize("threads", [1, 2])
def test_adafactor_fused_on_tensors_of_many_blocks(adafactor, threads):
    """Rows and columns split across kernel blocks (and threads): the axis sums combine
    every block's run, and reduced states are written only after every block read them."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _compare_with_torch(adafactor, [BIG, (BIG[1], BIG[0]), (3, 2)], torch.float64, 1e-11, 1e-14, steps=3)
    finally:
        torch.set_num_threads(old)


def test_adafactor_fused_matches_the_reference(adafactor):
    """The float64 Reference interpreter (not torch) as the oracle, eps1 given."""
    init = [p.numpy() for p in _tensors(SHAPES, torch.float64, 2)]
    grads = [[g.numpy() for g in _tensors(SHAPES, torch.float64, 20 + k)] for k in range(4)]
    kw = {"lr": 0.05, "eps": (1e-20, 1e-3), "weight_decay": 0.01}
    ref = Reference(optgen.load("adafactor"), [{"params": [p.copy() for p in init], **kw}])
    for step in grads:
        ref.step(step)
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = adafactor(params, fused=True, **kw)
    _run(opt, params, [[torch.tensor(g) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-11, atol=1e-14, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                np.testing.assert_allclose(opt.state[p][key].numpy(), value, rtol=1e-11, atol=1e-14)


def test_adafactor_fused_state_dict_round_trip_with_the_for_loop(adafactor):
    """Three fused steps, the state_dict into a for-loop optimizer, three more: the same as six
    for-loop steps (the fused states are torch's: row_var (.., rows, 1), col_var (.., 1, cols))."""
    init = _tensors(SHAPES, torch.float64, 3)
    grads = [_tensors(SHAPES, torch.float64, 30 + k) for k in range(6)]
    whole = [p.clone().requires_grad_() for p in init]
    _run(adafactor(whole, lr=0.05, foreach=False), whole, grads)
    first = [p.clone().requires_grad_() for p in init]
    fused = adafactor(first, lr=0.05, fused=True)
    _run(fused, first, grads[:3])
    second = [p.detach().clone().requires_grad_() for p in first]
    loop = adafactor(second, lr=0.05, foreach=False)
    loop.load_state_dict(fused.state_dict())
    _run(loop, second, grads[3:])
    for a, b in zip(second, whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_adafactor_kernels_per_rank_class():
    """One kernel for ndim <= 1 (a full variance) and one for ndim >= 2 (row and column
    vectors): the vector kernel never touches the factored states."""
    spec = optgen.load("adafactor")
    classes = fused_axes.spec_rank_classes(spec, {})
    assert classes == [frozenset({0, 1}), frozenset(range(2, 9))]
    vectors = fused_axes.prepare(lower(spec), classes[0])
    matrices = fused_axes.prepare(lower(spec), classes[1])
    assert [s.name for s in vectors.states] == ["variance"]
    assert [s.name for s in matrices.states] == ["row_var", "col_var"]
    axis = [(v.name, v.tag) for v in matrices.values if isinstance(v, fused_axes.AxisValue)]
    assert axis == [("sum_grad_sq_row", "row"), ("sum_grad_sq_col", "col"), ("sum_row_var_1_owned_mat", "mat")]
    assert matrices.num_phases == 4 and vectors.num_phases == 2


# --------------------------------------------------------------------------- synthetic specs
HEAD = """\
name: {name}
summary: a test spec
paper: none
parity: independent
hyperparameters:
  lr:   {{default: 0.1, range: '(0, inf)', tex: '\\gamma'}}
  beta: {{default: 0.9, range: '[0, 1)', tex: '\\beta'}}
  eps:  {{default: 0.001, range: '(0, inf)', tex: '\\epsilon'}}
"""

# amax/amin over each axis of a matrix, a column state reduced over -2 whose whole-tensor sum
# (one count per column) scales the step, and a sign step for 0-d tensors
COLUMN_SPREAD = HEAD.format(name="ColumnSpread") + textwrap.dedent(
    """\
    state:
      spread: {init: 1, shape: {reduce: [-2]}, ndim: ">= 2"}
      acc: {init: 0, ndim: "< 2"}
    update: |
      if ndim(param) >= 2:
          spread = beta * spread + (1 - beta) * (amax(grad, axis=-2) - amin(grad, axis=-2))
          row_peak = amax(abs(grad), axis=-1)
          u = grad / (spread + row_peak + eps) * sum(spread) / cols(param)
      elif ndim(param) == 1:
          acc = beta * acc + (1 - beta) * abs(grad)
          u = grad / (acc + amax(abs(grad), axis=-1) + eps)
      else:
          acc = acc + 1
          u = sign(grad) / acc
      param = param - lr * u
    """
)

# a rank rule whose matrices take the step of a matrix-wide norm and a per-row mean, whose
# vectors normalise by their own norm over -1, with no states at all
ROW_CENTRED = HEAD.format(name="RowCentred") + textwrap.dedent(
    """\
    update: |
      if ndim(param) >= 2:
          centred = grad - mean(grad, axis=-1)
          u = centred / (norm(centred, axis=(-2, -1)) / sqrt(rows(param) * cols(param)) + eps)
      elif ndim(param) >= 1:
          u = grad / (norm(grad, axis=-1) + eps) * sqrt(cols(param))
      else:
          u = grad
      param = param - lr * u
    """
)

# rows and cols in an elementwise update, no axis reduction and no rank rule
SIZED = HEAD.format(name="Sized") + textwrap.dedent(
    """\
    state:
      m: {init: 0}
    update: |
      m = beta * m + (1 - beta) * grad
      param = param - lr * m * rows(param) / (cols(param) + rows(param))
    """
)

SYNTHETIC = {"column_spread": COLUMN_SPREAD, "row_centred": ROW_CENTRED, "sized": SIZED}


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("maximize", [False, True])
def test_synthetic_specs_fused_match_the_reference(name, maximize):
    spec = loads(SYNTHETIC[name], f"{name}.yaml")
    report = optgen.check(spec)
    assert report.ok and not any("no fused path" in f.message for f in report.findings), report.findings
    rng = np.random.default_rng(5)
    shapes = [*SHAPES, BIG]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(4)]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05, "maximize": maximize}])
    for step in grads:
        ref.step(step)
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, maximize=maximize, fused=True)
    _run(opt, params, [[torch.tensor(g) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-10, atol=1e-13, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                np.testing.assert_allclose(opt.state[p][key].numpy(), value, rtol=1e-10, atol=1e-13, err_msg=key)


def test_synthetic_spec_fused_float32_matches_foreach():
    """float32 params: the kernels compute in float (sums in double) against foreach."""
    spec = loads(COLUMN_SPREAD, "c.yaml")
    cls = optgen.compile(spec)
    init = _tensors([*SHAPES, BIG], torch.float32, 4)
    grads = [_tensors([*SHAPES, BIG], torch.float32, 40 + k) for k in range(4)]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    _run(cls(a, lr=0.05, fused=True), a, grads)
    _run(cls(b, lr=0.05, foreach=True), b, grads)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=2e-5, atol=2e-6)


def test_adafactor_fused_on_empty_strided_and_bfloat16_state(adafactor):
    """An empty matrix (nothing to read or write), a transposed and a sliced 3-D param
    (updated through contiguous copies), and bfloat16 states (rounded on store)."""
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(4, 6, generator=gen).t(), torch.randn(2, 3, 4, generator=gen)[:, :, 1:], torch.randn(5)]
    for kw, tol in (({}, 1e-6), ({"state_dtype": torch.bfloat16}, 1e-4)):
        mine = [p.clone().requires_grad_() for p in base]  # clone keeps the strides
        mine = [p if k == 2 else p.mT.contiguous().mT.detach().requires_grad_() for k, p in enumerate(mine)]
        theirs = [p.detach().clone().requires_grad_() for p in mine]
        empty = torch.zeros(0, 5, requires_grad=True)
        opt = adafactor([*mine, empty], fused=True, **kw)
        ref = torch.optim.Adafactor(theirs, foreach=False)  # (it divides by an empty tensor's numel)
        assert not mine[0].is_contiguous() and not mine[1].is_contiguous()
        for step in range(3):
            grads = _tensors([p.shape for p in mine], torch.float32, 70 + step)
            _run(opt, [*mine, empty], [[*grads, torch.zeros(0, 5)]])
            _run(ref, theirs, [grads])
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
        assert empty.shape == (0, 5) and opt.state[empty]["row_var"].shape == (0, 1)


def test_rank_classes_of_a_three_way_rule():
    program = lower(loads(COLUMN_SPREAD, "c.yaml"))
    assert fused_axes.rank_classes(program) == [frozenset({0}), frozenset({1}), frozenset(range(2, 9))]


def test_reduced_state_of_a_wrong_shape_is_an_error(adafactor):
    p = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    opt = adafactor([p], fused=True)
    p.grad = torch.ones_like(p)
    opt.step()
    opt.state[p]["row_var"] = torch.zeros(1, 3, dtype=torch.float64)  # a column vector's shape
    with pytest.raises(ValueError, match=r"row_var: a tensor of shape \(1, 3\) for a param of shape \(4, 3\)"):
        opt.step()


# --------------------------------------------------------------------------- Triton (interpreter)
SMALL = [(), (5,), (3, 4), (4, 2), (2, 2, 3)]


@pytest.fixture
def triton_interpreter(monkeypatch):
    """fused=True on CPU tensors in Triton's interpreter (float32 arithmetic)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("kw", [{}, {"lr": 0.05, "weight_decay": 0.1, "maximize": True}])
def test_adafactor_triton_matches_torch(adafactor, triton_interpreter, kw):
    from optgen.backends.triton import runtime as triton_runtime

    calls = []
    real = triton_runtime.fused_step
    try:
        triton_runtime.fused_step = lambda *a, **k: calls.append(a) or real(*a, **k)
        _compare_with_torch(adafactor, SMALL, torch.float32, 2e-5, 2e-6, steps=3, **kw)
    finally:
        triton_runtime.fused_step = real
    assert len(calls) == 3  # the Triton runtime ran every step


@pytest.mark.parametrize("name", ["column_spread", "row_centred"])
def test_synthetic_specs_triton_match_the_reference(triton_interpreter, name):
    spec = loads(SYNTHETIC[name], f"{name}.yaml")
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(s) for s in SMALL]
    grads = [[rng.standard_normal(s) for s in SMALL] for _ in range(3)]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    for step in grads:
        ref.step(step)
    params = [torch.tensor(p, dtype=torch.float32, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, fused=True)
    _run(opt, params, [[torch.tensor(g, dtype=torch.float32) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=2e-5, atol=2e-6, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                np.testing.assert_allclose(opt.state[p][key].numpy(), value, rtol=2e-5, atol=2e-6, err_msg=key)


# --------------------------------------------------------------------------- views
# Reductions over other trailing axes run on a view of each tensor as (outer, rows, cols):
# over -3 with (-3, -2, -1) the view merges the last two axes into cols (rows: axis -3);
# over (-3, -2) with -1 it merges the two before the last into rows.
DEPTH = HEAD.format(name="Depth") + textwrap.dedent(
    """\
    state:
      depth: {init: 0, shape: {reduce: [-3]}, ndim: ">= 3"}
      fibre: {init: 0, shape: {reduce: [-3, -2, -1]}, ndim: ">= 3"}
    update: |
      if ndim(param) >= 3:
          depth = beta * depth + (1 - beta) * amax(abs(grad), axis=-3)
          fibre = fibre + sum(grad * grad, axis=(-3, -2, -1))
          u = grad / (depth + mean(abs(grad), axis=-3) + eps) / sqrt(fibre + 1)
      elif ndim(param) >= 1:
          u = grad / (amax(abs(grad), axis=-1) + eps)
      else:
          u = grad
      param = param - lr * u
    """
)
SLAB = HEAD.format(name="Slab") + textwrap.dedent(
    """\
    state:
      slab: {init: 0, shape: {reduce: [-3, -2]}, ndim: ">= 3"}
    update: |
      if ndim(param) >= 3:
          slab = beta * slab + (1 - beta) * mean(grad * grad, axis=(-3, -2))
          u = grad / (sqrt(slab) + amin(abs(grad), axis=-1) + eps)
      elif ndim(param) == 2:
          u = grad - mean(grad, axis=-1)
      else:
          u = grad
      param = param - lr * u
    """
)
# 3-D and 4-D tensors (a block's rows crossing kernel blocks), and the lower ranks
VIEW_SHAPES = [(3, 4, 5), (2, 3, 4, 5), (1, 1, 1), (4, 1, 6), (7, 300, 41), (5,), (4, 6), ()]


def _fused_against_reference(text: str, shapes, dtype, tol: float, steps: int = 3) -> None:
    spec = loads(text, "view.yaml")
    report = optgen.check(spec)
    assert report.ok and not any("no fused path" in f.message for f in report.findings), report.findings
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    for step in grads:
        ref.step(step)
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, fused=True)
    _run(opt, params, [[torch.tensor(g, dtype=dtype) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().double().numpy(), want, rtol=tol, atol=tol, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                got = opt.state[p][key].double().numpy()
                np.testing.assert_allclose(got, value, rtol=tol, atol=tol * max(1.0, np.abs(value).max()), err_msg=key)


@pytest.mark.parametrize("name", ["depth", "slab"])
def test_reductions_over_other_axes_run_fused_through_a_view(name):
    text = {"depth": DEPTH, "slab": SLAB}[name]
    program = fused_axes.prepare(lower(loads(text, "v.yaml")), frozenset(range(3, 9)))
    assert program.axis_view == {"depth": (1, 2), "slab": (2, 1)}[name]
    _fused_against_reference(text, VIEW_SHAPES, torch.float64, 1e-11)


@pytest.mark.parametrize("name", ["depth", "slab"])
def test_reductions_over_other_axes_run_in_triton_through_a_view(triton_interpreter, name):
    _fused_against_reference({"depth": DEPTH, "slab": SLAB}[name], SMALL + [(2, 3, 4, 5)], torch.float32, 2e-5)
