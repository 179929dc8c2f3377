"""The passes of a C++ kernel whose program reduces over axes or keeps reduced-shape states
(optgen/backends/fused_axes.py has the plan: slot vectors indexed from the flat offset).

Such a pass loops over its block row by row, then over the row's elements: the row's slot
(`_k_row`) and its matrix's (`_k_mat`) are constants of the inner loop, a column's slot
(`_k_col`) is the element's index shifted, so the inner loop needs no integer division,
reads reduced states and earlier passes' axis reductions contiguously, and vectorises
(`#pragma omp simd`). Values constant along a row are computed once per row, and so are the
reciprocals of row constants an element value divides by. `_own_row` says whether the
element owns its slot. A row or matrix reduction accumulates the row in a local (a simd
reduction) and adds it into the slot with an atomic after the row: one per row and block.
A column reduction adds each element into its slot: plainly when one thread runs the pass,
else with an atomic (blocks of one matrix run on several threads), in a loop without simd.
The update pass's owners write reduced states' new values into their slot vectors (a row's
after its loop), which run_update copies into the states after every block has read the
old ones.
"""

from __future__ import annotations

import sympy

from ...expr import COLS, GRAD, ROWS
from .. import fused_axes
from ..fused_axes import IDENTITY, TAGS, AxisValue
from .kernels import _SIMD_OP, Pass, PassBuilder, RowLoop
from .kernels import IDENTITY as TENSOR_IDENTITY
from .printer import CppPrinter

_C_IDENTITY = {"sum": "0.0", "min": "INFINITY", "max": "-INFINITY"}


slots_of = fused_axes.slots_of
reduced_states = fused_axes.reduced_tags


