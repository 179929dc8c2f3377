"""torch.optim behaviour of the generated optimizers: constructor and validation, param
groups, schedulers, closure, maximize, zero_grad, gradients that are None or sparse,
state_dict, the fused-path hook, optgen.compile on a user spec, and the generated files."""

from __future__ import annotations

import ast
import inspect
import math
import pickle
import re
from pathlib import Path

import adabound
import numpy as np
import pytest
import torch

import optgen
import optgen.backends.triton.runtime as triton_runtime
from optgen import catalog
from optgen.errors import CompileError
from optgen.matrix import loop_counts, matrix_location
from optgen.reference import Reference

NAMES = catalog.names()
SPECS = {name: optgen.load(name) for name in NAMES}


def cls_of(name: str):
    return getattr(optgen.optimizers, SPECS[name].name)


# specs with matrix operations (Muon) update matrices only: a (5, 2) matrix for the vector
MATRIX = {name for name in NAMES if matrix_location(SPECS[name]) is not None}
# options that compute in bfloat16 (as torch.optim.Muon), off where a test compares with the
# float64 Reference at a tight tolerance (tests/test_matrix.py compares them at bf16's)
IN_DTYPE = {name: {"bf16_newton_schulz": False} for name in NAMES if "bf16_newton_schulz" in SPECS[name].options}


def _tensors(seed=0, dtype=torch.float64, matrix=False):
    g = torch.Generator().manual_seed(seed)
    second = (5, 2) if matrix else (5,)
    return [torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(*second, generator=g, dtype=dtype)]


def _grads(step: int, params, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=dtype) + 0.5 * p.detach() for p in params]


def _train(opt, params, steps, grads=_grads, before=None):
    for t in range(1, steps + 1):
        if before is not None:
            before(t)
        for p, g in zip(params, grads(t, params)):
            p.grad = g
        opt.step()


def _leaves(values):
    return [torch.nn.Parameter(v.clone()) for v in values]


# --------------------------------------------------------------------------- the catalog
def test_catalog_classes_are_named_after_their_files():
    assert sorted(optgen.optimizers.__all__) == sorted(SPECS[n].name for n in NAMES)
    for name in NAMES:
        cls = cls_of(name)
        assert cls.__name__.lower() == name and issubclass(cls, torch.optim.Optimizer)
        assert Path(inspect.getsourcefile(cls)) == catalog.generated_dir() / "torch" / f"{name}.py"
    with pytest.raises(AttributeError, match="catalog"):
        optgen.optimizers.NoSuchOptimizer  # noqa: B018


@pytest.mark.parametrize("name", NAMES)
def test_generated_module_imports_only_torch(name):
    tree = ast.parse((catalog.generated_dir() / "torch" / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] == "torch" for a in node.names), ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module == "__future__" or node.module.split(".")[0] == "torch", node.module
    module = inspect.getmodule(cls_of(name))
    fn = name
    signatures = {
        str(_dispatched_signature(getattr(module, f"_{kind}_{fn}")))
        for kind in ("single_tensor", "multi_tensor", "fused")
    }
    assert len(signatures) == 1, "_single_tensor_, _multi_tensor_ and _fused_ must share one signature"


def _dispatched_signature(func) -> inspect.Signature:
    """The parameters the dispatcher passes: less `combined`, which only the foreach path's
    own batching passes (a group split by a host-side branch under sharding), default None."""
    signature = inspect.signature(func)
    combined = signature.parameters.get("combined")
    assert combined is None or combined.default is None
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "combined"])


