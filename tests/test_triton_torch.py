"""The torch optimizer classes with fused=True (which call the Triton runtime) against the
same classes' foreach path: every catalog class, default options, an lr scheduler."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import optgen
from optgen.backends.fused_matrix import is_matrix_spec
from optgen.fused_support import fused_refusal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_triton_harness import DEVICE, RTOL

optimizers = pytest.importorskip("optgen.optimizers", reason="the torch backend is not built")

# Keywords that make every term of an update run (each only where the class takes it).
KEYWORDS = {"weight_decay": 0.05, "momentum": 0.9, "max_grad_norm": 0.5}

# the optimizers the fused kernels run whole (matrix specs run in stages: tests/test_fused_matrix.py)
FUSED = [
    n
    for n in optimizers.__all__
    if not fused_refusal(optgen.load(n.lower())) and not is_matrix_spec(optgen.load(n.lower()))
]


def _construct(cls, params, **flags):
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(params, **{k: v for k, v in KEYWORDS.items() if k in accepted}, **flags)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale else diff


# the classes the fused path runs (the others refuse fused=True: tests/test_matrix.py, test_axes.py)
@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_foreach(name):
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,), (1,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    sides = {}
    for flag in ("foreach", "fused"):
        params = [p.clone().to(DEVICE).requires_grad_() for p in start]
        opt = _construct(cls, params, **{flag: True})
        sides[flag] = (params, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 + 0.3 * (t % 3)))
    for _ in range(10):
        grads = [torch.randn(s, generator=gen).to(DEVICE) for s in shapes]
        for params, opt, sched in sides.values():
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
            sched.step()
    (pa, oa, _), (pb, ob, _) = sides["foreach"], sides["fused"]
    for a, b in zip(pb, pa):
        assert _rel(a.detach(), b.detach()) <= RTOL, name
        for key, value in oa.state[b].items():
            if torch.is_tensor(value) and key in ob.state[a] and value.is_floating_point():
                assert _rel(ob.state[a][key].float(), value.float()) <= RTOL, (name, key)
