"""The torch backend's generated code reads like hand-written torch.optim code: no test the
code could not fail (`param.ndim >= 1` where the rank is known), no option test repeated
inside a loop the option does not change, one rank check for a matrix spec, made before
any tensor is updated. And the rank-aware printing stays correct against the Reference on
tensors of every rank."""

from __future__ import annotations

import ast
import re
import textwrap

import numpy as np
import pytest
import torch

import optgen
from optgen.backends.torch.module import render_module
from optgen.parse import loads
from optgen.reference import Reference

PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}}


def _functions(text: str) -> dict[str, str]:
    """The generated module's top-level functions by name."""
    tree = ast.parse(text)
    return {n.name: ast.get_source_segment(text, n) for n in tree.body if isinstance(n, ast.FunctionDef)}


def _block(text: str, header: str) -> list[str]:
    """The lines of the first block (`for ...:`, `if ...:`) whose header starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header))
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return body


@pytest.fixture(scope="module")
def muon_functions() -> dict[str, str]:
    return _functions(render_module(optgen.load("muon"), "# test"))


@pytest.mark.parametrize("fn", ["_single_tensor_muon", "_multi_tensor_muon"])
def test_muon_newton_schulz_loop_is_the_same_for_every_option(muon_functions, fn):
    """bf16_newton_schulz changes how X is made, not the iteration: the loop and the
    transposes around it are printed once, outside `if bf16_newton_schulz:`."""
    body = _block(muon_functions[fn], "for _ in range(int(ns_steps)):")
    assert len(body) == 3, body
    assert not any("bf16_newton_schulz" in line for line in body), body
    text = muon_functions[fn]
    assert text.count("X.mT if ") == 2, text  # onto the short side and back, once each


@pytest.mark.parametrize("fn", ["_single_tensor_muon", "_multi_tensor_muon"])
def test_muon_has_one_rank_check_and_no_dead_rank_tests(muon_functions, fn):
    text = muon_functions[fn]
    assert text.count(".ndim != 2:") == 1, text
    assert "ndim >= " not in text and "reshape_as" not in text, text
    check = text.index(".ndim != 2:")
    assert check < text.index("_foreach_lerp_" if "multi" in fn else "lerp_("), "checked before any update"


def test_muon_stacks_straight_into_the_newton_schulz_variable(muon_functions):
    """A stack that only starts X is made as X: no `X = update_stack` copy line."""
    text = muon_functions["_multi_tensor_muon"]
    assert "X = torch.stack([updates[i].bfloat16() for i in idx])" in text, text
    assert not re.search(r"^ *X = \w+_stack$", text, re.MULTILINE), text


def test_adafactor_sizes_inside_a_rank_branch_are_plain():
    text = render_module(optgen.load("adafactor"), "# test")
    assert "ndim >= 1 else 1" not in text and "ndim >= 2 else 1" not in text
    assert "value=one_minus_beta2 / param.size(-1))" in text


@pytest.mark.parametrize("fn, param", [("_single_tensor_adafactor", "param"), ("_multi_tensor_adafactor", "params[0]")])
def test_adafactor_rank_rules_are_one_if_else(fn, param):
    """The factored and the unfactored rule, each written under `if ndim(param) ...:` in the
    spec, print as one `if`/`else` as in torch.optim.Adafactor."""
    text = _functions(render_module(optgen.load("adafactor"), "# test"))[fn]
    update = text[text.index("_foreach_add_(state_steps" if "multi" in fn else "step_t += 1") :]
    assert update.count(f"if {param}.ndim") == 1 and f"{param}.ndim <= 1" not in update, update


@pytest.mark.parametrize("name", ["muon", "adafactor"])
def test_whole_tensor_specs_print_no_shard_code(name):
    """Matrix blocks and axis reductions refuse sharded (DTensor) parameters up front: no
    code that combines shards' partial results follows."""
    text = render_module(optgen.load(name), "# test")
    assert "sharded (DTensor) parameters are not supported" in text
    assert "shard_groups" not in text and "_local_shards" not in text and "_all_reduce_partials" not in text


def _undefined_names(text: str) -> set[str]:
    """Private module-level names the module reads but never defines."""
    tree = ast.parse(text)
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defined |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return {n for n in used - defined if n.startswith("_") and n != "_"}


