"""Running the generated C++ kernels: what a torch optimizer class calls with fused=True on
CPU tensors.

    fused_step(spec_key, params=..., grads=..., states=..., steps=..., hyper=..., options=...,
               global_values=..., maximize=...)      # updates params and states in place
    fused_global(spec_key, params=..., grads=..., hyper=..., options=..., maximize=...)
    register(spec) -> spec_key                        # a spec from optgen.compile
    select(device) -> (fused_step, register)          # this runtime on CPU, Triton's elsewhere

The same contract as optgen.backends.triton.runtime. Params that are DTensors (FSDP2) are
updated through their local shards, one pass at a time (optgen_pass), each pass's per-tensor
reductions all-reduced over the shards before the next reads them (optgen/backends/fused_shards.py). Tensors are split into groups of one
dtype per array (param, grad, each state); a group is one call into the library for its
setting and dtypes. A group's tables (pointers, sizes, the block map, reduction buffers) are
built once per set of tensors and cached by their addresses, so a steady training loop only
writes the step counts and hyperparameters before each call: no allocation per step.
"""

from __future__ import annotations

import ctypes
import functools
import json
import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from ... import catalog
from .. import fused_matrix
from ..fused_axes import axis_tables, check_reduced, rank_split, spec_rank_classes, view_shape
from ..fused_shards import Shards
from . import compiler, config

_SPECS: dict[str, object] = {}  # spec key -> Spec (catalog specs once parsed, and registered ones)
_REGISTERED: set[str] = set()  # keys of specs from register()
_KERNELS: dict[tuple, Kernel] = {}


