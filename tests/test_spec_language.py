"""Spec-language features real optimizers needed (issue 9, section 5): every-k schedules
(`%`, `//` on step), snapshot states, YAML numerals, all errors at once, `tex:` on values."""

from __future__ import annotations

import textwrap

import pytest

import optgen
from optgen.errors import SpecError
from optgen.parse import loads

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