@pytest.mark.parametrize("name", ["muon", "adafactor", "adam", "lars", "sized_norm"])
def test_every_helper_the_module_calls_is_defined(name):
    """A spec that needs whole tensors yet reduces per tensor (cols(param) beside norm(m))
    still defines the shard helpers its text names."""
    spec = loads(SIZED_NORM, "sized_norm.yaml") if name == "sized_norm" else optgen.load(name)
    assert _undefined_names(render_module(spec, "# test")) == set()


@pytest.mark.parametrize("path", PATHS)
def test_muon_checks_every_rank_before_updating_any_tensor(path):
    """A vector among matrices is a ValueError before anything changes (torch.optim.Muon
    checks in _init_group)."""
    Muon = optgen.compile(optgen.load("muon"))
    good = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    bad = torch.ones(5, dtype=torch.float64, requires_grad=True)
    good.grad, bad.grad = torch.full_like(good, 0.5), torch.full_like(bad, 0.5)
    opt = Muon([good, bad], lr=0.1, **PATHS[path])
    with pytest.raises(ValueError, match="needs a 2-D parameter"):
        opt.step()
    assert torch.equal(good, torch.ones(3, 4, dtype=torch.float64))
    assert not torch.any(opt.state[good]["momentum_buffer"])


@pytest.mark.parametrize("path", PATHS)
def test_muon_checks_its_loop_count_before_updating_any_tensor(path):
    Muon = optgen.compile(optgen.load("muon"))
    p = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.full_like(p, 0.5)
    opt = Muon([p], lr=0.1, **PATHS[path])
    opt.param_groups[0]["ns_steps"] = 2.5
    with pytest.raises(ValueError, match="the loop count must be an integer"):
        opt.step()
    assert torch.equal(p, torch.ones(3, 4, dtype=torch.float64))
    assert not torch.any(opt.state[p]["momentum_buffer"])
    body = _functions(render_module(optgen.load("muon"), "# test"))["_single_tensor_muon"]
    assert body.count("the loop count must be") == 1
    assert body.index("the loop count must be") < body.index("for i, param in enumerate(params):")


SIZES = textwrap.dedent(
    """\
    name: Sizes
    summary: a test spec reading rows(param) and cols(param) with and without a rank rule
    paper: none
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: '(0, inf)', tex: '\\gamma'}
    state:
      m: {init: 0, tex: m}
    update: |
      m = 0.5 * m + grad
      if ndim(param) >= 2:
          u = m + mean(m * m, axis=-1) * rows(param)
      else:
          u = m * (rows(param) + 2 * cols(param))
      param = param - lr * u / (cols(param) + rows(param))
    """
)
SHAPES = [(), (4,), (3, 5), (6, 2), (2, 3, 4)]
SIZED_NORM = SIZES.split("update: |")[0] + textwrap.dedent(
    """\
    update: |
      m = 0.5 * m + grad
      param = param - lr * cols(param) * m / (norm(m) + 1)
    """
)


@pytest.mark.parametrize(
    "fn, header", [("_single_tensor_sizes", "if param.ndim >= 2:"), ("_multi_tensor_sizes", "if params[0].ndim >= 2:")]
)
def test_sizes_print_by_what_the_branch_knows(fn, header):
    """Under `if ndim(param) >= 2:` rows(param) is the size; elsewhere it is tested."""
    text = _functions(render_module(loads(SIZES, "sizes.yaml"), "# test"))[fn]
    branch = "\n".join(_block(text, header))
    assert "param.size(-2) * torch.mean(" in branch and "ndim >=" not in branch, branch
    assert "(param.size(-2) if param.ndim >= 2 else 1)" in text  # the step size, for any rank


@pytest.mark.parametrize("path", PATHS)
def test_sizes_match_the_reference_on_every_rank(path):
    spec = loads(SIZES, "sizes.yaml")
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s) for s in SHAPES]
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = optgen.compile(spec)(params, lr=0.05, **PATHS[path])
    ref = Reference(spec, [{"params": [p.copy() for p in init], "lr": 0.05}])
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
        ref.step(grads)
    for p, want, p0 in zip(params, ref.params, init):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-14)
        assert np.max(np.abs(want - p0)) > 1e-3