# --------------------------------------------------------------------------- entry points
def select(device: torch.device):
    """(fused_step, register) of the runtime for tensors on `device`: this one on CPU (unless
    TRITON_INTERPRET=1 asks for Triton's interpreter there), Triton's elsewhere."""
    from ..triton import runtime as triton_runtime

    if device.type == "cpu" and not triton_runtime.interpreting():
        return fused_step, register
    return triton_runtime.fused_step, triton_runtime.register


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
    param group, by IR value name; one left out is NaN (see the Triton runtime)."""
    matrix_spec = fused_matrix.matrix_spec(spec_key)
    if matrix_spec is not None:  # stages of kernels, matrix blocks through torch between them
        return fused_matrix.fused_step(
            sys.modules[__name__], matrix_spec, spec_key, params=params, grads=grads, states=states, steps=steps,
            hyper=hyper, options=options, global_values=global_values, maximize=maximize, inputs=inputs,
        )  # fmt: skip
    states = {**states, **(inputs or {})}  # the spec's inputs: arrays the kernels only read
    _check_lengths(params, grads, steps, states)
    if not params:
        return
    shards = Shards.of(params)
    if shards is not None:  # FSDP2: the kernels update the local shards
        params, grads = shards.local(params), shards.local(grads)
        states = {name: shards.local(tensors) for name, tensors in states.items()}
    classes = _rank_classes(spec_key, options)
    for ranks, (members, member_grads, member_states, member_steps) in rank_split(
        classes, params, grads, states, steps
    ):
        _step_class(
            spec_key,
            ranks,
            members,
            member_grads,
            member_states,
            member_steps,
            hyper,
            options,
            global_values,
            maximize,
            shards,
        )


def _step_class(spec_key, ranks, params, grads, states, steps, hyper, options, global_values, maximize, shards) -> None:
    """fused_step for the tensors of one rank class (all of them when the spec has no rank
    rules: optgen/backends/fused_axes.py)."""
    for group in _groups(params, grads, states):
        kernel = _kernel(spec_key, options, group.dtypes, ranks)
        if shards is not None and kernel.shapes:
            raise NotImplementedError(
                f"{spec_key}: axis reductions, reduced states and rows/cols need each tensor whole; "
                "sharded (DTensor) parameters are not supported by the fused kernels"
            )
        call, copies = kernel.call(group)
        call.steps[:] = [steps[i] for i in group.index] if len(group.index) != len(params) else steps
        call.set_scalars(hyper, maximize, global_values)
        if shards is None:
            kernel.library.optgen_step(ctypes.byref(call.context), torch.get_num_threads())
        else:
            _sharded_step(kernel, call, shards.subset(group.index))
        for original, work in copies:  # non-contiguous tensors were updated as copies
            original.copy_(work)


def _sharded_step(kernel: Kernel, call: Call, shards: Shards) -> None:
    """optgen_step one pass at a time: after each reduction pass, the per-tensor reductions
    of the local shards are combined over the processes that hold the other shards."""
    n = call.numels.size
    table = torch.from_numpy(call.reductions[: n * kernel.num_reductions]).view(n, kernel.num_reductions)
    threads = torch.get_num_threads()
    local = call.numels.copy()
    call.numels[:] = shards.numels  # numel(param) is the whole tensor's (the blocks stay the shard's)
    try:
        for which, slots in enumerate(kernel.reduce_passes):
            kernel.library.optgen_pass(ctypes.byref(call.context), threads, which)
            shards.combine(table, [slot for slot, _ in slots], [op for _, op in slots])
        kernel.library.optgen_pass(ctypes.byref(call.context), threads, len(kernel.reduce_passes))
    finally:  # the cached tables stay those of the tensors they were built for
        call.numels[:] = local


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
    """This param group's share of the global reductions, as 0-d float64 tensors (summed in
    double; add them over the param groups). A sum that reads states, inputs or `step`
    (Prodigy's) takes them as fused_step does, before the step (`steps` after the increment:
    the step being taken); the tensors are only read."""
    if Shards.of(params) is not None:
        raise NotImplementedError(
            "fused_global of DTensor params: reduce each process's local shards and all-reduce the sums "
            "(the torch optimizer classes compute their global reductions themselves)"
        )
    out: dict[str, float] = {}
    states = {**(states or {}), **(inputs or {})}
    steps = [1] * len(params) if steps is None else steps  # a step the sums read: given
    _check_lengths(params, grads, steps, states)
    classes = _rank_classes(spec_key, options)
    for ranks, member_arrays in rank_split(classes, params, grads, states, steps):
        _global_class(spec_key, ranks, *member_arrays, hyper, options, maximize, out)
    return {name: torch.tensor(value, dtype=torch.float64) for name, value in out.items()}


def _global_class(spec_key, ranks, params, grads, states, steps, hyper, options, maximize, out) -> None:
    """fused_global for the tensors of one rank class, added into `out` (name -> float)."""
    for group in _groups(params, grads, states):
        kernel = _kernel(spec_key, options, group.dtypes, ranks)
        if not kernel.global_names:
            return
        missing = [a for a in kernel.global_reads if a not in group.tensors]
        if missing:
            raise KeyError(f"states lacks {', '.join(missing)}, which the global reductions read")
        # the slots of what the global pass does not read are unused: filled with param
        unread = [a for a in kernel.arrays[2:] + kernel.tensor_states if a not in group.tensors]
        group.tensors.update({name: group.tensors["param"] for name in unread})
        call, _ = kernel.call(group)  # the global pass writes nothing
        call.steps[:] = [steps[i] for i in group.index]
        call.set_scalars(hyper, maximize, {})
        sums = np.zeros(len(kernel.global_names), dtype=np.float64)
        kernel.library.optgen_global_sums(
            ctypes.byref(call.context), torch.get_num_threads(), sums.ctypes.data_as(ctypes.c_void_p)
        )
        for name, value in zip(kernel.global_names, sums):
            out[name] = out.get(name, 0.0) + float(value)


_CLASSES: dict[tuple, list] = {}


def _rank_classes(spec_key: str, options: dict[str, bool]) -> list[frozenset | None]:
    """The rank classes of a setting's kernels ([None]: one kernel for every rank)."""
    key = (spec_key, tuple(sorted(options.items())))
    if key not in _CLASSES:
        spec = _spec(spec_key)
        full = {name: bool(options.get(name, opt.default)) for name, opt in spec.options.items()}
        _CLASSES[key] = spec_rank_classes(spec, full)
    return _CLASSES[key]


def register(spec) -> str:
    """Remember a spec from optgen.compile; the returned key names it for fused_step. (The
    compiled libraries are cached by their source, so equal specs share them.)"""
    if fused_matrix.is_matrix_spec(spec):  # its stages are registered when they first run
        return fused_matrix.register(spec)
    key = f"{spec.module_name}@{len(_REGISTERED)}"  # never a catalog name
    _SPECS[key] = spec
    _REGISTERED.add(key)
    return key


