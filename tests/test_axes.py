"""Shapes and axis reductions (issue 10, items 1-2): values reduced over trailing axes
(keepdim), states with reduced shapes, per-tensor `if ndim(param) ...:` rules, and the
catalog's Adafactor against torch.optim.Adafactor on the for-loop and foreach paths; small
specs that use the constructs differently against the float64 Reference on every path; the
checker's located shape errors."""

from __future__ import annotations

import copy
import re
import textwrap

import numpy as np
import pytest
import torch

import optgen
from optgen.errors import SpecError
from optgen.lower import lower
from optgen.parse import loads
from optgen.reference import Reference

# 1-D, 2-D, 3-D and 4-D (a conv weight), a 0-d scalar and a 1x1 matrix
SHAPES = [(5,), (4, 3), (2, 3, 4), (3, 2, 2, 2), (), (1, 1)]
PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# torch.optim.Adafactor has no fused path: ours runs against its for-loop there
TORCH_PATHS = {**PATHS, "fused": {"foreach": False}}


@pytest.fixture(autouse=True)
def _cpu_kernels(monkeypatch):
    """fused=True on CPU tensors runs the C++ kernels (the suite sets TRITON_INTERPRET=1)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def adafactor():
    return optgen.compile(optgen.load("adafactor"))


def _grads(shapes, steps, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


def _params(shapes, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


# --------------------------------------------------------------------------- Adafactor parity
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-10, 1e-13), (torch.float32, 2e-5, 2e-6)])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.3, "beta2_decay": -0.5, "d": 1.5, "maximize": True},
        {"lr": 1e-3, "eps": (1e-3, 1e-2)},
    ],
)
def test_adafactor_matches_torch(adafactor, path, dtype, rtol, atol, kw):
    """Every rank (0-d to 4-D), several steps, params and every state (row_var, col_var for
    ndim >= 2, variance below), against torch.optim.Adafactor on the same path."""
    mine, theirs = _params(SHAPES, dtype), _params(SHAPES, dtype)
    opt = adafactor(mine, **kw, **PATHS[path])
    ref = torch.optim.Adafactor(theirs, **kw, **TORCH_PATHS[path])
    grads = _grads(SHAPES, 6, dtype)
    _run(opt, mine, grads)
    _run(ref, theirs, grads)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)
        assert opt.state[a].keys() == ref.state[b].keys()
        for key in ref.state[b]:
            torch.testing.assert_close(opt.state[a][key], ref.state[b][key], rtol=rtol, atol=atol, check_dtype=False)


def test_adafactor_keeps_torch_state_keys_and_shapes(adafactor):
    params = _params([(6, 4), (2, 3, 5), (7,)], torch.float64)
    opt = adafactor(params, eps=(1e-16, 1e-3))
    _run(opt, params, _grads([(6, 4), (2, 3, 5), (7,)], 1, torch.float64))
    assert {k: tuple(v.shape) for k, v in opt.state[params[0]].items()} == {
        "step": (),
        "row_var": (6, 1),
        "col_var": (1, 4),
    }
    assert tuple(opt.state[params[1]]["row_var"].shape) == (2, 3, 1)
    assert tuple(opt.state[params[1]]["col_var"].shape) == (2, 1, 5)
    assert set(opt.state[params[2]]) == {"step", "variance"}


def test_adafactor_state_bytes_are_rows_plus_cols(adafactor):
    """A 256 x 128 matrix keeps 256 + 128 numbers of second moment, not 256 * 128."""
    p = torch.zeros(256, 128, dtype=torch.float64, requires_grad=True)
    opt = adafactor([p], eps=(1e-16, 1e-3))
    p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state[p]
    moment_bytes = sum(v.numel() * v.element_size() for k, v in state.items() if k != "step")
    assert moment_bytes == (256 + 128) * 8
    assert moment_bytes < p.numel() * p.element_size() / 50


@pytest.mark.parametrize("path", PATHS)
def test_adafactor_state_dict_round_trip(adafactor, path):
    """Three steps, a state_dict into a fresh optimizer, three more: the same numbers as six
    uninterrupted steps; and a torch.optim.Adafactor state_dict loads into ours (same keys)."""
    dtype = torch.float64
    grads = _grads(SHAPES, 6, dtype)
    whole = _params(SHAPES, dtype)
    _run(adafactor(whole, eps=(1e-16, 1e-3), lr=0.05, **PATHS[path]), whole, grads)

    first = _params(SHAPES, dtype)
    opt = adafactor(first, eps=(1e-16, 1e-3), lr=0.05, **PATHS[path])
    _run(opt, first, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    second = [p.detach().clone().requires_grad_() for p in first]
    resumed = adafactor(second, eps=(1e-16, 1e-3), lr=0.05, **PATHS[path])
    resumed.load_state_dict(saved)
    _run(resumed, second, grads[3:])
    for a, b in zip(second, whole):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    theirs = _params(SHAPES, dtype)
    ref = torch.optim.Adafactor(theirs, lr=0.05, eps=(1e-16, 1e-3), **TORCH_PATHS[path])
    _run(ref, theirs, grads[:3])
    mine = [p.detach().clone().requires_grad_() for p in theirs]
    ours = adafactor(mine, lr=0.05, eps=(1e-16, 1e-3), **PATHS[path])
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # load_state_dict keeps same-dtype tensors
    _run(ref, theirs, grads[3:])
    _run(ours, mine, grads[3:])
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_adafactor_reference_matches_torch():
    """The float64 Reference interpreter (the oracle of every other test) against torch."""
    init = [p.detach() for p in _params(SHAPES, torch.float64)]
    grads = _grads(SHAPES, 5, torch.float64)
    ref = Reference(
        optgen.load("adafactor"),
        [{"params": [p.numpy() for p in init], "lr": 0.05, "eps": (1e-16, 1e-3), "weight_decay": 0.1}],
    )
    theirs = [p.clone().requires_grad_() for p in init]
    opt = torch.optim.Adafactor(theirs, lr=0.05, eps=(1e-16, 1e-3), weight_decay=0.1)
    for step in grads:
        ref.step([g.numpy() for g in step])
    _run(opt, theirs, grads)
    for a, b in zip(ref.params, theirs):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-13)
    assert set(ref.state[1]) == {"step", "row_var", "col_var"} and set(ref.state[0]) == {"step", "variance"}


def test_adafactor_checks_with_a_fused_path(adafactor):
    """Axis reductions, reduced states and rank rules run fused (tests/test_fused_axes.py):
    `optgen check` has no fused warning for Adafactor."""
    report = optgen.check(optgen.load("adafactor"))
    assert report.ok
    assert not any("no fused path" in f.message for f in report.findings), report.findings


def test_the_prover_refuses_axis_structure():
    from optgen.prover.sides import symbolic_values

    with pytest.raises(SpecError, match="the prover does not reason about shapes yet"):
        symbolic_values(optgen.load("adafactor"), {})


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

# each row of a matrix (each last-dim fibre of an N-D tensor) normalised to unit RMS
ROW_NORMALISED = HEAD.format(name="RowNorm") + textwrap.dedent(
    """\
    update: |
      if ndim(param) >= 2:
          u = grad / (norm(grad, axis=-1) / sqrt(cols(param)) + eps)
      else:
          u = grad / (norm(grad) / sqrt(rows(param) * cols(param)) + eps)
      param = param - lr * u
    """
)

# the step of each last-dim fibre scaled by its largest |grad| (amax over an axis); a
# scalar takes a sign step
AMAX_SCALED = HEAD.format(name="AmaxScaled") + textwrap.dedent(
    """\
    update: |
      if ndim(param) >= 1:
          scale = amax(abs(grad), axis=-1) - amin(grad, axis=-1) / 4
          param = param - lr * grad / (scale + eps)
      else:
          param = param - lr * sign(grad)
    """
)

# a reduced state Adafactor does not have: a per-column running max of |grad| for ndim >= 2,
# a per-slice (last two dims) mean square with a tuple axis, and a full state for vectors
COLUMN_MAX = HEAD.format(name="ColumnMax") + textwrap.dedent(
    """\
    state:
      col_max: {init: 0, shape: {reduce: [-2]}, ndim: ">= 2", tex: 'c'}
      fibre_sq: {init: 1, shape: {reduce: [-2, -1]}, ndim: ">= 2"}
      vec_sq: {init: 0, ndim: "< 2"}
    update: |
      if ndim(param) >= 2:
          col_max = maximum(beta * col_max, amax(abs(grad), axis=-2))
          fibre_sq = beta * fibre_sq + (1 - beta) * mean(grad**2, axis=(-2, -1))
          step_dir = grad / (col_max + eps) / sqrt(fibre_sq + sum(col_max, axis=-1) / (rows(param) * cols(param)))
      else:
          vec_sq = beta * vec_sq + (1 - beta) * grad**2
          step_dir = grad / (sqrt(vec_sq) + eps)
      param = param - lr * step_dir
    """
)

# a state every tensor has, updated by a rank rule on one side only (matrices take a row-mean
# EMA broadcast back over the row; vectors keep it), and read by both sides afterwards
PARTIAL_STATE = HEAD.format(name="PartialState") + textwrap.dedent(
    """\
    state:
      avg: {init: 0}
    update: |
      if ndim(param) >= 2:
          avg = beta * avg + (1 - beta) * mean(abs(grad), axis=-1)
          grad = grad - mean(grad, axis=(-2, -1))
      param = param - lr * grad / (avg + eps)
    """
)

SYNTHETIC = {
    "row_normalised": ROW_NORMALISED,
    "amax_scaled": AMAX_SCALED,
    "column_max": COLUMN_MAX,
    "partial_state": PARTIAL_STATE,
}


def _reference_run(spec, init, grads, **hypers):
    ref = Reference(spec, [{"params": [p.copy() for p in init], **hypers}])
    for step in grads:
        ref.step(step)
    return ref


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("path", PATHS)
def test_synthetic_specs_match_the_reference(name, path):
    spec = loads(SYNTHETIC[name], f"{name}.yaml")
    assert optgen.check(spec).ok
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(4)]
    ref = _reference_run(spec, init, grads, lr=0.05)
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, **PATHS[path])
    _run(opt, params, [[torch.tensor(g) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-10, atol=1e-13, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                np.testing.assert_allclose(opt.state[p][key].numpy(), value, rtol=1e-10, atol=1e-13)
        assert set(opt.state[p]) == set(ref.state[i])


def test_synthetic_specs_move_the_parameters_differently_by_rank():
    """The rank rule takes effect: a matrix row normalised by its own norm moves every row by
    the same RMS, which a vector's whole-tensor normalisation would not give."""
    spec = loads(ROW_NORMALISED, "r.yaml")
    g = np.array([[3.0, 4.0], [0.3, 0.4]])
    ref = _reference_run(spec, [np.zeros((2, 2))], [[g]], lr=1.0, eps=1e-12)
    rows = np.linalg.norm(ref.params[0], axis=-1)
    np.testing.assert_allclose(rows, [np.sqrt(2), np.sqrt(2)], rtol=1e-9)  # each row at unit RMS: sqrt(cols)
    np.testing.assert_allclose(np.abs(ref.params[0][0]), [0.6 * np.sqrt(2), 0.8 * np.sqrt(2)])


