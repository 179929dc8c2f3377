"""What the fused path (C++ kernels on CPU, Triton on GPUs) compiles: its kernels are
elementwise passes with per-tensor, axis (over an (outer, rows, cols) view of each tensor:
optgen/backends/fused_axes.py) and global reductions between them, group states as host
scalars (optgen/backends/fused_groups.py); a spec with matrix operations runs as stages of
them with its matrix blocks through torch between (optgen/backends/fused_matrix.py). A spec
that needs more (axis sets no one view gives, with or without matrix operations) gets one
message that names what it uses: fused=True raises ValueError with it at construction,
`optgen check` reports it as a warning, and no kernels are generated. Never a silent
fallback."""

from __future__ import annotations

from . import matrix, shapes


def fused_refusal(spec) -> str:
    """Why the fused path does not compile `spec` ("" when it does)."""
    # a matrix spec runs in stages (optgen/backends/fused_matrix.py), which read its
    # rows(param) / cols(param) themselves: its message names only what the stages do not run
    if matrix.matrix_location(spec):
        return matrix.fused_refusal(spec)
    return shapes.fused_refusal(spec) or ""
