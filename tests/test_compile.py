"""torch.compile over the catalog: a compiled `opt.step` and a compiled training step compile
once, with a tensor lr that a scheduler changes at every step, and give the eager numbers.

The step count is a tensor and, under compile, so is every host value computed from it
(bias corrections; generated/torch/*.py `_get_value`): dynamo specializes on neither, and no
value is read back to the host. A branch on the step count (SGD's first step, RAdam's
rectification) runs both sides and picks with torch.where under compile. The foreach path
traces the for-loop implementation under compile; the fused path runs between graphs
(`torch.compiler.disable`).

Most cases use dynamo's "eager" backend (the captured graph run by torch): what is counted
is dynamo's capture, which is the same for every backend, and inductor's C++ compile would
take minutes on CI's CPUs. One case runs inductor (Adam), one aot_eager (Lamb).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import optgen
import optgen.optimizers
from optgen import catalog
from optgen.matrix import matrix_location

# The step is taken (and compiled) before a scheduler wraps opt.step to count its calls, as
# torch's "compiling the optimizer" tutorial does; the scheduler then warns, on every run,
# that it saw no optimizer step. The lr it sets is what the tests check.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

STEPS = 10
# not the specs with group states (Prodigy's d, schedule-free's lr_max and weight_sum): they
# are Python floats in the param group dict, as in pytorch_optimizer and schedulefree, which
# dynamo specializes on (a recompilation per new value); tests/test_scalars.py checks that a
# compiled Prodigy step gives the eager numbers
SPECS = [n for n in catalog.names() if not any(s.scope == "group" for s in optgen.load(n).state.values())]
MATRIX_CLASSES = {optgen.load(n).name for n in SPECS if matrix_location(optgen.load(n))}
# hyperparameters that reach the interesting code (momentum, weight decay, a global clip)
OVERRIDES = {"momentum": 0.9, "weight_decay": 0.01, "max_grad_norm": 1.0}


def _settings(name: str) -> list[dict]:
    """The defaults, then each option flipped on its own."""
    options = optgen.load(name).options
    return [{}] + [{o.public: not o.default} for o in options.values() if isinstance(o.default, bool)]


CASES = [
    pytest.param(name, path, options, id=f"{name}-{path}-{'-'.join(options) or 'defaults'}")
    for name in SPECS
    for options in _settings(name)
    for path in ("forloop", "foreach")
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def float64_default():
    """float64 throughout, torch's scalar dtype too (the step count and NAdam's mu_product)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _cls(name: str):
    return getattr(optgen.optimizers, optgen.load(name).name)


def _tensor_lr_allowed(name: str, path: str) -> bool:
    """torch.optim.Adam's rule (`tensor: not_with_foreach`): no tensor lr with foreach=True."""
    spec = optgen.load(name)
    return path != "foreach" or spec.hyperparameters["lr"].tensor != "not_with_foreach"


def _make(name, path, options, dtype, tensor_lr):
    cls = _cls(name)
    keywords = inspect.signature(cls.__init__).parameters
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (5, 4), (1, 3)] if matrix_location(optgen.load(name)) else [(3, 2), (5,), (1,)]
    params = [torch.randn(shape, dtype=dtype, generator=gen, requires_grad=True) for shape in shapes]
    lr = keywords["lr"].default
    kwargs = {k: v for k, v in OVERRIDES.items() if k in keywords} | options
    groups = [
        {"params": params[:2], "lr": torch.tensor(lr, dtype=dtype) if tensor_lr else lr},
        {"params": params[2:], "lr": torch.tensor(lr / 2, dtype=dtype) if tensor_lr else lr / 2},
    ]
    opt = cls(groups, foreach=path == "foreach", **kwargs)
    return params, opt


def _run(name, path, options, dtype, compile_with=None, tensor_lr=True):
    """The parameters after STEPS steps (lr decayed at every step when it is a tensor)."""
    params, opt = _make(name, path, options, dtype, tensor_lr)
    step = torch.compile(opt.step, backend=compile_with) if compile_with else opt.step
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t)) if tensor_lr else None
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=dtype, generator=gen) + 0.5 * p.detach()
        step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach() for p in params], opt


