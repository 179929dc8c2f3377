"""The passes of a C++ kernel whose program reduces over axes or keeps reduced-shape states
(optgen/backends/fused_axes.py has the plan: slot vectors indexed from the flat offset).

Per element the loop computes the slot index of each reduced shape it touches (`_k_row`)
and whether the element owns its slot (`_own_row`); it reads reduced states and earlier
passes' axis reductions at that index. An axis reduction accumulates a run of elements
that share a slot in a local and adds the run into the slot vector with an atomic when the
index changes (a row's elements are consecutive: one atomic per row and block); such a pass
loops without `#pragma omp simd` (the run is a loop-carried dependency). The update pass's
owners write reduced states' new values into their slot vectors, which run_update copies
into the states after every block has read the old ones.
"""

from __future__ import annotations

from ...expr import COLS, GRAD, ROWS
from .. import fused_axes
from ..fused_axes import IDENTITY, TAGS, AxisValue
from .kernels import _SIMD_OP, Pass, PassBuilder
from .kernels import IDENTITY as TENSOR_IDENTITY

_INDEX = {
    "row": "{i} / _ncols",
    "col": "({i} / (_nrows * _ncols)) * _ncols + {i} % _ncols",
    "mat": "{i} / (_nrows * _ncols)",
}
# per element, from its row number _q = _i / cols and (for col, mat) its matrix number
# _b = _q / rows: two integer divisions at most
_FROM_ROW = {"row": "_q", "col": "_b * _ncols + _c", "mat": "_b"}
_OWNER = {"row": "_c == 0", "col": "_r == 0", "mat": "(_c == 0) & (_r == 0)"}
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
        owners = {t for t in TAGS.values() if f"_own_{t}" in loop_reads} | {kernel.reduced_arrays[s] for s in stored}
        if tags | owners:
            prologue.insert(0, "const int64_t _nrows = _c.rows[_t], _ncols = _c.cols[_t];")
        loop = _index_lines(tags, owners)
        for a in arrays:
            if a in loop_reads:
                sign = "_sign * " if a == GRAD else ""
                at = f"_k_{kernel.reduced_arrays[a]}" if a in kernel.reduced_arrays else "_i"
                loop.append(f"const real {a} = {sign}to_real({a}_ptr[{at}]);")
        loop += [f"const real {v.name} = real(_slot_{v.name}[_k_{v.tag}]);" for v in axis_loaded]
        simd, epilogue, tensor_slots = [], [], []
        sums = [g.name for g in kernel.global_sums]
        slot_names = [r.name for r in kernel.reductions]
        for v in element:
            if isinstance(v, AxisValue):
                prologue += self._run_start(v)
                loop += self._run_step(v)
                epilogue.append(f"if (_end > _begin) axis_{v.reduce}(_slot_{v.name} + _run_{v.name}, _acc_{v.name});")
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
            else:
                loop.append(f"const real {v.name} = {self._print(v)};")
        for state, value in element_outputs.items():
            if state in stored:
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
        result.serial = bool(axis_targets)
        result.axis_fills = fills
        return result

    def _run_start(self, v: AxisValue) -> list[str]:
        first = _INDEX[v.tag].format(i="_begin")
        return [
            f"int64_t _run_{v.name} = _end > _begin ? {first} : 0;",
            f"double _acc_{v.name} = {_C_IDENTITY[v.reduce]};",
        ]

    def _run_step(self, v: AxisValue) -> list[str]:
        k, arg = f"_k_{v.tag}", v.expr.name
        acc = f"_acc_{v.name}"
        combine = f"{acc} += double({arg});" if v.reduce == "sum" else f"{acc} = {v.reduce}_of({acc}, double({arg}));"
        return [
            f"if ({k} != _run_{v.name}) {{",
            f"    axis_{v.reduce}(_slot_{v.name} + _run_{v.name}, {acc});",
            f"    _run_{v.name} = {k};",
            f"    {acc} = {_C_IDENTITY[v.reduce]};",
            "}",
            combine,
        ]


def _index_lines(tags: set[str], owners: set[str]) -> list[str]:
    """The element's slot indices (`_k_row`) and ownership flags (`_own_row`)."""
    used = tags | owners
    if not used:
        return []
    lines = ["const int64_t _q = _i / _ncols;"]
    if owners & {"row", "mat"} or used & {"col"}:
        lines.append("const int64_t _c = _i - _q * _ncols;")
    if used & {"col", "mat"}:
        lines.append("const int64_t _b = _q / _nrows;")
    if owners & {"col", "mat"}:
        lines.append("const int64_t _r = _q - _b * _nrows;")
    lines += [f"const int64_t _k_{t} = {_FROM_ROW[t]};" for t in sorted(used)]
    lines += [f"const bool _own_{t} = {_OWNER[t]};" for t in sorted(owners)]
    return lines


def _doc(role: str, targets: list[str], outputs: dict[str, str], reduced: bool) -> str:
    if role == "update":
        extra = " (reduced states through their slot vectors)" if reduced else ""
        return f"The update: reads each element once, computes in `real`, writes {', '.join(outputs)}{extra}."
    return f"Reduction pass {role.split('_')[1]}: this block's partial {', '.join(targets)}; nothing is stored."


__all__ = ["IDENTITY", "AxisPassBuilder", "reduced_states", "slots_of"]
