"""Harness for the fused C++ kernels: the Triton harness (tests/test_triton_harness.py: the
fused runtime side by side with the float64 Reference interpreter), run through
optgen.backends.cpp.runtime instead."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_triton_harness as triton_harness
from test_triton_harness import OVERRIDES, max_rel, option_settings  # noqa: F401

from optgen.backends.cpp import compiler, runtime
from optgen.errors import SetupError


def have_compiler() -> bool:
    try:
        compiler.compiler()
    except SetupError:
        return False
    return True


needs_compiler = pytest.mark.skipif(not have_compiler(), reason="no C++ compiler")


@pytest.fixture(autouse=True)
def _cpu_kernels(monkeypatch):
    """fused=True on CPU tensors runs the C++ kernels (the suite sets TRITON_INTERPRET=1 for
    the Triton tests, which would route CPU tensors to Triton's interpreter)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


class Harness(triton_harness.Harness):
    """Triton's harness, stepping the fused side with the C++ runtime, on CPU tensors."""

    def __init__(self, *args, **kwargs):
        with _cpu_runtime():
            super().__init__(*args, **kwargs)
        for side in self.sides:
            side.__class__ = _Side

    def step(self, t: int, present=None) -> None:
        with _cpu_runtime():
            super().step(t, present)


class _Side(triton_harness.Side):
    """Per-tensor states in `state_dtype` too (the Triton harness keeps them in float32)."""

    def init_states(self, hyper, grads, maximize) -> None:
        super().init_states(hyper, grads, maximize)
        if self.state_dtype is None:
            return
        for s in self.program.states:
            if s.scope == "tensor":
                self.states[s.name] = [t if t is None else t.to(self.state_dtype) for t in self.states[s.name]]


@contextlib.contextmanager
def _cpu_runtime():
    saved = triton_harness.runtime, triton_harness.DEVICE
    triton_harness.runtime, triton_harness.DEVICE = runtime, torch.device("cpu")
    try:
        yield
    finally:
        triton_harness.runtime, triton_harness.DEVICE = saved


def run(name: str, shapes, steps: int = 3, **kwargs) -> Harness:
    h = Harness(name, [{"shapes": shapes}], **kwargs)
    for t in range(1, steps + 1):
        h.step(t)
    return h


def state_of(h: Harness, name: str, k: int):
    """The reference's value of state `name` for flat tensor k."""
    key = next(s.key for s in h.program.states if s.name == name)
    return h.ref.state[k][key]


def float_params(h: Harness) -> list[torch.Tensor]:
    return [p for side in h.sides for p in side.params]
