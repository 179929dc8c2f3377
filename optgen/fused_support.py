"""What the fused path (C++ kernels on CPU, Triton on GPUs) compiles: its kernels are
elementwise passes with per-tensor and global reductions between them. A spec that needs
more (matrix operations, axis reductions, rank rules) gets one message that names what it
uses: fused=True raises ValueError with it at construction, `optgen check` reports it as a
warning, and no kernels are generated. Never a silent fallback."""

from __future__ import annotations

from . import matrix, shapes


def fused_refusal(spec) -> str:
    """Why the fused path does not compile `spec` ("" when it does)."""
    # a matrix spec's message covers its rows(param) / cols(param) too: said once
    reasons = [matrix.fused_refusal(spec) or shapes.fused_refusal(spec)]
    return " ".join(r for r in reasons if r)