def test_column_max_state_is_reduced_over_rows():
    spec = loads(COLUMN_MAX, "c.yaml")
    p = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    opt = optgen.compile(spec)([p])
    p.grad = torch.arange(15.0, dtype=torch.float64).reshape(5, 3)
    opt.step()
    torch.testing.assert_close(opt.state[p]["col_max"], torch.tensor([[12.0, 13.0, 14.0]], dtype=torch.float64))
    assert tuple(opt.state[p]["fibre_sq"].shape) == (1, 1)


# a state reduced over -3 and one over three axes, in a rank rule for tensors of 3 dims or more
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
      else:
          u = grad
      param = param - lr * u
    """
)
DEPTH_SHAPES = [(3, 4, 5), (2, 3, 4, 5), (5,), (4, 6), (1, 1, 1), (7, 30, 41)]


@pytest.mark.parametrize("path", ["forloop", "foreach"])
def test_reductions_over_three_axes_match_the_reference(path):
    """A reduction over (-3, -2, -1) lowers (its axes were once hoisted as a host value, an
    internal error in check) and runs as the Reference does."""
    spec = loads(DEPTH, "depth.yaml")
    assert optgen.check(spec).ok
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in DEPTH_SHAPES]
    grads = [[rng.standard_normal(s) for s in DEPTH_SHAPES] for _ in range(3)]
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    for step in grads:
        ref.step(step)
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, **PATHS[path])
    _run(opt, params, [[torch.tensor(g) for g in step] for step in grads])
    for i, (p, want) in enumerate(zip(params, ref.params)):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-14, err_msg=f"param {i}")
        for key, value in ref.state[i].items():
            if key != "step":
                np.testing.assert_allclose(opt.state[p][key].numpy(), value, rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "u = grad / (amax(abs(grad), axis=-3) + amax(abs(grad), axis=-1) + eps)",
            "DepthMax reduces over the axes -3, -1, which no one view of a tensor as (outer, rows, cols) gives",
        ),
        (
            "u = grad / (amax(abs(grad), axis=-3) + eps) / cols(param)",
            "DepthMax reduces over the axes -3 and reads rows(param) or cols(param)",
        ),
    ],
    ids=["no-view", "view-and-cols"],
)
def test_axes_no_view_gives_refuse_fused(body, message):
    """The fused kernels reduce over a view of each tensor as (outer, rows, cols): axis sets
    no one view gives (-3 with -1), or rows/cols read under a view other than the last two
    axes, are refused with one message, at construction and as a check warning."""
    text = HEAD.format(name="DepthMax") + textwrap.dedent(
        f"""\
        update: |
          if ndim(param) >= 3:
              {body}
          else:
              u = grad
          param = param - lr * u
        """
    )
    spec = loads(text, "d.yaml")
    assert any(message in f.message and f.severity == "warning" for f in optgen.check(spec).findings)
    cls = optgen.compile(spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        cls([torch.zeros(3, 3, 3, requires_grad=True)], fused=True)


def test_axis_views():
    from optgen.backends.fused_axes import axis_view, reduced_shape, view_shape

    def sets(*axes):
        return [frozenset(a) for a in axes]

    assert axis_view(sets({-1}, {-2}, {-2, -1})) == (1, 1)
    assert axis_view(sets({-3})) == (1, 2)
    assert axis_view(sets({-3}, {-3, -2, -1})) == (1, 2)
    assert axis_view(sets({-3, -2}, {-1})) == (2, 1)
    assert axis_view(sets({-4}, {-3, -2, -1})) == (1, 3)
    assert axis_view(sets({-3}, {-1})) is None
    assert axis_view(sets({-3}, {-2})) is None
    assert view_shape((2, 3, 4, 5), (1, 2)) == (2, 3, 20)
    assert view_shape((3, 4, 5), (2, 1)) == (1, 12, 5)
    assert view_shape((4, 5), (1, 1)) == (4, 5)
    assert reduced_shape((2, 3, 4, 5), "col", (1, 2)) == (2, 1, 4, 5)
    assert reduced_shape((2, 3, 4, 5), "mat", (1, 2)) == (2, 1, 1, 1)
    assert reduced_shape((2, 3, 4, 5), "row", (2, 1)) == (2, 3, 4, 1)


# --------------------------------------------------------------------------- located errors
def _lower_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        lower(loads(text, "s.yaml"))
    return str(info.value)


def _load_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        loads(text, "s.yaml")
    return str(info.value)


SIMPLE = HEAD.format(name="Simple") + textwrap.dedent(
    """\
    state:
      row_var: {init: 0, shape: {reduce: [-1]}, ndim: ">= 2"}
      col_var: {init: 0, shape: {reduce: [-2]}, ndim: ">= 2"}
    update: |
      if ndim(param) >= 2:
          row_var = beta * row_var + mean(grad**2, axis=-1)
          col_var = beta * col_var + mean(grad**2, axis=-2)
          v = row_var * col_var
      else:
          v = grad**2
      param = param - lr * grad / (sqrt(v) + eps)
    """
)


def test_simple_spec_lowers_with_shapes():
    program = lower(loads(SIMPLE, "s.yaml"))
    shapes = {v.var: v.shape.describe() for v in program.values if v.var}
    assert shapes["row_var"] == "reduced over axis -1"
    assert shapes["col_var"] == "reduced over axis -2"
    assert shapes["v"] == "element-shaped (like param)"  # a row vector times a column vector


@pytest.mark.parametrize(
    "old, new, where, message",
    [
        (
            "row_var = beta * row_var + mean(grad**2, axis=-1)",
            "row_var = beta * row_var + grad**2",
            "14:7",
            "state `row_var` is reduced over axis -1, but is assigned a value element-shaped (like param)",
        ),
        (
            "col_var = beta * col_var + mean(grad**2, axis=-2)",
            "col_var = mean(grad**2, axis=-1)",
            "15:7",
            "state `col_var` is reduced over axis -2, but is assigned a value reduced over axis -1",
        ),
        (
            "v = row_var * col_var",
            "v = mean(row_var, axis=-1)",
            "16:7",
            "mean(..., axis=-1): the argument is already reduced over axis -1",
        ),
        (
            "v = grad**2\n",
            "v = grad**2 + mean(grad, axis=-2)\n",
            "18:7",
            (
                "mean(..., axis=-2) needs tensors of at least 2 dims, but this line runs for ndim(param) = 0 too; "
                "put it under `if ndim(param) >= 2:`"
            ),
        ),
        (
            "v = grad**2\n",
            "v = grad**2 + row_var\n",
            "18:7",
            "`row_var` exists only for tensors with ndim(param) >= 2, but this line runs for ndim(param) = 0 too",
        ),
        (
            "v = row_var * col_var",
            "param = row_var",
            "16:7",
            "`param` is element-shaped (like param), but is assigned a value reduced over axis -1",
        ),
        (
            "v = row_var * col_var",
            "v = row_var * col_var / mean(row_var)",
            "16:7",
            "mean(x) of a reduced value divides by numel(param); reduce its axes instead: mean(x, axis=...)",
        ),
    ],
)
def test_shape_mismatches_are_located_errors(old, new, where, message):
    assert old in SIMPLE
    text = _lower_error(SIMPLE.replace(old, new))
    assert f"s.yaml:{where}: {message}" in text, text


def test_reduced_state_outside_its_rule_is_a_located_error():
    text = _lower_error(SIMPLE.replace("\n  param = param", "\n  row_var = row_var * 2\n  param = param"))
    assert "s.yaml:19:3: `row_var` exists only for tensors with ndim(param) >= 2" in text, text


@pytest.mark.parametrize(
    "old, new, where, message",
    [
        ("axis=-1)", "axis=0)", "14:53", "an axis is a negative integer from -1 (the last dim) to -8"),
        ("axis=-1)", "dim=-1)", "14:34", "mean() takes one keyword, `axis=`"),
        ('ndim: ">= 2"}\n  col', 'ndim: "any"}\n  col', "10:51", "ndim of `row_var`: expected a comparison"),
        ('reduce: [-2]}, ndim: ">= 2"}', "reduce: [-2]}}", "11:29", 'declare `ndim: ">= 2"`'),
        ("if ndim(param) >= 2:", "if ndim(param) >= 0:", "13:6", "this condition is always true; drop the `if`"),
    ],
)
def test_malformed_shapes_are_located_parse_errors(old, new, where, message):
    assert old in SIMPLE
    text = _load_error(SIMPLE.replace(old, new, 1))
    assert f"s.yaml:{where}:" in text and message in text, text


# --------------------------------------------------------------------------- LaTeX
def test_latex_prints_axis_means_and_rank_rules():
    from optgen.backends.latex.algorithm import box_lines, equation_rows

    spec = optgen.load("adafactor")
    box = "\n".join(box_lines(spec))
    assert r"\textbf{if}\ \dim(\theta) \geq 2" in box
    # the row mean of g^2 as torch computes it, the squared norm along j over cols(theta)
    row = r"\frac{\left\lVert g_{t} \right\rVert_{j}^{2}}{\operatorname{cols}(\theta)}"
    assert rf"R_{{t}} \leftarrow \hat\beta_{{2}} \left(- R_{{t-1}} + {row}\right) + R_{{t-1}}" in box
    assert r"\operatorname{mean}_{i} R_{t}" in box  # the column mean: over the rows i
    equations = dict(equation_rows(spec)[0])  # (rows, loop definitions)
    assert equations[r"\mathrm{var\_estimate}"] == r"V_{t} \quad \text{if } \dim(\theta) < 2"
    assert r"\mathrm{update}" in equations and r"{\mathrm{var\_estimate}}'" not in "".join(equations.values())


def test_check_from_the_command_line_passes_axis_specs(tmp_path):
    """`optgen check` passes an axis spec (exit 0) without a fused warning, and a shape
    mismatch fails it (exit 2) at its file:line:col."""
    import subprocess
    import sys

    good = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "check", "adafactor"], capture_output=True, text=True, check=False
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "no fused path" not in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIMPLE.replace("mean(grad**2, axis=-1)", "grad**2", 1))
    result = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{bad}:14:7: error: state `row_var` is reduced over axis -1" in result.stdout