def _without_compiled_forms(source: str) -> str:
    """The source with the body of each `if torch.compiler.is_compiling():` left out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "torch.compiler.is_compiling()":
            node.body = [ast.Pass()]
    return ast.unparse(tree)


@pytest.mark.parametrize("name", ["sgd", "radam", "adabelief", "adan", "rmsprop", "adam"])
def test_host_side_branches_and_options_are_python_ifs(name):
    """A `where` on hyperparameters or step, and every option, is decided in Python: no
    per-element select in the generated code (but under torch.compile, where the step
    count is a tensor: tests/test_compile.py)."""
    source = (catalog.generated_dir() / "torch" / f"{name}.py").read_text()
    assert "torch.where" not in _without_compiled_forms(source)
    for option in SPECS[name].options:
        assert re.search(rf"\b(el)?if (not )?{option}\b", source), f"no `if {option}` in the generated code"


@pytest.mark.parametrize("name", NAMES)
def test_constructor_keywords_follow_the_spec(name):
    spec = SPECS[name]
    parameters = inspect.signature(cls_of(name).__init__).parameters
    keywords = [k for k, h in spec.hyperparameters.items() if h.captured is None] + list(spec.options)
    assert list(parameters)[2 : 2 + len(keywords)] == keywords
    for key in keywords:
        h = spec.hyperparameters.get(key)
        default = h.default_value() if h else spec.options[key].default
        assert parameters[key].default == default
    for key, default in (("maximize", False), ("foreach", None), ("fused", None)):
        assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY and parameters[key].default is default


def _out_of_range(interval):
    if interval.lo != -math.inf:
        return interval.lo if interval.lo_open else interval.lo - 1.0
    return interval.hi if interval.hi_open else interval.hi + 1.0


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_hyperparameters_raise_value_error(name):
    spec, cls = SPECS[name], cls_of(name)
    checked = 0
    for key, h in spec.hyperparameters.items():
        if h.captured is not None or (h.range.lo == -math.inf and h.range.hi == math.inf):
            continue
        for i, component in enumerate(h.names):
            bad = list(h.default)
            bad[i] = _out_of_range(h.range)
            value = tuple(bad) if h.is_tuple else bad[0]
            with pytest.raises(
                ValueError, match=rf"{component}.*{h.range}".replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
            ):
                cls([torch.zeros(2, requires_grad=True)], **{key: value})
            opt = cls([torch.zeros(2, requires_grad=True)])
            with pytest.raises(ValueError, match=component):  # a param group is checked too
                opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], key: value})
            checked += 1
    assert checked, "no hyperparameter has a range to check"


# --------------------------------------------------------------------------- torch.optim behaviour
@pytest.mark.parametrize("foreach", [False, True])
def test_lr_scheduler_matches_torch(foreach):
    ours_p, theirs_p = _leaves(_tensors()), _leaves(_tensors())
    ours = optgen.optimizers.Adam(ours_p, lr=0.1, weight_decay=0.01, foreach=foreach)
    theirs = torch.optim.Adam(theirs_p, lr=0.1, weight_decay=0.01)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ours, theirs)]
    for t in range(1, 10):
        for params, opt in ((ours_p, ours), (theirs_p, theirs)):
            for p, g in zip(params, _grads(t, params)):
                p.grad = g
            opt.step()
        for s in schedules:
            s.step()
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 0.1 * 0.5**3
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:This overload of add_? is deprecated:UserWarning")
def test_captured_base_lr_follows_the_group_as_in_adabound():
    """base_lr is set from lr when the group is added; a scheduler then moves lr (and the
    bounds with it) but not base_lr."""
    ours_p, theirs_p = _leaves(_tensors()), _leaves(_tensors())
    ours = optgen.optimizers.AdaBound(ours_p, lr=0.01, final_lr=0.05, gamma=0.05)
    theirs = adabound.AdaBound(theirs_p, lr=0.01, final_lr=0.05, gamma=0.05)
    schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8) for o in (ours, theirs)]
    for t in range(1, 12):
        for params, opt in ((ours_p, ours), (theirs_p, theirs)):
            for p, g in zip(params, _grads(t, params)):
                p.grad = g
            opt.step()
        for s in schedules:
            s.step()
    assert ours.param_groups[0]["base_lr"] == 0.01 and ours.param_groups[0]["lr"] < 0.01
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_is_read_from_the_group_each_step(name, foreach):
    """Change every hyperparameter of the group between steps: the optimizer follows the
    Reference interpreter, which reads the group afresh each step."""
    spec, cls = SPECS[name], cls_of(name)
    init = [t.numpy() for t in _tensors(seed=3, matrix=name in MATRIX)]
    params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
    opt = cls(params, foreach=foreach, **IN_DTYPE.get(name, {}))
    counts = loop_counts(spec)  # a loop count stays an integer
    ref = Reference(spec, [{"params": [p.copy() for p in init], **IN_DTYPE.get(name, {})}])

    def perturb(t):
        for key, h in spec.hyperparameters.items():
            if h.captured is not None:
                continue
            values = [_inside(h.range, d, t) for d in h.default]
            values = [round(v) + t % 2 if n in counts else v for n, v in zip(h.names, values)]
            value = tuple(values) if h.is_tuple else values[0]
            opt.param_groups[0][key] = value
            ref.param_groups[0][key] = value

    for t in range(1, 8):
        perturb(t)
        grads = _grads(t, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        ref.step([g.numpy() for g in _grads(t, [torch.tensor(p) for p in ref.params])])
    for a, b in zip(params, ref.params):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-9, atol=1e-12)


def _inside(interval, default, t):
    """A value near `default`, different at every step, inside the interval."""
    value = default * (1.0 + 0.05 * math.sin(t)) if default else 0.01 * (1.5 + math.sin(t))
    if interval.hi != math.inf:
        value = min(value, interval.hi - 1e-3 if interval.hi_open else interval.hi)
    return max(value, interval.lo + 1e-3 if interval.lo_open else interval.lo)


@pytest.mark.parametrize("foreach", [False, True])
def test_closure_is_called_with_grad_enabled_and_its_loss_returned(foreach):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = optgen.optimizers.SGD([w], lr=0.1, foreach=foreach)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [True] and loss.item() == 5.0
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, -1.6], dtype=torch.float64))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_maximize_is_minimizing_the_negated_gradient(name, foreach):
    cls = cls_of(name)
    matrix = name in MATRIX
    up, down = _leaves(_tensors(matrix=matrix)), _leaves(_tensors(matrix=matrix))
    _train(cls(up, maximize=True, foreach=foreach), up, 6)
    _train(cls(down, foreach=foreach), down, 6, grads=lambda t, ps: [-g for g in _grads(t, ps)])
    for a, b in zip(up, down):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_maximize_matches_torch():
    ours_p, theirs_p = _leaves(_tensors()), _leaves(_tensors())
    _train(optgen.optimizers.NAdam(ours_p, maximize=True, weight_decay=0.1), ours_p, 5)
    _train(torch.optim.NAdam(theirs_p, maximize=True, weight_decay=0.1), theirs_p, 5)
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_grad_then_step_changes_nothing(foreach):
    params = _leaves(_tensors())
    opt = optgen.optimizers.Adan(params, weight_decay=0.1, max_grad_norm=1.0, foreach=foreach)
    _train(opt, params, 2)
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state[params[0]].items()}
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(torch.equal(v, opt.state[params[0]][k]) for k, v in state.items())


@pytest.mark.parametrize("foreach", [False, True])
def test_params_without_gradient_are_skipped(foreach):
    params = _leaves(_tensors())
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = optgen.optimizers.Lamb(params + [frozen], weight_decay=0.1, foreach=foreach)
    _train(opt, params, 3)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64)) and frozen not in opt.state
    assert all(opt.state[p]["step"].item() == 3 for p in params)


@pytest.mark.parametrize("foreach", [False, True])
def test_sparse_gradient_is_a_clear_error(foreach):
    w = torch.nn.Parameter(torch.zeros(4, 2))
    w.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (4, 2), check_invariants=True)
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        optgen.optimizers.Adam([w], foreach=foreach).step()


@pytest.mark.parametrize("foreach", [False, True])
def test_add_param_group_mid_run_matches_torch(foreach):
    """A group added after 3 steps starts at step 1, with the defaults filled in."""
    first, late = _tensors(seed=1), _tensors(seed=2)
    runs = []
    for make in (
        lambda ps: optgen.optimizers.Adam(ps, lr=0.05, amsgrad=True, foreach=foreach),
        lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True),
    ):
        params, extra = _leaves(first), _leaves(late)
        opt = make(params)
        _train(opt, params, 3)
        opt.add_param_group({"params": extra, "weight_decay": 0.1})
        assert opt.param_groups[1]["lr"] == 0.05 and opt.param_groups[1]["amsgrad"] is True
        _train(opt, params + extra, 4)
        runs.append(params + extra)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["sgd", "adan", "radam", "lars"])
def test_foreach_splits_tensors_on_per_tensor_branches(name):
    """Tensors of one group at different steps (a gradient that appears late) or of
    different ndim take different sides of a host-side branch: the foreach path updates them
    in separate batches and agrees with the for-loop."""
    runs = []
    for foreach in (False, True):
        params = _leaves(_tensors(seed=5) + _tensors(seed=6)[:1])
        opt = cls_of(name)(params, lr=0.01, weight_decay=0.1, foreach=foreach)
        for t in range(1, 9):
            grads = _grads(t, params)
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if (i == 1 and t < 4) else g  # parameter 1 starts late
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_state_dict_round_trip_and_pickle():
    params = _leaves(_tensors())
    opt = optgen.optimizers.NAdam(params, weight_decay=0.1)
    _train(opt, params, 3)
    other = optgen.optimizers.NAdam(_leaves(_tensors()), foreach=True)
    other.load_state_dict(pickle.loads(pickle.dumps(opt.state_dict())))
    assert other.param_groups[0]["weight_decay"] == 0.1
    saved = opt.state_dict()["state"][0]
    assert set(saved) == {"step", "mu_product", "exp_avg", "exp_avg_sq"}
    assert saved["step"].dtype == torch.get_default_dtype() or saved["step"].dtype == torch.float32
    assert saved["step"].dim() == 0 and saved["mu_product"].dim() == 0


# --------------------------------------------------------------------------- the fused path
class _FusedRecorder:
    def __init__(self):
        self.calls = []

    def __call__(self, spec_key, **kwargs):
        self.calls.append((spec_key, kwargs))


def test_fused_true_calls_the_triton_runtime(monkeypatch):
    recorder = _FusedRecorder()
    monkeypatch.setattr(triton_runtime, "fused_step", recorder)
    params = _leaves(_tensors())
    opt = optgen.optimizers.Adan(params, lr=0.01, max_grad_norm=1.5, fused=True)
    _train(opt, params, 2)
    assert len(recorder.calls) == 2
    key, kw = recorder.calls[1]
    assert key == "adan"
    assert kw["params"] == params and kw["steps"] == [2, 2] and kw["maximize"] is False
    assert set(kw["states"]) == {"exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"}
    assert all(len(v) == len(params) for v in kw["states"].values())
    assert set(kw["hyper"]) == set(SPECS["adan"].scalar_hypers) and kw["hyper"]["max_grad_norm"] == 1.5
    assert kw["options"] == {"weight_decouple": False}
    expected = sum(float((p.grad**2).sum()) for p in params)
    assert math.isclose(float(kw["global_values"]["global_sum_clip_coef_arg"]), expected, rel_tol=1e-12)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        optgen.optimizers.Adan(params, fused=True, foreach=True)


def test_fused_registers_a_compiled_spec(monkeypatch):
    recorder, registered = _FusedRecorder(), []
    monkeypatch.setattr(triton_runtime, "fused_step", recorder)
    monkeypatch.setattr(triton_runtime, "register", lambda spec: registered.append(spec) or "key-1")
    cls = optgen.compile(USER_SPEC)
    params = _leaves(_tensors())
    _train(cls(params, fused=True), params, 2)
    assert [k for k, _ in recorder.calls] == ["key-1", "key-1"]
    assert len(registered) == 1 and registered[0].name == "AdamEpsInside"


# --------------------------------------------------------------------------- optgen.compile
USER_SPEC = """\
name: AdamEpsInside
summary: Adam with eps inside the square root (a user variant).
paper: none
parity: independent
hyperparameters:
  lr:    {default: 1.0e-2, range: "(0, inf)", tex: '\\gamma'}
  betas: {default: [0.9, 0.999], names: [beta1, beta2], range: "[0, 1)", tex: ['\\beta_1', '\\beta_2']}
  eps:   {default: 1.0e-8, range: "(0, inf)", tex: '\\epsilon'}
