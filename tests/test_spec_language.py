"""Spec-language features real optimizers needed (issue 9, section 5): every-k schedules
(`%`, `//` on step), snapshot states, YAML numerals, all errors at once, `tex:` on values."""

from __future__ import annotations

import textwrap

import pytest

import optgen
from optgen.errors import SpecError
from optgen.lower import lower
from optgen.parse import loads
from optgen.reference import Reference

TINY = textwrap.dedent(
    """\
    name: Tiny
    summary: A tiny momentum method.
    parity: independent
    hyperparameters:
      lr: {default: LR, range: "(0, inf)"}
      betas: {default: [B1, B2], names: [beta1, beta2], range: "[0, 1)"}
      eps: {default: EPS, range: "[0, 1e-1]"}
    state:
      buf: {init: INIT}
    update: |
      buf = beta1 * buf + (1 - beta1) * grad
      param = param - lr * beta2 * buf / (1 + eps)
    """
)


def tiny(lr="0.001", b1="0.9", b2="0.99", eps="0.00000001", init="0.001") -> str:
    return TINY.replace("LR", lr).replace("B1", b1).replace("B2", b2).replace("EPS", eps).replace("INIT", init)


# --------------------------------------------------------------------------- YAML numerals
def test_numerals_without_a_dot_are_numbers_everywhere():
    """PyYAML reads `1e-3` as text; it is a number in defaults, tuple defaults, ranges and
    inits alike, and gives the same spec as the dotted spelling."""
    dotted = loads(tiny(), "t.yaml")
    bare = loads(tiny(lr="1e-3", b1="9e-1", b2="+99e-2", eps="1e-8", init="1e-3"), "t.yaml")
    for key in ("lr", "betas", "eps"):
        assert bare.hyperparameters[key].default == dotted.hyperparameters[key].default
    assert bare.hyperparameters["eps"].range.hi == 0.1
    assert bare.state["buf"].init == dotted.state["buf"].init
    assert optgen.check(bare).ok


@pytest.mark.parametrize("field", ["lr", "b1", "eps"])
@pytest.mark.parametrize("text", ["fast", "1e-3x", "e-3", "'1/3'", "nan", ".inf"])
def test_text_that_is_not_a_numeral_is_still_refused(field, text):
    with pytest.raises(SpecError) as info:
        loads(tiny(**{field: text}), "t.yaml")
    line = {"lr": 5, "b1": 6, "eps": 7}[field]
    assert str(info.value).startswith(f"t.yaml:{line}:")
    assert "expected a number" in info.value.message or "finite" in info.value.message


# --------------------------------------------------------------------------- running every path
PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]
SHAPES = [(3, 2), (5,), (1,)]


def _run_paths(spec, steps: int, **kw):
    """Each path's parameters and optimizer after `steps` steps on fixed float64 gradients,
    and the gradients, for a hand-written loop to replay."""
    import torch

    cls = optgen.compile(spec)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]
    out = []
    for flag in PATHS:
        params = [p.clone().requires_grad_() for p in start]
        opt = cls(params, **flag, **kw)
        for g in grads:
            for p, x in zip(params, g):
                p.grad = x.clone()
            opt.step()
        out.append((flag, params, opt))
    return [p.numpy() for p in start], [[x.numpy() for x in g] for g in grads], out


def _close(flag, got, want) -> None:
    """float64 paths agree to rounding; the fused path computes in float32."""
    import numpy as np

    rtol = 1e-5 if flag.get("fused") else 1e-12
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=rtol, atol=rtol * 1e-2, err_msg=str(flag))


# --------------------------------------------------------------------------- snapshot states
L2SP = textwrap.dedent(
    """\
    name: L2SP
    summary: SGD decayed towards the starting point (L2-SP, Li et al. 2018).
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)"}
      alpha: {default: 0.5, range: "[0, inf)"}
    state:
      start: {init: param}
      lr0: {init: lr, scope: tensor}
    update: |
      param = param - lr0 * (grad + alpha * (param - start))
    """
)


def test_a_snapshot_state_is_set_once_and_read_on_every_path():
    """`start` and `lr0` are set by their init and never assigned: allowed, kept in the
    state dict, never written back, and the result is the hand-written loop's."""
    import numpy as np

    spec = loads(L2SP, "l2sp.yaml")
    assert optgen.check(spec).ok
    program = lower(spec)
    assert set(program.writes) == {"param"}
    start, grads, runs = _run_paths(spec, 6, lr=0.25)  # exact in float32 (a tensor state's dtype)
    want = [p.copy() for p in start]
    for g in grads:
        want = [p - 0.25 * (x + 0.5 * (p - p0)) for p, x, p0 in zip(want, g, start)]  # lr0: lr at step 1
    for flag, params, opt in runs:
        for p, w, p0 in zip(params, want, start):
            _close(flag, p, w)
            state = opt.state[p]
            assert set(state) == {"step", "start", "lr0"}
            np.testing.assert_array_equal(state["start"].numpy(), p0)  # never written back
            assert float(state["lr0"]) == 0.25
        assert {"start", "lr0"} <= set(opt.state_dict()["state"][0])
    ref = Reference(spec, [{"params": start, "lr": 0.25}])
    for g in grads:
        ref.step(g)
    for p, w in zip(ref.params, want):
        np.testing.assert_allclose(p, w, rtol=1e-13)


def test_a_snapshot_that_nothing_reads_is_still_an_error():
    text = L2SP.replace("lr0 * (grad", "lr * (grad")
    report = optgen.check(loads(text, "l2sp.yaml"))
    assert [(f.loc.line, f.message.split(" (")[0]) for f in report.findings if f.severity == "error"] == [
        (9, "state `lr0` never influences the parameter update")
    ]
