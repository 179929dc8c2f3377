"""The foreach path on CPU cuts a tensor larger than a chunk into chunk-sized views when the
update is elementwise (so that temporaries stay chunk-sized), and never when a per-tensor
reduction needs the whole tensor: parity with the for-loop path either way, and the step of
a split tensor moves once."""

from __future__ import annotations

import pytest
import torch

optimizers = pytest.importorskip("optgen.optimizers", reason="the torch backend is not built")

import optgen
from optgen import catalog
from optgen.backends.torch.emit import elementwise
from optgen.lower import lower

CHUNK = 1 << 21  # _CPU_CHUNK_BYTES of the generated modules
LARGE = CHUNK // 4 * 2 + 1234  # float32 elements: two full chunks and a partial one
SHAPES = [(LARGE,), (300, 7), (5,)]


def _largest_foreach_operand(monkeypatch, run):
    """Run `run()` and return the largest numel any torch._foreach_* op received."""
    seen = [0]
    for name in dir(torch):
        if name.startswith("_foreach_"):
            real = getattr(torch, name)

            def spy(*args, _real=real, **kwargs):
                for a in args:
                    if isinstance(a, (list, tuple)) and a and torch.is_tensor(a[0]):
                        seen[0] = max(seen[0], max(t.numel() for t in a))
                return _real(*args, **kwargs)

            monkeypatch.setattr(torch, name, spy)
    run()
    monkeypatch.undo()
    return seen[0]


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad", "Lion", "Adan"])
def test_large_tensor_split_matches_for_loop(name, monkeypatch):
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(3)]
    kwargs = {"momentum": 0.9} if name == "SGD" else {}
    loop = [p.clone().requires_grad_() for p in start]
    oloop = cls(loop, foreach=False, **kwargs)
    for gs in grads:
        for p, g in zip(loop, gs):
            p.grad = g.clone()
        oloop.step()
    fe = [p.clone().requires_grad_() for p in start]
    ofe = cls(fe, foreach=True, **kwargs)

    def steps():
        for gs in grads:
            for p, g in zip(fe, gs):
                p.grad = g.clone()
            ofe.step()

    largest = _largest_foreach_operand(monkeypatch, steps)
    assert largest <= CHUNK // 4, f"a foreach op saw {largest} elements"
    for a, b in zip(loop, fe):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        assert float(ofe.state[b]["step"]) == float(oloop.state[a]["step"]) == 3.0
        for key, value in oloop.state[a].items():
            if torch.is_tensor(value) and value.numel() > 1:
                assert torch.allclose(ofe.state[b][key], value, rtol=1e-6, atol=1e-7), key


@pytest.mark.parametrize("name", ["Lamb", "SETAdam", "LARS"])
def test_per_tensor_reductions_see_the_whole_tensor(name, monkeypatch):
    """Per-tensor norms (trust ratios) are not split: the foreach path still matches the
    for-loop path on a tensor larger than a chunk."""
    cls = getattr(optimizers, name)
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(2)]
    sides = {}
    for flag in (False, True):
        ps = [p.clone().requires_grad_() for p in start]
        opt = cls(ps, foreach=flag)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        sides[flag] = ps
    for a, b in zip(sides[False], sides[True]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_which_programs_are_elementwise():
    """Per-tensor reductions, per-tensor states and numel/ndim keep a tensor whole."""
    kinds = {name: [elementwise(lower(optgen.load(name), o)) for o in optgen.load(name).option_combinations()]
             for name in catalog.names()}  # fmt: skip
    assert all(kinds["adam"]) and all(kinds["sgd"]) and all(kinds["adan"])
    assert not any(kinds["setadam"]) and not any(kinds["lars"]) and not any(kinds["nadam"])
    lamb = optgen.load("lamb")
    assert [elementwise(lower(lamb, o)) for o in lamb.option_combinations()] == [
        o["adam"] for o in lamb.option_combinations()
    ]


def test_non_contiguous_large_tensor_is_kept_whole():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(1100, 1000, generator=gen)
    g = torch.randn(1000, 1100, generator=gen)
    a = base.clone().t().requires_grad_()
    b = base.clone().t().contiguous().requires_grad_()
    for p, flag in ((a, True), (b, False)):
        opt = optimizers.Adam([p], foreach=flag)
        p.grad = g.clone()
        opt.step()
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
