"""The Triton kernels' axis reductions, reduced-shape states and rows/cols (the plan:
optgen/backends/fused_axes.py; the same as the C++ kernels', cpp/axes.py).

Each element computes the slot index of each reduced shape it touches (`_k_row`) and
whether it owns its slot (`_own_row`). Reduced states and earlier passes' axis reductions
are gathered at that index; an axis reduction adds (or maxes, mins) every element into its
slot with an atomic on `axis_values` (float32, one vector per tensor and slot, laid out by
the runtime: `axis_offsets[tensor, slot]`); the update pass's owners store a reduced
state's new value into its slot vector, which the launcher copies into the state after the
pass (other blocks of the slot read the old value during it).
"""

from __future__ import annotations

from ...expr import COLS, ROWS
from ..fused_axes import TAGS, AxisValue, owner_symbol
from .kernels import PassBuilder, Statement, _line

_INDEX = {
    "row": "offsets // _ncols",
    "col": "(offsets // (_nrows * _ncols)) * _ncols + offsets % _ncols",
    "mat": "offsets // (_nrows * _ncols)",
}
_OWNER = {
    "row": "offsets % _ncols == 0",
    "col": "(offsets // _ncols) % _nrows == 0",
    "mat": "offsets % (_nrows * _ncols) == 0",
}
_ATOMIC = {"sum": "atomic_add", "min": "atomic_min", "max": "atomic_max"}


class AxisPassBuilder(PassBuilder):
    """PassBuilder for a setting whose program reduces over axes (fused_axes.prepare)."""

    def __init__(self, setting, arrays, tensor_states, maximize, slots, reduced):
        super().__init__(setting, arrays, tensor_states, maximize)
        self.slots = [name for name, _, _ in slots]  # this setting's slot vectors, in order
        self.reduced = reduced  # reduced state -> tag
        self.blocks |= {owner_symbol(t).name for t in TAGS.values()}

    def build(self, targets: list[str], stores: bool) -> list[Statement]:
        need = self.program.pass_closure(targets)
        values = [v for v in self.program.values if v.name in need and v.scope != "host"]
        loaded = [v for v in values if v.is_reduction and v.name not in targets]
        computed = [v for v in values if v not in loaded]
        outputs = self.program.writes if stores else {}
        reads = {s for v in computed for s in self._reads(v)} | set(outputs.values())
        axis_loaded = [v for v in loaded if isinstance(v, AxisValue) and v.name in reads]
        axis_targets = [v for v in computed if isinstance(v, AxisValue)]
        stored = {s: v for s, v in outputs.items() if s in self.reduced}

        body = self._scalar_loads(computed, [v for v in loaded if not isinstance(v, AxisValue)])
        body += [_line(f"{n} = tl.load(tensor_{n} + tensor).to(tl.float32)", n) for n in (ROWS, COLS) if n in reads]
        tags = {self.reduced[a] for a in self.reduced if a in reads or a in stored}
        tags |= {v.tag for v in axis_loaded + axis_targets}
        owners = {t for t in TAGS.values() if owner_symbol(t).name in reads} | {self.reduced[s] for s in stored}
        if tags | owners:
            body.append(_line("_nrows = tl.maximum(tl.load(tensor_rows + tensor), 1)"))
            body.append(_line("_ncols = tl.maximum(tl.load(tensor_cols + tensor), 1)"))
        body += [_line(f"_k_{t} = {_INDEX[t]}") for t in sorted(tags | owners)]
        body += [_line(f"_own_{t} = {_OWNER[t]}", f"_own_{t}") for t in sorted(owners)]
        plain = {s for s in reads if s not in self.reduced}
        body += self._input_loads(plain, {s for s in outputs if s not in self.reduced})
        for a in self.arrays:
            if a in self.reduced and (a in reads or a in stored):
                where = f"{a}_ptr + tl.load({a}_offsets + tensor) + _k_{self.reduced[a]}"
                body.append(_line(f"{a} = tl.load({where}, mask=mask).to(tl.float32)", a))
        body += [_line(f"{v.name} = tl.load({self._slot(v.name, v.tag)}, mask=mask)", v.name) for v in axis_loaded]
        for v in computed:
            if isinstance(v, AxisValue):
                body.append(self._axis_reduce(v))
            else:
                body.append(self._reduce(v) if v.is_reduction else self._compute(v))
        for state, value in outputs.items():
            body.append(self._store_slot(state, value) if state in stored else self._store(state, value))
        return body

    def _slot(self, name: str, tag: str) -> str:
        return f"axis_values + tl.load(axis_offsets + tensor * NUM_AXIS_SLOTS + {self.slots.index(name)}) + _k_{tag}"

    def _axis_reduce(self, v: AxisValue) -> Statement:
        arg = v.expr.name

        def render(names: dict[str, str]) -> str:
            value = f"(tl.zeros([BLOCK_SIZE], tl.float32) + {names.get(arg, arg)})"
            return f'tl.{_ATOMIC[v.reduce]}({self._slot(v.name, v.tag)}, {value}, mask=mask, sem="relaxed")'

        return Statement(render, None, "", frozenset({arg}))

    def _store_slot(self, state: str, value: str) -> Statement:
        tag = self.reduced[state]

        def render(names: dict[str, str]) -> str:
            new = f"(tl.zeros([BLOCK_SIZE], tl.float32) + {names.get(value, value)})"
            return f"tl.store({self._slot(state, tag)}, {new}, mask=mask & _own_{tag})"

        return Statement(render, None, "", frozenset({value}))
