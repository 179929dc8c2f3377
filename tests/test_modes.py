"""Modes (issue 10, item 5): a spec's `modes:` declares the map to the evaluation parameters
and back, and the optimizer gets train() and eval() as schedulefree's optimizers have. The
catalog's schedule-free SGD and AdamW against the schedulefree package (its weighting by
lr_max and k in group states, at its defaults and other powers), and small synthetic specs (an
EMA held as a difference, an anchor refreshed every k steps with `%`) against the Reference
interpreter and hand-written loops, all on the for-loop, foreach and fused (C++ and Triton)
paths; the checker's located errors; LaTeX."""

from __future__ import annotations

import copy
import inspect
import textwrap

import numpy as np
import pytest
import schedulefree
import torch

import optgen
from optgen.errors import SpecError
from optgen.parse import loads
from optgen.reference import Reference

SHAPES = [(3, 4), (5,), (2, 3, 2), (7,)]
PATHS = ["for-loop", "foreach", "fused C++", "fused Triton"]


def _kwargs(path: str) -> dict:
    return {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}.get(path, {"fused": True})


@pytest.fixture
def runtime(monkeypatch, request):
    """fused=True on CPU tensors runs Triton's interpreter (the suite sets TRITON_INTERPRET=1
    without a GPU) or, for "fused C++", the C++ kernels (as tests/test_inputs.py)."""
    from optgen.backends.triton import runtime as triton_runtime

    path = request.node.callspec.params["path"]
    if path == "fused Triton" and not triton_runtime.interpreting():
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET unset)")
    if path == "fused C++":
        monkeypatch.setattr(triton_runtime, "interpreting", lambda: False)


