"""The update equations as reStructuredText, for the docstrings of generated classes.

The fragment is the algorithm box of the LaTeX documents (same code path), in a `.. math::`
block as in torch.optim's docstrings. It is meant for a raw docstring (r\"\"\"...\"\"\"): it
contains backslashes, and never a quote character."""

from __future__ import annotations

from ...spec import Spec
from .algorithm import aligned, box_lines


def math_rst(spec: Spec, indent: str = "") -> str:
    """A `.. math::` block with the algorithm box of `spec`; each line prefixed by `indent`."""
    block = ".. math::\n" + aligned(box_lines(spec), indent="   ")
    if '"' in block or "'''" in block:
        raise ValueError(f"{spec.name}: the math block would end a docstring early")
    return "\n".join(indent + line if line else line for line in block.splitlines())