def _spec(spec_key: str):
    if spec_key not in _SPECS:
        from ...parse import load_path

        path = catalog.path_of(spec_key)
        if path is None:
            raise KeyError(f"no spec {spec_key!r}: a catalog name, or a key from register(spec)")
        _SPECS[spec_key] = load_path(path)
    return _SPECS[spec_key]


# --------------------------------------------------------------------------- kernels
class Kernel:
    """One compiled setting and dtype combination (a library and what it reports of itself),
    and the tables of the tensor sets it has run on."""

    def __init__(self, library: ctypes.CDLL):
        self.library = library
        library.optgen_step.argtypes = [ctypes.c_void_p, ctypes.c_int]
        library.optgen_global_sums.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        library.optgen_pass.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        library.optgen_metadata.restype = ctypes.c_char_p
        meta = json.loads(library.optgen_metadata().decode())
        sizes = [library.optgen_layout(i) for i in range(7)]
        self.num_arrays, self.num_tensor_states, self.num_reductions = sizes[:3]
        self.num_global, self.host_width, self.partial_width, context_size = sizes[3:]
        if context_size != ctypes.sizeof(_Context):
            raise RuntimeError("the C++ kernel's Context does not match the runtime's (a stale cache entry?)")
        self.arrays = meta["arrays"]
        self.tensor_states = meta["tensor_states"]
        self.hypers = meta["hypers"]
        self.global_names = meta["global_sums"]
        self.global_reads = meta["global_reads"]
        self.reads_ndim = meta["reads_ndim"]
        self.reduce_passes = meta["reduce_passes"]
        self.shapes = meta["shapes"]  # axis reductions, reduced states, rows/cols (fused_axes.py)
        self.axis_slots = meta["axis_slots"]
        self.reduced_arrays = meta["reduced_arrays"]
        self.axis_view = tuple(meta.get("axis_view", (1, 1)))
        self.calls: OrderedDict = OrderedDict()

    def call(self, group: TensorGroup) -> tuple[Call, list[tuple[Tensor, Tensor]]]:
        """The tables for `group`'s tensors, cached by their addresses and the params' shapes
        (a steady loop checks and builds them once); and the (original, copy) pairs when a
        non-contiguous tensor is updated through a contiguous copy (never cached)."""
        arrays = [group.tensors[name] for name in self.arrays if name in group.tensors]
        tensor_states = [group.tensors[name] for name in self.tensor_states if name in group.tensors]
        # per step, per tensor, this is most of the runtime's cost: list comprehensions only
        ptrs = [t.data_ptr() for ts in arrays + tensor_states for t in ts]
        sizes = [t.shape for t in arrays[0]] if self.reads_ndim or self.shapes else [t.numel() for t in arrays[0]]
        key = tuple(ptrs + sizes)
        call = self.calls.get(key)
        if call is not None:
            self.calls.move_to_end(key)
            return call, []
        group.check(self)
        copies: list[tuple[Tensor, Tensor]] = []
        if all(t.is_contiguous() for ts in arrays + tensor_states for t in ts):
            call = self.calls[key] = Call(self, arrays, tensor_states)
            if len(self.calls) > _MAX_CALLS:
                self.calls.popitem(last=False)
            return call, copies
        dense = [[_dense(t, copies, written=ts is not arrays[1]) for t in ts] for ts in arrays + tensor_states]
        return Call(self, dense[: len(arrays)], dense[len(arrays) :]), copies


def _dense(t: Tensor, copies: list, written: bool) -> Tensor:
    if t.is_contiguous():
        return t
    work = t.contiguous()
    if written:
        copies.append((t, work))
    return work


_MAX_CALLS = 32


