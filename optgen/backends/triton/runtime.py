"""Running the generated Triton modules: what a torch optimizer class calls with fused=True.

    fused_step(spec_key, params=..., grads=..., states=..., steps=..., hyper=..., options=...,
               global_values=..., maximize=...)        # updates params and states in place
    fused_global(spec_key, params=..., grads=..., hyper=..., options=..., maximize=...)
    register(spec) -> spec_key                          # a spec from optgen.compile

Tensors are split into groups of one device and one dtype per array (param, grad, each
state); each group is one TensorGroup and each pass of the update one launch over it. A
group's tables (block map, sizes, per-array offsets from a base pointer) live on the device
and are cached by the tensors' addresses, so a steady training loop re-uploads only the small
per-step tables (host scalars by step, reduction accumulators).

Under TRITON_INTERPRET=1 the same kernels run on CPU tensors (NumPy, one program at a time).

Params that are DTensors (FSDP2) are updated through their local shards: after each reduction
pass the launcher calls group.combine, which all-reduces the pass's columns of the reduction
buffer over the shards (optgen/backends/fused_shards.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from ... import cache, catalog
from .. import fused_matrix
from ..fused_axes import axis_tables, check_reduced, rank_split, view_shape
from ..fused_shards import Shards
from . import config

_MODULES: dict[str, ModuleType] = {}
_IDENTITY = {"sum": 0.0, "min": float("inf"), "max": float("-inf")}


# --------------------------------------------------------------------------- entry points
def fused_step(
    spec_key: str,
    *,
    params: list[Tensor],
    grads: list[Tensor],
    states: dict[str, list[Tensor]],
    steps: list[int],
    hyper: dict[str, float],
    options: dict[str, bool],
    global_values: dict[str, Tensor],
    maximize: bool,
    inputs: dict[str, list[Tensor]] | None = None,
) -> None:
    """One optimizer step of `params` in place (and of `states`, keyed by spec state name,
    lists aligned with params; per-tensor states are 0-d tensors). `steps` are the step values
    the formulas use (after the increment); `global_values` the global reductions over every
    param group (see fused_global), by IR value name. A value left out is NaN in the kernels:
    leave out only one the update does not read with these hyperparameters (Adan's gradient
    norm when max_grad_norm == 0), so that a mistake poisons the params instead of hiding."""
    matrix_spec = fused_matrix.matrix_spec(spec_key)
    if matrix_spec is not None:  # stages of kernels, matrix blocks through torch between them
        return fused_matrix.fused_step(
            sys.modules[__name__], matrix_spec, spec_key, params=params, grads=grads, states=states, steps=steps,
            hyper=hyper, options=options, global_values=global_values, maximize=maximize, inputs=inputs,
        )  # fmt: skip
    module = load(spec_key)
    states = {**states, **(inputs or {})}  # the spec's inputs: arrays the kernels only read
    _check_lengths(params, grads, steps, states)
    if not params:
        return
    options = {name: bool(options.get(name, default)) for name, default in module.OPTIONS.items()}
    hyper = {name: float(value) for name, value in hyper.items()}
    classes = getattr(module, "RANK_CLASSES", None)
    if classes is None:
        _step_class(module, options, params, grads, states, steps, hyper, global_values, maximize)
        return
    flags = list(classes)
    split = rank_split([frozenset(classes[f]) for f in flags], params, grads, states, steps)
    for ranks, (members, member_grads, member_states, member_steps) in split:
        flagged = {**options, **{f: frozenset(classes[f]) == ranks for f in flags}}
        _step_class(module, flagged, members, member_grads, member_states, member_steps, hyper, global_values, maximize)


def _step_class(module, options, params, grads, states, steps, hyper, global_values, maximize) -> None:
    """fused_step for the tensors of one rank class (all of them without rank rules)."""
    if hasattr(module, "axis_slots") and Shards.of(params) is not None:
        raise NotImplementedError(
            "axis reductions, reduced states and rows/cols need each tensor whole: sharded (DTensor) "
            "parameters are not supported by the fused kernels"
        )
    _check_states(module, options, states)
    arrays = {name: states[name] for name in module.ARRAYS[2:] if name in states}
    tensor_states = {name: states[name] for name in getattr(module, "TENSOR_STATES", ()) if name in states}
    shards = Shards.of(params)
    if shards is not None:  # FSDP2: the kernels update the local shards
        params, grads = shards.local(params), shards.local(grads)
        arrays = {name: shards.local(tensors) for name, tensors in arrays.items()}
        tensor_states = {name: shards.local(tensors) for name, tensors in tensor_states.items()}
    for group in _groups(params, grads, arrays, tensor_states, steps, shards):
        values = _global_tensor(module, options, global_values, group.device)
        module.launch(group, hyper, options, bool(maximize), values)
        group.write_back()


def fused_global(
    spec_key: str,
    *,
    params: list[Tensor],
    grads: list[Tensor],
    hyper: dict[str, float],
    options: dict[str, bool],
    maximize: bool,
    states: dict[str, list[Tensor]] | None = None,
    steps: list[int] | None = None,
    inputs: dict[str, list[Tensor]] | None = None,
) -> dict[str, Tensor]:
    """This param group's share of the global reductions (`global_sums(options)`), as 0-d
    float32 tensors on the first parameter's device; sum them over the param groups. A sum
    that reads states, inputs or `step` (Prodigy's) takes them as fused_step does, before the
    step (`steps` after the increment: the step being taken); the tensors are only read."""
    module = load(spec_key)
    options = {name: bool(options.get(name, default)) for name, default in module.OPTIONS.items()}
    states = {**(states or {}), **(inputs or {})}
    steps = [1] * len(params) if steps is None else steps
    classes = getattr(module, "RANK_CLASSES", None)
    if classes is not None:  # each rank class's share (fused_axes.py), added up
        out: dict[str, Tensor] = {}
        for ranks, member_arrays in rank_split([frozenset(c) for c in classes.values()], params, grads, states, steps):
            flags = {f: frozenset(c) == ranks for f, c in classes.items()}
            part = _global_class(module, {**options, **flags}, *member_arrays, hyper, maximize)
            for name, value in part.items():
                out[name] = out[name] + value if name in out else value
        return out
    return _global_class(module, options, params, grads, states, steps, hyper, maximize)


def _global_class(module, options, params, grads, states, steps, hyper, maximize) -> dict[str, Tensor]:
    """fused_global for the tensors of one rank class (all of them without rank rules)."""
    names = module.global_sums(options) if hasattr(module, "global_sums") else ()
    if not names or not params:
        return {}
    if Shards.of(params) is not None:
        raise NotImplementedError(
            "fused_global of DTensor params: reduce each process's local shards and all-reduce the sums "
            "(the torch optimizer classes compute their global reductions themselves)"
        )
    hyper = {name: float(value) for name, value in hyper.items()}
    arrays = {name: states[name] for name in module.ARRAYS[2:] if name in states}
    tensor_states = {name: states[name] for name in getattr(module, "TENSOR_STATES", ()) if name in states}
    totals: dict[torch.device, Tensor] = {}
    for group in _groups(params, grads, arrays, tensor_states, steps):
        out = totals.setdefault(group.device, torch.zeros(len(names), dtype=torch.float32, device=group.device))
        module.launch_global_sums(group, hyper, options, bool(maximize), out)
    device = params[0].device
    total = sum(t.to(device) for t in totals.values())
    return {name: total[i] for i, name in enumerate(names)}


def register(spec) -> str:
    """Render `spec` in memory, write it to optgen's per-user cache (@triton.jit reads its
    kernels' source, which optgen.cache primes from the rendered text) and run it; the
    returned key names it for fused_step."""
    from . import render_module

    _require_triton()
    if fused_matrix.is_matrix_spec(spec):  # its stages are registered when they first run
        return fused_matrix.register(spec)
    text = render_module(spec)
    path, key = cache.store(spec.module_name, text)
    _MODULES[key] = cache.load(text, f"optgen_triton_{key}", path)
    return key


def load(spec_key: str) -> ModuleType:
    """The module for a catalog stem ("adam": generated/triton/adam.py) or a registered key
    (from the cache, only if its text hashes to the digest in the key)."""
    if spec_key in _MODULES:
        return _MODULES[spec_key]
    path = catalog.generated_dir() / "triton" / f"{spec_key}.py"
    if path.is_file():
        _MODULES[spec_key] = _import(spec_key, path)
        return _MODULES[spec_key]
    stored = cache.read_verified(spec_key)
    if stored is not None:
        _require_triton()
        _MODULES[spec_key] = cache.load(stored[1], f"optgen_triton_{spec_key}", stored[0])
        return _MODULES[spec_key]
    raise KeyError(f"no Triton module for {spec_key!r}: run `optgen build` (catalog) or register(spec) first")


def _import(key: str, path: Path) -> ModuleType:
    """A catalog module from generated/triton/."""
    _require_triton()
    name = f"optgen_triton_{key}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _require_triton() -> None:
    """Triton is an optional dependency (`optgen[triton]`): only the fused path needs it."""
    try:
        import triton  # noqa: F401 - the generated module imports it next; this says why it is needed
    except ImportError as exc:
        raise ModuleNotFoundError(
            "fused=True runs optgen's Triton kernels, but triton is not installed: "
            "pip install 'optgen[triton]' (a CUDA GPU, or CPU tensors under TRITON_INTERPRET=1), "
            "or leave fused unset to use the foreach or for-loop path",
            name="triton",
        ) from exc


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------- grouping
def _check_states(module, options: dict[str, bool], states: dict) -> None:
    every = (*module.ARRAYS[2:], *getattr(module, "TENSOR_STATES", ()))
    needed = module.active_states(options) if hasattr(module, "active_states") else every
    missing = [name for name in needed if name not in states]
    if missing:
        raise KeyError(f"states lacks {', '.join(missing)}, which these options use ({options})")


def _check_lengths(params, grads, steps, states) -> None:
    n = len(params)
    lengths = {"grads": len(grads), "steps": len(steps), **{f"states[{k!r}]": len(v) for k, v in states.items()}}
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(
            f"expected {n} entries (one per param) in {', '.join(f'{k} (got {v})' for k, v in wrong.items())}"
        )


def _groups(params, grads, arrays, tensor_states, steps, shards: Shards | None = None) -> list[TensorGroup]:
    """Tensors split by device and by the dtype of every array, in their order. (Per-step host
    work: kept to a few C-level passes over the lists.) `shards`: where they are sharded."""
    columns = [params, grads, *arrays.values(), *tensor_states.values()]
    keys = list(zip([p.device for p in params], *[[t.dtype for t in ts] for ts in columns]))
    members: dict[tuple, list[int]] = {}
    if len(set(keys)) == 1:
        members[keys[0]] = list(range(len(params)))
    else:
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
    return [_group(idx, len(params), params, grads, arrays, tensor_states, steps, shards) for idx in members.values()]


def _group(idx: list[int], total: int, params, grads, arrays, tensor_states, steps, shards) -> TensorGroup:
    def pick(ts: list) -> list:
        return list(ts) if len(idx) == total else [ts[i] for i in idx]

    group_arrays = {"param": pick(params), "grad": pick(grads), **{k: pick(v) for k, v in arrays.items()}}
    group_states = {k: pick(v) for k, v in tensor_states.items()}
    group_shards = None if shards is None else shards.subset(idx)
    return TensorGroup(group_arrays, group_states, [int(s) for s in pick(steps)], group_shards)


def _global_tensor(module, options, values: dict[str, Tensor], device) -> Tensor | None:
    if not hasattr(module, "global_sums"):
        return None
    names = module.global_sums(options)
    if not names:
        return None
    nan = torch.full((), float("nan"), device=device)
    return torch.stack([values[n].to(device=device, dtype=torch.float32) if n in values else nan for n in names])


# --------------------------------------------------------------------------- the tensor group
class TensorGroup:
    """Tensors of one device and one dtype per array, as the kernels address them."""

    def __init__(
        self,
        arrays: dict[str, list[Tensor]],
        tensor_states: dict[str, list[Tensor]],
        steps: list[int],
        shards: Shards | None = None,
    ):
        self.device = arrays["param"][0].device
        self.shards = shards  # the tensors are local shards (FSDP2): see combine
        self._check_device(arrays, tensor_states)
        self._copy_back: list[tuple[Tensor, Tensor]] = []
        self.arrays = {name: self._dense_all(ts, name != "grad") for name, ts in arrays.items()}
        self.tensor_states = tensor_states
        self.steps = steps
        self.block_size = config.INTERPRETER_BLOCK_SIZE if self.device.type == "cpu" else config.BLOCK_SIZE
        self.num_warps = config.NUM_WARPS
        self.layout = _layout(self.arrays, tensor_states, self.block_size, self.device)

    def _check_device(self, arrays, tensor_states) -> None:
        if self.device.type == "cpu" and not interpreting():
            raise RuntimeError(
                "fused Triton kernels on CPU tensors need TRITON_INTERPRET=1 (set before importing triton)"
            )
        if self.device.type != "cpu" and interpreting():
            raise RuntimeError(
                "TRITON_INTERPRET=1 copies each kernel argument to the host on its own, but these kernels reach "
                "every tensor of a group from one base pointer: run them compiled on the GPU, or on CPU tensors"
            )
        for name, ts in tensor_states.items():  # element arrays were grouped by the param's device
            if any(t.device != self.device for t in ts):
                raise ValueError(
                    f"{name}: every tensor of a parameter must be on the parameter's device ({self.device})"
                )

    def _dense_all(self, tensors: list[Tensor], written: bool) -> list[Tensor]:
        if all(t.is_contiguous() for t in tensors):
            return tensors
        return [self._dense(t, written) for t in tensors]

    def _dense(self, t: Tensor, written: bool) -> Tensor:
        if t.is_contiguous():
            return t
        work = t.contiguous()
        if written:
            self._copy_back.append((t, work))
        return work

    def write_back(self) -> None:
        """Copy results into non-contiguous tensors the kernels worked on copies of."""
        for original, work in self._copy_back:
            original.copy_(work)

    # ---- what the launcher passes
    @property
    def grid(self) -> tuple[int]:
        return (self.layout.num_blocks,)

    @property
    def align(self) -> int:
        return self.layout.align

    @property
    def block_tensors(self) -> Tensor:
        return self.layout.block_tensors

    @property
    def block_indices(self) -> Tensor:
        return self.layout.block_indices

    @property
    def numels(self) -> Tensor:
        return self.layout.numels

    @property
    def ndims(self) -> Tensor:
        return self.layout.ndims

    @property
    def whole_numels(self) -> Tensor:
        """Each tensor's numel, of the whole tensor where the group holds shards of it."""
        if self.shards is None:
            return self.layout.numels
        return torch.tensor(self.shards.numels, dtype=torch.int64, device=self.device)

    def base(self, name: str) -> Tensor | None:
        """The tensor whose address the array's offsets count from (None: not in this setting)."""
        row = self.layout.rows.get(name)
        if row is None:
            return None
        tensors = self.arrays.get(name) or self.tensor_states[name]
        return tensors[self.layout.base_index[name]]

    def offsets(self, name: str) -> Tensor | None:
        row = self.layout.rows.get(name)
        return None if row is None else self.layout.offsets[row]

    def before(self, name: str) -> Tensor | None:
        """A per-tensor state's values before this step: the update pass writes the state
        while other blocks of the same tensor may still be reading it."""
        if name not in self.tensor_states:
            return None
        return torch.stack(self.tensor_states[name])

    def step_table(self, row, hyper: dict[str, float]) -> Tensor:
        """float32 [tensors, columns]: `row(step, hyper)` computed once per distinct step in float64."""
        h = {k: np.float64(v) for k, v in hyper.items()}
        with np.errstate(all="ignore"):
            rows = {step: row(step, h) for step in set(self.steps)}
        return torch.tensor([rows[step] for step in self.steps], dtype=torch.float32, device=self.device)

    @staticmethod
    def host_scalars(compute, hyper: dict[str, float]) -> tuple[float, ...]:
        """`compute(hyper)` in float64, as Python floats (fp32 kernel arguments)."""
        with np.errstate(all="ignore"):
            values = compute({k: np.float64(v) for k, v in hyper.items()})
        return tuple(float(v) for v in values)

    def reduction_buffer(self, passes: tuple[tuple[str, ...], ...]) -> Tensor | None:
        """float32 [tensors, reductions], each column at its reduction's identity."""
        ops = [op for p in passes for op in p]
        if not ops:
            return None
        identities = torch.tensor([_IDENTITY[op] for op in ops], dtype=torch.float32, device=self.device)
        self._reductions = identities.repeat(len(self.steps), 1), passes
        return self._reductions[0]

    # ---- axis reductions and reduced states (optgen/backends/fused_axes.py, triton/axes.py)
    def axis_tables(self, slots: tuple[tuple[str, str, str], ...], view=(1, 1)) -> tuple[Tensor, ...]:
        """rows, cols (int64 [tensors]) of the tensors' (outer, rows, cols) `view`, the slot
        vectors (float32) and their offsets (int64 [tensors, slots]) for the slots of this
        setting; the reduced states are checked."""
        shapes = [view_shape(p.shape, view) for p in self.arrays["param"]]
        for name, tag, kind in slots:
            if kind == "store":
                for t, p in zip(self.arrays[name], self.arrays["param"]):
                    check_reduced(name, t, p, tag, view)
        rows, cols, offsets, sizes, values = axis_tables(shapes, [tag for _, tag, _ in slots])
        device = self.device
        self._axes = slots, offsets, sizes, torch.from_numpy(values).to(device=device, dtype=torch.float32)
        return (
            torch.from_numpy(rows).to(device),
            torch.from_numpy(cols).to(device),
            self._axes[3],
            torch.from_numpy(offsets).to(device),
        )

    def _slot_ranges(self, slot: int):
        slots, offsets, sizes, _ = self._axes
        width = len(slots)
        for t in range(len(self.steps)):
            start = int(offsets[t * width + slot])
            yield t, start, start + int(sizes[t * width + slot])

    def fill_axes(self, which: tuple[int, ...]) -> None:
        """Reset the slot vectors `which` (one reduction pass's) to their identity."""
        slots, _, _, values = self._axes
        for slot in which:
            identity = _IDENTITY[slots[slot][2]]
            for _, start, end in self._slot_ranges(slot):
                values[start:end] = identity

    def store_reduced(self) -> None:
        """Copy the reduced states' new values (written by the update pass's owners) into
        the states."""
        slots, _, _, values = self._axes
        for slot, (name, _, kind) in enumerate(slots):
            if kind != "store":
                continue
            for t, start, end in self._slot_ranges(slot):
                state = self.arrays[name][t]
                state.view(-1).copy_(values[start:end])

    def combine(self, which: int) -> None:
        """After reduction pass `which`: for sharded tensors, each tensor's partials in the
        reduction buffer combined with the other processes' shards (one tensor, nothing to do)."""
        if self.shards is None:
            return
        buffer, passes = self._reductions
        start = sum(len(p) for p in passes[:which])
        ops = passes[which]
        self.shards.combine(buffer, list(range(start, start + len(ops))), list(ops))


# --------------------------------------------------------------------------- layouts
class Layout:
    """Device tables for one set of tensors: the block map and the per-array offsets."""

    def __init__(
        self, arrays: dict[str, list[Tensor]], tensor_states: dict[str, list[Tensor]], block_size: int, device
    ):
        first = next(iter(arrays.values()))
        numels = [t.numel() for t in first]
        counts = torch.tensor([max(1, -(-n // block_size)) for n in numels], dtype=torch.int64)
        starts = torch.cumsum(counts, 0) - counts
        tensor_ids = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
        self.num_blocks = int(counts.sum())
        self.block_tensors = tensor_ids.to(device)
        self.block_indices = (
            (torch.arange(self.num_blocks, dtype=torch.int64) - starts[tensor_ids.long()]).to(torch.int32).to(device)
        )
        self.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        self.ndims = torch.tensor([t.dim() for t in first], dtype=torch.int64, device=device)
        self.rows: dict[str, int] = {}
        self.base_index: dict[str, int] = {}
        offsets = []
        for name, tensors in {**arrays, **tensor_states}.items():
            base, row = _offsets(tensors)
            self.rows[name], self.base_index[name] = len(offsets), base
            offsets.append(row)
        # rows padded to an even length: each row's address stays 16-byte aligned, so that
        # Triton specialises every offsets argument alike (one compilation, any tensor count)
        pad = [0] * (len(numels) % 2)
        self.offsets = torch.tensor([row + pad for row in offsets], dtype=torch.int64, device=device)
        self.align = _alignment(numels + [o for row in offsets[: len(arrays)] for o in row])


def _offsets(tensors: list[Tensor]) -> tuple[int, list[int]]:
    """(index of the base tensor, each tensor's offset from it in elements). The base is the
    lowest address, so offsets are non-negative; empty tensors are never read (offset 0)."""
    size = tensors[0].element_size()
    live = [i for i, t in enumerate(tensors) if t.numel() > 0]
    if not live:
        return 0, [0] * len(tensors)
    base = min(live, key=lambda i: tensors[i].data_ptr())
    origin = tensors[base].data_ptr()
    row = []
    for t in tensors:
        delta = t.data_ptr() - origin if t.numel() > 0 else 0
        if delta % size:
            raise ValueError(
                f"a {t.dtype} tensor at an address that is not a multiple of {size} bytes from the group's first"
            )
        row.append(delta // size)
    return base, row


def _alignment(counts: list[int]) -> int:
    """The largest power of two up to MAX_ALIGN dividing every size and offset (elements).
    The kernels hint it to the compiler: a block's mask and addresses are then uniform over
    ALIGN elements, and loads and stores become vector instructions."""
    align = config.MAX_ALIGN
    while align > 1 and any(c % align for c in counts):
        align //= 2
    return align


_LAYOUTS: OrderedDict = OrderedDict()
_MAX_LAYOUTS = 32


def _layout(arrays, tensor_states, block_size: int, device) -> Layout:
    """Cached by every tensor's address and size: a steady loop re-uses its device tables."""
    params = arrays["param"]
    key = (device, block_size, tuple(arrays), tuple(tensor_states))
    key += tuple(t.data_ptr() for ts in (*arrays.values(), *tensor_states.values()) for t in ts)
    key += tuple(p.shape for p in params)  # every array has the param's shape
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _LAYOUTS[key] = Layout(arrays, tensor_states, block_size, device)
        if len(_LAYOUTS) > _MAX_LAYOUTS:
            _LAYOUTS.popitem(last=False)
    else:
        _LAYOUTS.move_to_end(key)
    return layout