state:
  exp_avg:    {init: 0, tex: m}
  exp_avg_sq: {init: 0, tex: v}
update: |
  exp_avg = beta1 * exp_avg + (1 - beta1) * grad
  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
  param = param - lr / (1 - beta1**step) * exp_avg / sqrt(exp_avg_sq / (1 - beta2**step) + eps)
"""


@pytest.mark.parametrize("foreach", [False, True])
def test_compiled_user_spec_trains_a_model(tmp_path, monkeypatch, foreach):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "adam_eps_inside.yaml"
    path.write_text(USER_SPEC)
    cls = optgen.compile(path)
    assert cls.__name__ == "AdamEpsInside" and issubclass(cls, torch.optim.Optimizer)
    source = Path(inspect.getsourcefile(cls))
    assert source.parent == tmp_path / "cache" / "optgen" and "class AdamEpsInside" in inspect.getsource(cls)

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = cls(model.parameters(), lr=0.02, foreach=foreach)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(150):
        last = opt.step(closure).item()
    assert last < 0.1 * first, f"loss went from {first:.4f} to {last:.4f}"


# Specs off the catalog's beaten path: an element-wise where, a per-tensor device state, a
# mean, an amax of an expression, exp/log/abs/sign, a state initialised from param, a where on
# step shared by two terms, a cross-parameter norm in a user spec.
CAUTIOUS_SPEC = """\
name: CautiousAdam
summary: Adam whose update is masked where it disagrees with the gradient.
paper: none
parity: independent
hyperparameters:
  lr:    {default: 1.0e-2, range: "(0, inf)", tex: '\\gamma'}
  betas: {default: [0.9, 0.999], names: [beta1, beta2], range: "[0, 1)", tex: ['\\beta_1', '\\beta_2']}
  eps:   {default: 1.0e-8, range: "(0, inf)", tex: '\\epsilon'}