def _kernel(spec_key: str, options: dict[str, bool], dtypes: dict[str, str], ranks: frozenset | None = None) -> Kernel:
    """The kernel of a setting (and rank class): from this process, else through the cache's
    index (no lowering), else lowered, rendered and compiled now."""
    options = {name: bool(value) for name, value in options.items()}
    key = (spec_key, tuple(sorted(options.items())), tuple(sorted(dtypes.items())))
    if ranks is not None:
        key += (tuple(sorted(ranks)),)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    index = compiler.index_key(f"{_identity(spec_key)}\n{key[1:]!r}")
    library = compiler.load_indexed(index)
    if library is None:
        from . import render_kernel
        from .kernels import build

        spec = _spec(spec_key)
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise ValueError(f"{spec.name} has no option(s) {', '.join(unknown)}")
        model = build(spec, {name: options.get(name, opt.default) for name, opt in spec.options.items()}, ranks)
        library = compiler.load(render_kernel(model, dtypes), spec.module_name)
        compiler.write_index(index, library, spec.module_name)
    kernel = _KERNELS[key] = Kernel(library)
    return kernel


def _identity(spec_key: str) -> str:
    """The text a spec key compiles from: a registered spec's YAML (and its parents'), or the
    catalog's files (a catalog spec may extend another)."""
    if spec_key in _REGISTERED:
        spec = _SPECS[spec_key]
        return "\n".join([spec.module_name, *spec.source_texts])
    return _catalog_text() + spec_key


@functools.cache
def _catalog_text() -> str:
    folder = catalog.specs_dir()
    return "".join(f"{p.relative_to(folder)}\n{p.read_text(encoding='utf-8')}" for p in sorted(folder.rglob("*.yaml")))


class _Context(ctypes.Structure):
    _fields_ = [
        ("num_tensors", ctypes.c_int64),
        ("num_blocks", ctypes.c_int64),
        ("arrays", ctypes.c_void_p),
        ("tensor_states", ctypes.c_void_p),
        ("numels", ctypes.c_void_p),
        ("ndims", ctypes.c_void_p),
        ("steps", ctypes.c_void_p),
        ("block_tensor", ctypes.c_void_p),
        ("block_begin", ctypes.c_void_p),
        ("block_end", ctypes.c_void_p),
        ("first_block", ctypes.c_void_p),
        ("hyper", ctypes.c_void_p),
        ("global_values", ctypes.c_void_p),
        ("grad_sign", ctypes.c_double),
        ("partials", ctypes.c_void_p),
        ("reductions", ctypes.c_void_p),
        ("host", ctypes.c_void_p),
        ("before", ctypes.c_void_p),
        ("rows", ctypes.c_void_p),
        ("cols", ctypes.c_void_p),
        ("axis_offsets", ctypes.c_void_p),
        ("axis_sizes", ctypes.c_void_p),
        ("axis_values", ctypes.c_void_p),
    ]