def _tolerance(path: str, dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 2e-5
    return 2e-6 if path == "fused Triton" else 1e-12  # Triton's kernels compute in float32


# --------------------------------------------------------------------------- schedule-free
SF = {
    "sgdschedulefree": (schedulefree.SGDScheduleFree, [{"lr": 0.5, "momentum": 0.8}, {"lr": 0.2, "weight_decay": 0.1}]),
    "adamwschedulefree": (
        schedulefree.AdamWScheduleFree,
        [{"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 0.05}, {"lr": 0.02, "eps": 1e-6}],
    ),
}


# the package's averaging weights (k+1)**r * lr_max**weight_lr_power: its defaults (r=0,
# weight_lr_power=2), other powers, and equal weights (c_{t+1} = 1/t)
WEIGHTINGS = {
    "defaults": {},
    "r_and_power": {"r": 0.5, "weight_lr_power": 1.5},
    "equal": {"r": 0.0, "weight_lr_power": 0.0},
}


def _groups(params, hypers, warmup: int):
    return [{"params": params[:2], **hypers[0], "warmup_steps": warmup}, {"params": params[2:], **hypers[1]}]


class _Pair:
    """Ours (one path) and the schedulefree package, on copies of the same parameters."""

    def __init__(self, name: str, path: str, dtype: torch.dtype, warmup: int, weighting: dict):
        make, hypers = SF[name]
        gen = torch.Generator().manual_seed(len(name) + warmup)
        start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        self.ours = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
        self.theirs = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
        self.cls = optgen.compile(optgen.load(name))
        self.opt = self.cls(_groups(self.ours, hypers, warmup), **weighting, **_kwargs(path))
        self.ref = make(_groups(self.theirs, hypers, warmup), **weighting, foreach=False)
        self.gen, self.dtype, self.t, self.weighting = gen, dtype, 0, weighting

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.t += 1
            grads = [torch.randn(s, dtype=torch.float64, generator=self.gen) for s in SHAPES]
            if self.t % 3 == 0:
                grads[1] = None  # skipped this step: the group's count still moves on
            for opt, params in ((self.opt, self.ours), (self.ref, self.theirs)):
                for group in opt.param_groups:
                    group["lr"] *= 0.9  # a schedule on top: lr_max stays at the warmup's peak
                for p, g in zip(params, grads):
                    # a copy each: the package normalises the gradient in place
                    p.grad = None if g is None else (g + 0.5 * p.detach().double()).to(self.dtype)
                opt.step()

    def both(self, method: str) -> None:
        getattr(self.opt, method)()
        getattr(self.ref, method)()

    def assert_close(self, tol: float, group_tol: float = 1e-12) -> None:
        for a, b in zip(self.ours, self.theirs):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
        for a, b in zip(self.ours, self.theirs):
            for key in self.ref.state[b]:
                torch.testing.assert_close(self.opt.state[a][key], self.ref.state[b][key], rtol=tol, atol=tol)
        for ours, theirs in zip(self.opt.param_groups, self.ref.param_groups):
            # the group states under the package's keys, in float64 whatever the dtype
            # (0-d tensors in the package once it loaded this class's count: float() of each)
            assert float(ours["lr_max"]) == pytest.approx(float(theirs["lr_max"]), rel=group_tol)
            assert float(ours["weight_sum"]) == pytest.approx(float(theirs["weight_sum"]), rel=group_tol)
            assert ours["k"] == theirs["k"]  # the package's key for the group's count


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("name", list(SF))
def test_schedulefree_parity_with_mode_switches_and_a_state_dict_round_trip(name, weighting, path, dtype, runtime):
    """train(), steps (warmup on one group, a gradient skipped every third step, lr changed
    every step), eval() twice, train(), more steps; then a state_dict saved in eval mode is
    loaded into a new optimizer, which resumes in eval mode, and both train on. The group
    states (lr_max, weight_sum) travel in the state dict's param groups."""
    pair = _Pair(name, path, dtype, warmup=3, weighting=WEIGHTINGS[weighting])
    tol = _tolerance(path, dtype)
    pair.both("train")
    pair.steps(4)
    pair.assert_close(tol)
    pair.both("eval")
    pair.both("eval")  # idempotent
    pair.assert_close(tol)
    pair.both("train")
    pair.steps(4)
    pair.both("eval")
    pair.assert_close(tol)
    saved = pair.opt.state_dict()
    assert [g["train_mode"] for g in saved["param_groups"]] == [False, False]
    assert [g["weight_sum"] for g in saved["param_groups"]] == [g["weight_sum"] for g in pair.opt.param_groups]
    pair.opt = pair.cls(_groups(pair.ours, SF[name][1], 3), **_kwargs(path))  # fresh lr_max, weight_sum
    pair.opt.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="eval mode"):
        pair.opt.step()
    pair.both("train")
    pair.steps(3)
    pair.assert_close(tol)


@pytest.mark.parametrize("path", ["foreach", "fused C++"])
@pytest.mark.parametrize("name", list(SF))
def test_schedulefree_checkpoints_load_across_the_package(name, path, runtime):
    """The package's checkpoint, taken mid-warmup, loads into a fresh optimizer of this class,
    which goes on as the package does: its step count (group["k"]) comes along, so warmup, bias
    correction and the averaging weights go on instead of starting over. And this class's
    checkpoint loads into a fresh package optimizer, which goes on as this class does (to
    float32 rounding: the count is a float32 0-d tensor here, which the package computes its
    weights from)."""
    make, hypers = SF[name]
    pair = _Pair(name, path, torch.float64, warmup=5, weighting=WEIGHTINGS["r_and_power"])
    pair.both("train")
    pair.steps(3)
    # a copy, as torch.save and torch.load make: a state dict holds the live state tensors
    theirs = copy.deepcopy(pair.ref.state_dict())
    pair.opt = pair.cls(_groups(pair.ours, hypers, 1), **_kwargs(path))  # other warmup: loaded over
    pair.opt.load_state_dict(theirs)
    for group in pair.opt.param_groups:
        group.update(_kwargs(path))  # the package's groups say foreach=False
    pair.steps(4)
    pair.assert_close(1e-12)

    crossed = _Pair(name, path, torch.float64, warmup=5, weighting=WEIGHTINGS["r_and_power"])
    crossed.both("train")
    crossed.steps(3)
    saved = copy.deepcopy(crossed.opt.state_dict())
    crossed.ref = make(_groups(crossed.theirs, hypers, 1), foreach=False)
    crossed.ref.load_state_dict(saved)
    for state in crossed.ref.state.values():
        state.pop("step")  # this class's per-tensor count: the package keeps it and never reads it
    assert [g["k"] for g in crossed.ref.param_groups] == [3, 3]
    crossed.steps(4)
    crossed.assert_close(1e-6, group_tol=1e-6)


def test_schedulefree_weighting_changes_the_run():
    """A test that cannot fail is a defect: the package's default weighting and equal
    weights give different parameters after a warmup (so the parity above tells them apart)."""
    runs = [_Pair("sgdschedulefree", "foreach", torch.float64, 3, WEIGHTINGS[w]) for w in ("defaults", "equal")]
    for pair in runs:
        pair.both("train")
        pair.steps(5)
    assert not torch.allclose(runs[0].ours[0].detach(), runs[1].ours[0].detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("name", list(SF))
def test_schedulefree_specs_match_the_reference_interpreter(name, weighting):
    """The Reference's train()/eval() against the package (float64, the for-loop of it)."""
    make, hypers = SF[name]
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
    theirs = [torch.nn.Parameter(x.clone()) for x in start]
    pkg = make(_groups(theirs, hypers, 2), **WEIGHTINGS[weighting], foreach=False)
    groups = _groups([x.numpy().copy() for x in start], hypers, 2)
    ref = Reference(optgen.load(name), [{**g, **WEIGHTINGS[weighting]} for g in groups])
    pkg.train()
    ref.train()
    for t in range(6):
        grads = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        for group in (*pkg.param_groups, *ref.param_groups):
            group["lr"] *= 0.8  # below the warmup's peak: lr_max and lr_t part
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        pkg.step()
        ref.step([g.numpy() for g in grads])
        if t in (2, 5):
            pkg.eval()
            ref.eval()
            for p, r in zip(theirs, ref.params):
                np.testing.assert_allclose(r, p.detach().numpy(), rtol=1e-12, atol=1e-12)
            pkg.train()
            ref.train()
    for p, r in zip(theirs, ref.params):
        np.testing.assert_allclose(r, p.detach().numpy(), rtol=1e-12, atol=1e-12)
    ref.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        ref.step([g.numpy() for g in grads])


def test_schedulefree_code_reads_like_the_package():
    """One lerp per switch, with the package's weights, on both eager paths."""
    source = inspect.getsource(inspect.getmodule(optgen.compile(optgen.load("adamwschedulefree"))))
    assert "torch._foreach_lerp_(params, z_list, 1 - 1 / beta1)" in source
    assert "param.lerp_(z, 1 - beta1)" in source
    assert '"train_mode": True' in source


def test_the_mode_switch_changes_the_parameters():
    """A test that cannot fail is a defect: eval() moves a trained parameter to x, train()
    brings it back (to rounding), and a parameter never stepped has no z and stays."""
    cls = optgen.compile(optgen.load("sgdschedulefree"))
    p, q = (torch.nn.Parameter(torch.ones(4, dtype=torch.float64)) for _ in range(2))
    opt = cls([p, q], lr=0.1, foreach=False)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    opt.step()
    y = p.detach().clone()
    opt.eval()
    assert not torch.allclose(p.detach(), y) and torch.equal(q.detach(), torch.ones(4, dtype=torch.float64))
    opt.train()
    torch.testing.assert_close(p.detach(), y, rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------- synthetic specs
# SGD whose evaluation parameter is an EMA of its iterates, kept as its difference from the
# parameter (delta = ema - param), so that eval() adds it and train() takes it away: a map
# that is not a lerp, and a state that only the evaluation parameter reads.
EMA = textwrap.dedent(
    """\
    name: SGDEMAEval
    summary: SGD evaluated at an exponential moving average of its iterates.
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)", tex: '\\gamma'}
      decay: {default: 0.9, range: "[0, 1)", tex: '\\rho'}
    state:
      delta: {init: 0, tex: '\\delta'}
    modes:
      eval: |
        param = param + delta
      train: |
        param = param - delta
    update: |
      new_param = param - lr * grad
      delta = decay * (param + delta - new_param)
      param = new_param
    """
)

# An anchor refreshed every k steps (`%` on step), a cyclic step size, and modes that start
# in eval (step() needs train() first, as schedulefree's): eval() moves to the anchor.
ANCHOR = textwrap.dedent(
    """\
    name: CyclicAnchor
    summary: SGD with a cyclic step size, evaluated at the iterate of the last k-th step.
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)", tex: '\\gamma'}
      k: {default: 3, range: "[1, inf)", tex: 'k'}
      scale: {default: 1.0, range: "(0, inf)", tex: 's'}
    state:
      anchor: {init: param, tex: 'a'}
      offset: {init: 0, tex: 'o'}
    modes:
      start: eval
      eval: |
        param = param - scale * offset
      train: |
        shift = scale * offset
        param = param + shift
    update: |
      new_param = param - lr * (1 + step % k) / k * grad
      anchor = where(step % k == 0, new_param, anchor)
      offset = (new_param - anchor) / scale
      param = new_param
    """
)


def _ema_by_hand(start, grads, switches, lr=0.1, decay=0.9):
    """Plain SGD and its EMA; `switches[t]` the mode after step t: the parameters then."""
    params, emas, seen = [p.copy() for p in start], [p.copy() for p in start], {}
    for t, g in enumerate(grads, 1):
        for i, x in enumerate(g):
            params[i] = params[i] - lr * x
            emas[i] = decay * emas[i] + (1 - decay) * params[i]
        seen[t] = [e.copy() for e in emas] if switches.get(t) == "eval" else [p.copy() for p in params]
    return seen


def _anchor_by_hand(start, grads, lr=0.1, k=3):
    params, anchors = [p.copy() for p in start], [p.copy() for p in start]
    for t, g in enumerate(grads, 1):
        for i, x in enumerate(g):
            params[i] = params[i] - lr * (1 + t % k) / k * x
            if t % k == 0:
                anchors[i] = params[i].copy()
    return params, anchors


def _synthetic_run(spec, path, dtype, steps, switch_at, **hyper):
    """Ours on `path` and the Reference, switching to eval after each step in switch_at and
    back before the next: the params seen after each step (ours, the Reference's)."""
    cls = optgen.compile(spec)
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
    params = [torch.nn.Parameter(x.to(dtype, copy=True)) for x in start]
    opt = cls([{"params": params[:2], **hyper}, {"params": params[2:], "lr": 0.05, **hyper}], **_kwargs(path))
    ref = Reference(
        spec,
        [
            {"params": [x.numpy().copy() for x in start[:2]], **hyper},
            {"params": [x.numpy().copy() for x in start[2:]], "lr": 0.05, **hyper},
        ],
    )
    if spec.modes.start == "eval":
        opt.train()
        ref.train()
    grads_seen, ours, theirs = [], [], []
    for t in range(1, steps + 1):
        grads = [torch.randn(s, dtype=torch.float64, generator=gen) for s in SHAPES]
        grads_seen.append([g.numpy() for g in grads])
        for p, g in zip(params, grads):
            p.grad = g.to(dtype)
        opt.step()
        ref.step([g.numpy() for g in grads])
        if t in switch_at:
            opt.eval()
            ref.eval()
        ours.append([p.detach().double().numpy().copy() for p in params])
        theirs.append([r.copy() for r in ref.params])
        if t in switch_at:
            opt.train()
            ref.train()
    return start, grads_seen, ours, theirs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", PATHS)
def test_ema_evaluation_parameter_on_every_path(path, dtype, runtime):
    spec = loads(EMA, "ema.yaml")
    assert optgen.check(spec).ok
    switch_at = {2, 3, 5}
    start, grads, ours, theirs = _synthetic_run(spec, path, dtype, 6, switch_at)
    tol = _tolerance(path, dtype)
    for lr, group in ((0.1, slice(0, 2)), (0.05, slice(2, 4))):
        want = _ema_by_hand(
            [s.numpy() for s in start[group]], [g[group] for g in grads], dict.fromkeys(switch_at, "eval"), lr=lr
        )
        for t in range(1, 7):
            for a, b, w in zip(ours[t - 1][group], theirs[t - 1][group], want[t]):
                np.testing.assert_allclose(b, w, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(a, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("k", [3, 2.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", PATHS)
def test_anchor_every_k_steps_starting_in_eval_mode_on_every_path(path, dtype, k, runtime):
    """`step % k` (floored, a float k too, as Python's) on every path, the fused C++ kernels'
    host rows included; eval() after steps 4 and 6, where the anchor is the iterate of the
    last step that k divides."""
    spec = loads(ANCHOR, "anchor.yaml")
    assert optgen.check(spec).ok
    start, grads, ours, theirs = _synthetic_run(spec, path, dtype, 7, {4, 6}, k=k)
    tol = _tolerance(path, dtype)
    for lr, group in ((0.1, slice(0, 2)), (0.05, slice(2, 4))):
        for t in (4, 6, 7):
            params, anchors = _anchor_by_hand(
                [s.numpy() for s in start[group]], [g[group] for g in grads[:t]], lr=lr, k=k
            )
            want = anchors if t in (4, 6) else params
            for a, b, w in zip(ours[t - 1][group], theirs[t - 1][group], want):
                np.testing.assert_allclose(b, w, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(a, w, rtol=tol, atol=tol)


def test_a_spec_that_starts_in_eval_mode_refuses_step_until_train():
    cls = optgen.compile(loads(ANCHOR, "anchor.yaml"))
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = cls([p])
    assert opt.param_groups[0]["train_mode"] is False
    with pytest.raises(RuntimeError, match="call optimizer.train"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    opt.train()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))


def test_non_lerp_maps_print_as_add_and_mul():
    source = inspect.getsource(inspect.getmodule(optgen.compile(loads(ANCHOR, "anchor.yaml"))))
    assert "torch._foreach_add_(params, offsets, alpha=-scale)" in source
    assert "param.add_(offset, alpha=scale)" in source


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "old, new, line, col, words",
    [
        ("param = param + delta", "param = param + grad", 11, 21, "reads `grad`, the gradient"),
        ("param = param + delta", "param = param + step * delta", 11, 21, "reads `step`"),
        ("param = param + delta", "delta = param\n    param = param + delta", 11, 5, "assigns the state `delta`"),
        ("param = param + delta", "param = param + deltaa", 11, 21, "did you mean `delta`"),
        ("param = param + delta", "param = param * delta", 11, 5, "affine map"),
        ("param = param + delta", "param = param + sum(delta)", 11, 5, "no reductions"),
        ("param = param + delta", "param = param + new_param", 11, 21, "unknown name `new_param`"),
        ("param = param + delta", "x = delta", 11, 5, "never assigns `param`"),
        ("param = param + delta", "param = param + numel(param) * delta", 11, 5, "reads `numel`"),
        ("param = param + delta", "param = param + 0 * delta", 11, 5, "leaves `param` as it is"),
        ("param = param + delta", "if amsgrad:\n      param = param + delta", 11, 5, "`if` is not allowed"),
        ("  train: |\n    param = param - delta\n", "", 10, 3, "needs both `eval:` and `train:`"),
        ("modes:\n", "modes:\n  start: both\n", 10, 10, "`start` must be `train` or `eval`"),
    ],
)
def test_bad_mode_programs_are_errors_where_they_stand(old, new, line, col, words):
    text = EMA.replace(old, new)
    assert text != EMA
    with pytest.raises(SpecError) as info:
        loads(text, "ema.yaml")
    found = getattr(info.value, "errors", [info.value])
    assert any(e.loc.line == line and e.loc.col == col and words in e.message for e in found), [str(e) for e in found]


def test_a_state_only_the_evaluation_parameter_reads_is_used():
    """delta never reaches the update's param: the eval map reading it makes it useful."""
    assert optgen.check(loads(EMA, "ema.yaml")).ok
    text = EMA.replace("param = param + delta", "param = 2 * param").replace(
        "param = param - delta", "param = param / 2"
    )
    report = optgen.check(loads(text, "ema.yaml"))
    assert any("never influences" in f.message for f in report.findings)


# --------------------------------------------------------------------------- LaTeX
def test_latex_box_shows_the_eval_and_train_maps():
    tex = optgen.latex(optgen.load("adamwschedulefree"))
    assert (
        r"\textbf{eval()}:\ \theta \leftarrow \theta + \left(1 - \frac{1}{\beta_1}\right) \left(z - \theta\right)"
        in tex
    )
    assert r"\textbf{train()}:\ \theta \leftarrow \theta + \left(1 - \beta_1\right) \left(z - \theta\right)" in tex
    anchor = optgen.latex(loads(ANCHOR, "anchor.yaml"))
    assert r"\textbf{eval()}:\ \theta \leftarrow" in anchor and "starts in eval mode" in anchor
    assert r"t \bmod k" in anchor
    assert "eval()" not in optgen.latex(optgen.load("sgd"))


def test_show_lists_the_modes():
    from optgen.lower import lower
    from optgen.show import show

    text = show(lower(loads(ANCHOR, "anchor.yaml")))
    assert "modes (start: eval; eval() and train() switch the parameters):" in text
    assert "eval(): param <- -offset*scale + param" in text


def test_fused_state_dtype_switches_in_the_parameters_dtype():
    """bfloat16 states (fused=True, state_dtype): the switch reads delta in the parameter's
    dtype and lands where the Reference does, to bfloat16's precision (the EMA spec: the
    schedule-free specs' group states keep them off the fused path)."""
    spec = loads(EMA, "ema.yaml")
    cls = optgen.compile(spec)
    p = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float32))
    opt = cls([p], lr=0.1, fused=True, state_dtype=torch.bfloat16)
    ref = Reference(spec, [{"params": [p.detach().double().numpy().copy()], "lr": 0.1}])
    for _ in range(3):
        p.grad = torch.ones(6)
        opt.step()
        ref.step([np.ones(6)])
    assert opt.state[p]["delta"].dtype == torch.bfloat16
    opt.eval()
    ref.eval()
    np.testing.assert_allclose(p.detach().double().numpy(), ref.params[0], rtol=2e-2, atol=2e-2)
    assert p.dtype == torch.float32


def test_a_child_spec_keeps_or_drops_its_parents_modes():
    head = "extends: sgdschedulefree\nname: SGDSFChild\nparity: independent\n"
    kept = loads(head, "child.yaml")
    assert kept.modes is not None and kept.modes.maps["eval"].lerp[0] == "z"
    dropped = loads(head + "modes: null\n", "child.yaml")
    assert dropped.modes is None
    assert "def eval(" not in inspect.getsource(inspect.getmodule(optgen.compile(dropped)))


def test_a_hyperparameter_cannot_take_the_mode_s_group_key():
    text = EMA.replace("  decay: {", "  train_mode: {default: 0.5}\n  decay: {")
    with pytest.raises(SpecError) as info:
        loads(text, "ema.yaml")
    assert info.value.loc.line == 6 and "`train_mode` is the param group key of the mode" in info.value.message


@pytest.mark.parametrize("spec_text", [EMA, ANCHOR], ids=["ema", "anchor"])
def test_check_refuses_maps_that_do_not_undo_each_other(spec_text):
    """train(eval(param)) must be param: the catalog's and the synthetic maps are; a sign
    slip is an error at the train program."""
    assert all(optgen.check(optgen.load(n)).ok for n in ("sgdschedulefree", "adamwschedulefree"))
    assert optgen.check(loads(spec_text, "modes.yaml")).ok
    broken = spec_text.replace("param = param - delta", "param = param + delta").replace(
        "param = param + shift", "param = param - shift"
    )
    report = optgen.check(loads(broken, "modes.yaml"))
    (finding,) = report.findings
    assert finding.severity == "error" and "does not undo the `eval` program" in finding.message
    assert finding.loc.line == (13 if spec_text is EMA else 16)