state:
  exp_avg:    {init: 0, tex: m}
  exp_avg_sq: {init: 0, tex: v}
update: |
  exp_avg = beta1 * exp_avg + (1 - beta1) * grad
  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
  update = exp_avg / (sqrt(exp_avg_sq) + eps)
  agree = where(update * grad > 0, 1, 0)
  scale = numel(param) / (sum(agree) + 1)
  param = param - lr * update * agree * scale
"""

ODD_SPEC = """\
name: OddOne
summary: Exercises tensor-scope device state, exp/log/abs, amax, mean, init from param.
paper: none
parity: independent
hyperparameters:
  lr:    {default: 1.0e-2, range: "(0, inf)", tex: '\\gamma'}
  rho:   {default: 0.9, range: "[0, 1)", tex: '\\rho'}
  cap:   {default: 2.0, range: "(0, inf)", tex: 'c'}
state:
  scale:  {init: 1, scope: tensor, tex: s}
  anchor: {init: param, tex: a}
  acc:    {init: 0.5, tex: u}
update: |
  scale = rho * scale + (1 - rho) * amax(abs(grad))
  acc = maximum(rho * acc, abs(grad) + 0.1)
  pull = minimum(maximum(param - anchor, -cap), cap)
  step_dir = log(1 + exp(-abs(grad))) * sign(grad) + mean(grad)
  param = param - lr * (step_dir / acc + 0.01 * pull) / scale
  anchor = 0.5 * anchor + 0.5 * param
