"""What the fused path (C++ kernels on CPU, Triton on GPUs) compiles: its kernels are
elementwise passes with per-tensor, axis (over the last two dims: optgen/backends/fused_axes.py)
and global reductions between them; a spec with matrix operations runs as stages of them with
its matrix blocks through torch between (optgen/backends/fused_matrix.py). A spec that needs
more (reductions over other axes, group states, sums over all parameters that read states)
gets one message that names what it uses: fused=True raises ValueError with it at
construction, `optgen check` reports it as a warning, and no kernels are generated. Never a
silent fallback."""

from __future__ import annotations

from . import group_state, matrix, shapes


def fused_refusal(spec) -> str:
    """Why the fused path does not compile `spec` ("" when it does)."""
    # a matrix spec runs in stages (optgen/backends/fused_matrix.py), which read its
    # rows(param) / cols(param) themselves: its message names only what the stages do not run
    reasons = [matrix.fused_refusal(spec) if matrix.matrix_location(spec) else shapes.fused_refusal(spec)]
    if group_state.fused_unsupported(spec):
        reasons.append(group_state.fused_message(spec))
    return " ".join(r for r in reasons if r)
