"""Shape classes of the values the schedule combines (element, reduced over axes, scalar).

In-place primitives cannot grow their output, so an expression that mixes a row vector
with a matrix is printed whole, as one broadcasting expression, not decomposed."""

from __future__ import annotations

import sympy

from ....expr import axis_reductions_in
from ....shapes import ELEMENT, SCALAR, Shape, shape_of
from ..prepare import Prepared


class ShapeClasses:
    def __init__(self, p: Prepared):
        self.shapes = _shapes(p)

    def mixed(self, expr) -> bool:
        """Whether expr combines tensors of different shape classes (a row vector and a
        matrix)."""
        if not self.shapes:
            return False
        shapes, operands = dict(self.shapes), {}
        for i, reduction in enumerate(axis_reductions_in(expr)):  # an operand of its own shape
            operand = sympy.Symbol(f"_axis_reduction_{i}", real=True)
            shapes[operand.name], operands[reduction] = shape_of(reduction, self.shapes, None, None), operand
        expr = expr.xreplace(operands)
        result = shape_of(expr, shapes, None, None)
        return any(not shapes.get(s.name, SCALAR).is_scalar and shapes[s.name] != result for s in expr.free_symbols)


def _shapes(p: Prepared) -> dict:
    """IR name -> shape class, when the program has axis structure (else empty: nothing to
    check, and the schedule of an elementwise program is unchanged)."""
    program = p.program
    if not program.has_axes:
        return {}
    shapes = {name: ELEMENT for name, scope in program.input_scopes.items() if scope == "element"}
    shapes.update({s.name: Shape(frozenset(s.axes)) for s in program.states if s.scope == "element"})
    shapes.update({v.name: v.shape for v in p.values})
    return shapes