"""

STEP_SPEC = """\
name: StepDep
summary: A host-side where on step inside an element expression used twice, and a global norm.
paper: none
parity: independent
hyperparameters:
  lr:    {default: 1.0e-2, range: "(0, inf)", tex: '\\gamma'}
  warm:  {default: 3.0, range: "[0, inf)", tex: 'w'}
  clip:  {default: 1.0, range: "[0, inf)", tex: 'c'}
state:
  buf: {init: 0, tex: b}
update: |
  g = grad * minimum(1, clip / (global_norm(grad) + 1e-6))
  damp = where(step < warm, 0.5, 1)
  buf = 0.9 * buf + damp * g
  d = where(step <= 2, g, buf)
  param = param - lr * d - lr * 0.1 * d * d
"""


@pytest.mark.parametrize(
    "text", [USER_SPEC, CAUTIOUS_SPEC, ODD_SPEC, STEP_SPEC], ids=["eps-inside", "cautious", "odd", "step"]
)
def test_compiled_user_specs_match_the_reference_interpreter(text):
    spec = optgen.load(text)
    cls = optgen.compile(spec)
    init = [t.numpy() for t in _tensors(seed=4)]
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
        opt = cls(params, foreach=foreach)
        ref = Reference(spec, [{"params": [p.copy() for p in init]}])
        for t in range(1, 8):
            for p, g in zip(params, _grads(t, params)):
                p.grad = g
            opt.step()
            ref.step([g.numpy() for g in _grads(t, [torch.tensor(p) for p in ref.params])])
        for a, b in zip(params, ref.params):
            np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-12, atol=1e-14)


def test_paper_forms_do_not_compile():
    forms = catalog.specs_dir() / "forms"
    with pytest.raises(CompileError, match="gradient"):
        optgen.compile(forms / "adan_agd.yaml")


# --------------------------------------------------------------------------- bf16 state
def test_state_dtype_needs_the_fused_path():
    params = _leaves(_tensors(dtype=torch.float32))
    for kwargs in ({}, {"foreach": True}, {"foreach": False}):
        with pytest.raises(ValueError, match="state_dtype=torch.bfloat16 requires fused=True"):
            optgen.optimizers.Adam(params, state_dtype=torch.bfloat16, **kwargs)
    with pytest.raises(ValueError, match="requires fused=True"):
        optgen.optimizers.Adam(params, fused=True, state_dtype=torch.bfloat16).add_param_group(
            {"params": [torch.nn.Parameter(torch.zeros(2))], "fused": False}
        )


def test_bf16_params_and_bf16_state_train_like_float32():
    """Adam on bf16 parameters with bf16 state (the fused Triton kernels) against the foreach
    path in float32, from the same start on the same (bf16-exact) gradients.

    The bound, per element after T steps, with eps = 2^-7 the relative error of one rounding
    to bf16 (8 significant bits: 2^-8 rounding to nearest as compiled kernels do, 2^-7
    truncating as Triton's interpreter does): each step rounds the parameter (<= eps |p|)
    and each moment (relative eps; a moment's error carries over with a factor beta <= 1,
    so at step t it is at most t * eps). The update lr * m/sqrt(v) is about lr in size, so
    its error at step t is about (1 + 1/2) t eps lr, under T^2 eps lr summed over T steps.
    """
    steps, lr, eps = 5, 0.05, 2.0**-7
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(7)
    start = [torch.randn(shape, generator=g).bfloat16().to(device) for shape in ((48, 32), (70,))]
    grads = [[torch.randn(x.shape, generator=g).bfloat16().to(device) for x in start] for _ in range(steps)]
    low, ref = _leaves(start), _leaves([x.float() for x in start])
    opt = optgen.optimizers.Adam(low, lr=lr, fused=True, state_dtype=torch.bfloat16)
    _train(opt, low, steps, grads=lambda t, _: grads[t - 1])
    opt_ref = optgen.optimizers.Adam(ref, lr=lr, foreach=True)
    _train(opt_ref, ref, steps, grads=lambda t, _: [x.float() for x in grads[t - 1]])
    assert all(opt.state[p][key].dtype == torch.bfloat16 for p in low for key in ("exp_avg", "exp_avg_sq"))
    for p, q, x in zip(low, ref, start):
        assert p.dtype == torch.bfloat16
        bound = eps * (steps * q.detach().abs() + steps**2 * lr)
        assert torch.all((p.detach().float() - q.detach()).abs() <= bound)
        moved = (q.detach() - x.float()).abs()
        assert moved.max() > 2 * bound.median()  # the comparison sees the update, not just the start


# --------------------------------------------------------------------------- CPU chunks
@pytest.mark.parametrize("name", NAMES)
def test_foreach_in_cpu_chunks_matches_one_batch(name, monkeypatch):
    """The foreach path on CPU runs a few MiB of tensors at a time: with chunks of one tensor
    each, the result is that of one batch over all of them."""
    cls = cls_of(name)
    module = __import__(cls.__module__, fromlist=["_cpu_chunks"])
    start = _tensors(seed=3, matrix=name in MATRIX) + _tensors(seed=4, matrix=name in MATRIX)
    results = []
    for chunk_bytes in (1 << 30, 8):
        monkeypatch.setattr(module, "_CPU_CHUNK_BYTES", chunk_bytes)
        params = _leaves(start)
        _train(cls(params, foreach=True), params, 3)
        results.append(params)
    assert module._cpu_chunks(results[1]) == list(range(len(start)))
    for one_batch, chunked in zip(*results):
        torch.testing.assert_close(chunked, one_batch, rtol=1e-14, atol=0)