class Call:
    """The tables of one set of tensors for one kernel: built once, reused every step."""

    def __init__(self, kernel: Kernel, arrays: list[list[Tensor]], tensor_states: list[list[Tensor]]):
        self.kernel = kernel
        params = arrays[0]
        n = len(params)
        numels = np.array([p.numel() for p in params], dtype=np.int64)
        counts = np.maximum(1, -(-numels // config.BLOCK_SIZE))  # an empty tensor: one empty block
        self.first_block = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.first_block[1:])
        blocks = int(self.first_block[-1])
        self.block_tensor = np.repeat(np.arange(n, dtype=np.int64), counts)
        self.block_begin = (np.arange(blocks, dtype=np.int64) - self.first_block[self.block_tensor]) * config.BLOCK_SIZE
        self.block_end = np.minimum(self.block_begin + config.BLOCK_SIZE, numels[self.block_tensor])
        self.numels = numels
        self.ndims = np.array([p.dim() for p in params], dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.arrays = np.array([t.data_ptr() for ts in arrays for t in ts] or [0], dtype=np.uint64)
        self.tensor_states = np.array([t.data_ptr() for ts in tensor_states for t in ts] or [0], dtype=np.uint64)
        self.hyper = np.zeros(max(1, len(kernel.hypers)), dtype=np.float64)
        self.global_values = np.full(max(1, kernel.num_global), np.nan, dtype=np.float64)
        self.partials = np.zeros(blocks * kernel.partial_width, dtype=np.float64)
        self.reductions = np.zeros(max(1, n * kernel.num_reductions), dtype=np.float64)
        self.host = np.zeros(max(1, n * kernel.host_width), dtype=np.float64)
        self.before = np.zeros(max(1, n * kernel.num_tensor_states), dtype=np.float64)
        self.rows, self.cols, self.axis_offsets, self.axis_sizes, self.axis_values = axis_tables(
            [view_shape(p.shape, kernel.axis_view) for p in params], [tag for _, tag, _ in kernel.axis_slots]
        )
        ptr = lambda a: a.ctypes.data
        self.context = _Context(
            n, blocks, ptr(self.arrays), ptr(self.tensor_states), ptr(self.numels), ptr(self.ndims), ptr(self.steps),
            ptr(self.block_tensor), ptr(self.block_begin), ptr(self.block_end), ptr(self.first_block),
            ptr(self.hyper), ptr(self.global_values), 1.0, ptr(self.partials), ptr(self.reductions),
            ptr(self.host), ptr(self.before), ptr(self.rows), ptr(self.cols), ptr(self.axis_offsets),
            ptr(self.axis_sizes), ptr(self.axis_values),
        )  # fmt: skip

    def set_scalars(self, hyper: dict[str, float], maximize: bool, global_values: dict[str, Tensor]) -> None:
        for i, name in enumerate(self.kernel.hypers):
            self.hyper[i] = float(hyper[name])
        self.global_values[:] = np.nan
        for i, name in enumerate(self.kernel.global_names):
            if name in global_values:
                self.global_values[i] = float(global_values[name])
        self.context.grad_sign = -1.0 if maximize else 1.0


# --------------------------------------------------------------------------- grouping
def _check_lengths(params, grads, steps, states) -> None:
    n = len(params)
    lengths = {"grads": len(grads), "steps": len(steps), **{f"states[{k!r}]": len(v) for k, v in states.items()}}
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(
            f"expected {n} entries (one per param) in {', '.join(f'{k} (got {v})' for k, v in wrong.items())}"
        )


class TensorGroup:
    """The tensors (indices `index` of the caller's lists) that share one dtype per array."""

    def __init__(self, index: list[int], params, grads, states: dict[str, list[Tensor]]):
        self.index = index
        pick = (lambda ts: ts) if len(index) == len(params) else (lambda ts: [ts[i] for i in index])
        self.tensors = {"param": pick(params), "grad": pick(grads), **{k: pick(v) for k, v in states.items()}}
        self.dtypes = {name: str(ts[0].dtype) for name, ts in self.tensors.items()}  # the group's, by _groups
        for name, ts in self.tensors.items():
            if ts[0].dtype not in _DTYPES:
                raise TypeError(
                    f"{name}: the fused C++ kernels support {', '.join(map(str, _DTYPES))}, not {ts[0].dtype}"
                )

    def check(self, kernel: Kernel) -> None:
        """What the kernel assumes of the tensors (once per set of tensors: see Kernel.call)."""
        missing = [n for n in kernel.arrays[2:] + kernel.tensor_states if n not in self.tensors]
        if missing:
            raise KeyError(f"states lacks {', '.join(missing)}, which these options use")
        for name, ts in self.tensors.items():
            for t in ts:
                if t.device.type != "cpu":
                    raise ValueError(f"{name}: the fused C++ kernels update CPU tensors; got one on {t.device}")
        for name in kernel.arrays:
            for p, t in zip(self.tensors["param"], self.tensors[name]):
                if name in kernel.reduced_arrays:
                    check_reduced(name, t, p, kernel.reduced_arrays[name], kernel.axis_view)
                elif t.shape != p.shape:
                    raise ValueError(
                        f"{name}: a tensor of shape {tuple(t.shape)} for a param of shape {tuple(p.shape)}"
                    )
        for name in kernel.tensor_states:
            if any(t.numel() != 1 for t in self.tensors[name]):
                raise ValueError(f"{name}: a per-tensor state must be a one-element tensor")


_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _groups(params, grads, states: dict[str, list[Tensor]]) -> list[TensorGroup]:
    """The tensors split by the dtype of every array (one group when each list has one dtype,
    the common case, checked without building a key per tensor)."""
    columns = [params, grads, *states.values()]
    if all(len({t.dtype for t in ts}) == 1 for ts in columns):
        return [TensorGroup(list(range(len(params))), params, grads, states)]
    members: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*[[t.dtype for t in ts] for ts in columns])):
        members.setdefault(key, []).append(i)
    return [TensorGroup(idx, params, grads, states) for idx in members.values()]