def _graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def _unique_graphs() -> int:
    """The graphs dynamo captured (a backend may be called more than once per graph: AOT
    autograd is)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _assert_close(got, want, rtol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol)


def _in_bfloat16(name: str, options: dict) -> bool:
    """Muon's default runs Newton-Schulz in bfloat16: the traced graph's kernels may round one
    element to the other side (measured: 2e-7 relative after the lr), not 1e-12."""
    return "bf16_newton_schulz" in optgen.load(name).options and options.get("bf16_newton_schulz", True)


@pytest.mark.parametrize("name, path, options", CASES)
def test_compiled_step_compiles_once(name, path, options, float64_default):
    tensor_lr = _tensor_lr_allowed(name, path)
    want, _ = _run(name, path, options, torch.float64, tensor_lr=tensor_lr)
    counter = CompileCounter()
    got, opt = _run(name, path, options, torch.float64, counter, tensor_lr=tensor_lr)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations in {STEPS} steps"
    assert _unique_graphs() == 1
    assert _graph_breaks() == 0
    _assert_close(got, want, 1e-5 if _in_bfloat16(name, options) else 1e-12)
    if tensor_lr:  # the scheduler did change the lr the compiled steps read
        assert opt.param_groups[0]["lr"].item() == pytest.approx(opt.defaults["lr"] / (1 + STEPS), rel=1e-12)


@pytest.mark.parametrize("name", SPECS)
def test_compiled_step_float32(name):
    """Default dtypes: float32 parameters, float32 step counts and scalar states."""
    want, _ = _run(name, "forloop", {}, torch.float32)
    counter = CompileCounter()
    got, _ = _run(name, "forloop", {}, torch.float32, counter)
    assert counter.frame_count == 1
    # under compile the host values (bias corrections) are float32 tensors where eager has
    # Python floats (float64) rounded once into the update: a few float32 ulps
    _assert_close(got, want, 1e-5)


def test_the_check_sees_a_recompilation(float64_default):
    """The counter counts: a Python-float lr that a scheduler changes recompiles (dynamo
    specializes on a float; torch 2.13 then makes it dynamic), as torch.optim's does; a
    tensor lr does not (above)."""
    params, opt = _make("adam", "forloop", {}, torch.float64, tensor_lr=False)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        step()
        scheduler.step()
    assert counter.frame_count > 1


def test_inductor_adam(float64_default):
    """Adam through inductor's C++ codegen: one compilation, the eager numbers."""
    want, _ = _run("adam", "forloop", {}, torch.float64)
    got, _ = _run("adam", "forloop", {}, torch.float64, "inductor")
    assert _unique_graphs() == 1
    assert _graph_breaks() == 0
    _assert_close(got, want, 1e-12)


def test_aot_eager_lamb(float64_default):
    """Lamb (a global clip, a per-tensor trust ratio, a per-group step count) through AOT
    autograd's functionalization."""
    want, _ = _run("lamb", "foreach", {}, torch.float64)
    got, _ = _run("lamb", "foreach", {}, torch.float64, "aot_eager")
    assert _unique_graphs() == 1
    assert _graph_breaks() == 0
    _assert_close(got, want, 1e-12)


def _train(cls, compile_with, steps=STEPS):
    """A small model trained with the optimizer; with `compile_with`, the model and the
    whole training step (forward, backward, opt.step, zero_grad) are compiled, as in torch's
    tutorial "Compiling the optimizer"."""
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    lr = inspect.signature(cls.__init__).parameters["lr"].default
    # a spec with matrix operations (Muon) updates the weight matrices, as it is used
    matrices_only = cls.__name__ in MATRIX_CLASSES
    params = [p for p in model.parameters() if p.ndim == 2 or not matrices_only]
    opt = cls(params, lr=torch.tensor(lr, dtype=torch.float64))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 1, generator=gen, dtype=torch.float64)

    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    if compile_with is not None:
        model.compile(backend=compile_with)
        train_step = torch.compile(train_step, backend=compile_with)
    frames_after = []
    for _ in range(steps):
        train_step(x, y)
        scheduler.step()
        frames_after.append(compile_with.frame_count if compile_with is not None else 0)
    return [p.detach().clone() for p in model.parameters()], frames_after


# the graphs of a compiled training step: the forward, then (after the graph break at the
# backward) opt.step and zero_grad; torch.optim.Adam's step makes the same two
TRAINING_GRAPHS = 2