class AxisPassBuilder(PassBuilder):
    """PassBuilder for programs with axis reductions, reduced states or rows/cols."""

    def build(self, role: str, targets: list[str], stores: bool) -> Pass:
        kernel = self.kernel
        slots = [name for name, _, _ in kernel.axis_slots]
        need = self.program.pass_closure(targets)
        values = [v for v in self.program.values if v.name in need and v.scope != "host"]
        loaded = [v for v in values if v.is_reduction and v.name not in targets]
        computed = [v for v in values if v not in loaded]
        scalar = [v for v in computed if v.scope in ("tensor", "global") and not v.is_reduction]
        element = [v for v in computed if v not in scalar]
        outputs = self.program.outputs if stores else {}
        tensor_outputs = {s: v for s, v in outputs.items() if s in kernel.tensor_states}
        element_outputs = {s: v for s, v in outputs.items() if s not in kernel.tensor_states}
        reads = {s for v in computed for s in self._reads(v)} | set(outputs.values())
        loop_reads = {s for v in element for s in self._reads(v)} | set(element_outputs.values())
        axis_loaded = [v for v in loaded if isinstance(v, AxisValue) and v.name in loop_reads]
        axis_targets = [v for v in element if isinstance(v, AxisValue)]

        prologue = self._scalar_loads(reads, [v for v in loaded if not isinstance(v, AxisValue)])
        prologue += [f"const real {n} = real(_c.{n}[_t]);" for n in (ROWS, COLS) if n in reads]
        prologue += [f"const real {v.name} = {self._print(v)};" for v in scalar]
        stored = {s: v for s, v in element_outputs.items() if s in kernel.reduced_arrays and s != v}
        for name in [v.name for v in axis_loaded + axis_targets] + list(stored):
            k = slots.index(name)
            prologue.append(
                f"double* const _slot_{name} = _c.axis_values + _c.axis_offsets[_t * NUM_AXIS_SLOTS + {k}];"
            )
        arrays = [a for a in kernel.arrays if a in loop_reads or a in element_outputs]
        tags = {kernel.reduced_arrays[a] for a in arrays if a in kernel.reduced_arrays}
        tags |= {v.tag for v in axis_loaded + axis_targets}
        by_rows = bool(tags) or any(f"_own_{t}" in loop_reads for t in TAGS.values())
        variant = self._per_element(element, arrays, axis_loaded) if by_rows else None
        self._reciprocals: dict = {}
        # a row's (matrix's) new reduced state is written once, after the row's loop, when it is
        # a row constant: a store to one address from inside the loop keeps it from vectorising
        after_row = {s for s, v in stored.items() if kernel.reduced_arrays[s] != "col" and v not in (variant or ())}
        owners = {t for t in TAGS.values() if f"_own_{t}" in loop_reads}
        owners |= {kernel.reduced_arrays[s] for s in stored if s not in after_row}
        if by_rows:
            prologue.insert(0, "const int64_t _nrows = _c.rows[_t], _ncols = _c.cols[_t];")
        head, loop = _index_lines(tags, owners, {kernel.reduced_arrays[s] for s in after_row})
        for a in arrays:
            if a in loop_reads:
                sign = "_sign * " if a == GRAD else ""
                at = f"_k_{kernel.reduced_arrays[a]}" if a in kernel.reduced_arrays else "_i"
                line = f"const real {a} = {sign}to_real({a}_ptr[{at}]);"
                (loop if at in ("_i", "_k_col") else head).append(line)
        for v in axis_loaded:
            line = f"const real {v.name} = real(_slot_{v.name}[_k_{v.tag}]);"
            (loop if v.tag == "col" else head).append(line)
        simd, epilogue, tensor_slots = [], [], []
        rows = RowLoop(head, [], [], [])
        sums = [g.name for g in kernel.global_sums]
        slot_names = [r.name for r in kernel.reductions]
        for v in element:
            if isinstance(v, AxisValue):
                simd += self._axis_step(v, loop, rows)
            elif v.is_reduction:
                arg = v.expr.name
                loop.append(
                    f"{v.name} += {arg};" if v.reduce == "sum" else f"{v.name} = std::{v.reduce}({v.name}, {arg});"
                )
                prologue.append(f"real {v.name} = real({TENSOR_IDENTITY[v.reduce]});")
                simd.append(f"reduction({_SIMD_OP[v.reduce]} : {v.name})")
                slot = sums.index(v.name) if v.over == "global" else slot_names.index(v.name)
                epilogue.append(f"_partial[{slot}] = {v.name};")
                tensor_slots.append((slot, v.reduce))
            elif variant is None:  # a plain loop over the block: no rows
                loop.append(f"const real {v.name} = {self._print(v)};")
            elif v.name in variant:
                loop.append(f"const real {v.name} = {self._per_row_reciprocals(v, variant, head)};")
            else:
                head.append(f"const real {v.name} = {self._print(v)};")
        if rows.shared:
            prologue.append("const bool _alone = axis_alone();")
        for state, value in element_outputs.items():
            if state in after_row:
                tag = kernel.reduced_arrays[state]
                first = "_from == _row_start" if tag == "row" else "(_r == 0) & (_from == _row_start)"
                rows.tail.append(f"if ({first}) _slot_{state}[_k_{tag}] = double({value});")
            elif state in stored:
                tag = kernel.reduced_arrays[state]
                loop.append(f"if (_own_{tag}) _slot_{state}[_k_{tag}] = double({value});")
            elif state not in kernel.reduced_arrays:
                loop.append(f"{state}_ptr[_i] = from_real<{state}_t>({value});")
        for state, value in tensor_outputs.items():
            epilogue.append(
                f"if (_first) static_cast<{state}_t*>(_c.tensor_states[{self._ts(state)} * _c.num_tensors + _t])[0] = "
                f"from_real<{state}_t>({value});"
            )
        fills = [(slots.index(v.name), _C_IDENTITY[v.reduce]) for v in axis_targets]
        doc = _doc(role, targets, outputs, bool(stored))
        result = Pass(role, doc, prologue, loop, epilogue, " ".join(simd), arrays, tensor_slots)
        result.rows = rows if by_rows else None
        result.axis_fills = fills
        return result

    def _per_element(self, element: list, arrays: list[str], axis_loaded: list[AxisValue]) -> set[str]:
        """The names whose value changes along a row: the rest are computed once per row."""
        kernel = self.kernel
        variant = {a for a in arrays if kernel.reduced_arrays.get(a, "col") == "col"}
        variant |= {v.name for v in axis_loaded if v.tag == "col"} | {"_own_row", "_own_mat"}
        for v in element:
            if isinstance(v, AxisValue) or v.is_reduction or self._reads(v) & variant:
                variant.add(v.name)
        return variant

    def _per_row_reciprocals(self, v, variant: set[str], head: list[str]) -> str:
        """v's element expression, its divisions by row constants turned into products with
        reciprocals computed once per row (a division per element costs more than the loads;
        x * (1 / d) may differ from x / d by one rounding)."""
        expr = self.lifted[v.name]
        swaps = {}
        for power in expr.atoms(sympy.Pow):
            if power.exp == -1 and power.base.free_symbols and not {s.name for s in power.base.free_symbols} & variant:
                if power not in self._reciprocals:
                    self._reciprocals[power] = f"_inv_{len(self._reciprocals)}"
                    head.append(f"const real {self._reciprocals[power]} = {CppPrinter().doprint(power)};")
                swaps[power] = sympy.Symbol(self._reciprocals[power])
        return CppPrinter().doprint(expr.xreplace(swaps))

    def _axis_step(self, v: AxisValue, loop: list[str], rows: RowLoop) -> list[str]:
        """Accumulate axis reduction `v`: a row's or matrix's elements into a local the row
        loop vectorises, added into the slot after the row; a column's straight into its slot
        (the slots of one row are distinct). Returns the inner loop's simd clauses."""
        arg, name, ident = v.expr.name, v.name, _C_IDENTITY[v.reduce]
        if v.tag == "col":
            rows.alone.append(f"_slot_{name}[_k_col] = {v.reduce}_of(_slot_{name}[_k_col], double({arg}));")
            rows.shared.append(f"axis_{v.reduce}(_slot_{name} + _k_col, double({arg}));")
            return []
        rows.head.append(f"double _acc_{name} = {ident};")
        combine = "+" if v.reduce == "sum" else f"{v.reduce}_of"
        if v.reduce == "sum":
            loop.append(f"_acc_{name} += double({arg});")
        else:
            loop.append(f"_acc_{name} = {v.reduce}_of(_acc_{name}, double({arg}));")
        rows.tail.append(f"axis_{v.reduce}(_slot_{name} + _k_{v.tag}, _acc_{name});")
        return [f"reduction({combine} : _acc_{name})"]


def _index_lines(tags: set[str], owners: set[str], after_row: set[str]) -> tuple[list[str], list[str]]:
    """The slot indices (`_k_row`) and ownership flags (`_own_row`) of the elements: the lines
    run once per row (the row `_q` and its start `_row_start` are known) and once per element
    `_i`. `after_row`: the tags of stores after the row's loop (they need the row `_r`)."""
    used = tags | owners | after_row
    head, element = [], []
    if used & {"col", "mat"}:
        head.append("const int64_t _b = _q / _nrows;")
    if (owners | after_row) & {"col", "mat"}:
        head.append("const int64_t _r = _q - _b * _nrows;")
    if "row" in used:
        head.append("const int64_t _k_row = _q;")
    if "mat" in used:
        head.append("const int64_t _k_mat = _b;")
    if "col" in used:
        head.append("const int64_t _col_shift = _row_start - _b * _ncols;")
        element.append("const int64_t _k_col = _i - _col_shift;")
    if "col" in owners:
        head.append("const bool _own_col = _r == 0;")
    if "row" in owners:
        element.append("const bool _own_row = _i == _row_start;")
    if "mat" in owners:
        element.append("const bool _own_mat = (_r == 0) & (_i == _row_start);")
    return head, element


def _doc(role: str, targets: list[str], outputs: dict[str, str], reduced: bool) -> str:
    if role == "update":
        extra = " (reduced states through their slot vectors)" if reduced else ""
        return f"The update: reads each element once, computes in `real`, writes {', '.join(outputs)}{extra}."
    return f"Reduction pass {role.split('_')[1]}: this block's partial {', '.join(targets)}; nothing is stored."


__all__ = ["IDENTITY", "AxisPassBuilder", "reduced_states", "slots_of"]