def test_compiled_training_step_of_torch_optim():
    counter = CompileCounter()
    _train(torch.optim.Adam, counter)
    assert counter.frame_count == TRAINING_GRAPHS


@pytest.mark.parametrize("name", SPECS)
def test_compiled_training_step(name, float64_default):
    """The graphs of the first step are all there is: nothing compiles again in the nine
    steps after, and the model trains as it does eagerly."""
    want, _ = _train(_cls(name), None)
    counter = CompileCounter()
    got, frames = _train(_cls(name), counter)
    assert frames == [TRAINING_GRAPHS] * STEPS, f"graphs after each step: {frames}"
    _assert_close(got, want, 1e-12)


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_fused_step_runs_between_graphs(name, float64_default):
    """The fused (C++) kernels are not traced: under compile a fused step runs eagerly (no
    graph), and dynamo traces its frames on the first step only (no recompilation)."""
    pytest.importorskip("optgen.backends.cpp.runtime")
    sides = [_make(name, "forloop", {}, torch.float64, tensor_lr=True) for _ in range(2)]
    for _, opt in sides:
        for group in opt.param_groups:
            group["fused"] = True
    counter = CompileCounter()
    steps = [torch.compile(sides[0][1].step, backend=counter), sides[1][1].step]
    gen = torch.Generator().manual_seed(1)
    frames = []
    for _ in range(STEPS):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in sides[0][0]]
        for (params, _), step in zip(sides, steps):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            step()
        frames.append(torch._dynamo.utils.counters["frames"]["total"])
    assert frames == [frames[0]] * STEPS, f"frames traced after each step: {frames}"
    assert counter.frame_count == 0
    _assert_close([p.detach() for p in sides[0][0]], [p.detach() for p in sides[1][0]], 1e-12)


def test_group_step_is_a_tensor_and_loads_from_a_number(float64_default):
    """A per-group step count (Lamb's group["step"]) is a 0-d tensor in the state dict; an
    optgen state dict that holds it as a Python int (before this change) loads as a tensor."""
    _, opt = _run("lamb", "forloop", {}, torch.float64)
    state = opt.state_dict()
    assert torch.is_tensor(state["param_groups"][0]["step"])
    assert state["param_groups"][0]["step"].item() == STEPS
    state["param_groups"][0]["step"] = STEPS
    _, other = _make("lamb", "forloop", {}, torch.float64, tensor_lr=True)
    other.load_state_dict(state)
    assert torch.is_tensor(other.param_groups[0]["step"])
    assert other.param_groups[0]["step"].item() == STEPS


WARMUP_SPEC = """
name: WarmSGD
summary: SGD with momentum after a linear warmup of the learning rate.
paper: 'a test spec: a step-dependent value and a step-dependent branch'
hyperparameters:
  lr:       {default: 0.1, range: "(0, inf)"}
  momentum: {default: 0.9, range: "[0, 1)"}
  warmup:   {default: 3.0, range: "(0, inf)"}
state:
  buf: {init: 0}
update: |
  rate = where(step <= warmup, lr * step / warmup, lr)
  buf = momentum * buf + grad
  param = where(step > 2, param - rate * buf, param - rate * grad)
"""


@pytest.mark.parametrize("foreach", [False, True])
def test_a_new_spec_with_step_dependent_branches(foreach, float64_default):
    """Beyond the catalog: a warmup (a conditional host value) and a branch on the step
    count compile once and give the eager numbers across the switch at steps 3 and 4."""
    cls = optgen.compile(WARMUP_SPEC)

    def run(compile_with):
        gen = torch.Generator().manual_seed(3)
        params = [
            torch.randn(4, 3, generator=gen, requires_grad=True),
            torch.randn(2, generator=gen, requires_grad=True),
        ]
        opt = cls(params, lr=torch.tensor(0.1), foreach=foreach)
        # compiled before the scheduler wraps opt.step: dynamo does not trace that wrapper
        # (around torch.optim's step too), a graph break before the step's own graph
        step = torch.compile(opt.step, backend=compile_with) if compile_with else opt.step
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)
        for _ in range(STEPS):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) + 0.5 * p.detach()
            step()
            scheduler.step()
        return [p.detach() for p in params]

    want = run(None)
    counter = CompileCounter()
    got = run(counter)
    assert counter.frame_count == 1
    assert _graph_breaks() == 0
    _assert_close(got, want, 1e-12)
