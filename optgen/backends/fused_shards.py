"""The fused kernels on sharded parameters (FSDP2's DTensors): each process runs the kernels
on its local shards, and the runtimes combine every per-tensor reduction across the shards
between passes.

    shards = Shards.of(params)                  # None unless the params are DTensors
    params = shards.local(params)               # the local shards, updated in place
    shards.combine(table, columns, ops)         # all-reduce partial reductions, in place

A per-tensor reduction (a norm, an amin) runs over the whole tensor, whichever dimension is
sharded: each process reduces its own shard (an empty shard gives the reduction's identity:
0 for a sum, +inf for a min, -inf for a max), and one all-reduce per kind of reduction
(sum, min, max) per sharded mesh dimension combines the column of every tensor at once. A
tensor replicated along a mesh dimension holds the same values on each process of it: the
min and max of equal values are those values, and of a sum only the process at coordinate 0
keeps its partial (the others add 0), so no collective is needed for it alone.

Global reductions (a gradient-norm clip over every parameter) are not combined here: the
torch class passes them to the runtimes already reduced over the processes.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import Tensor


def _dtensor_class() -> type | None:
    """DTensor, where torch.distributed.tensor is imported: wherever a DTensor exists. (Not
    imported here: it takes a second or more, which a single process should not pay.)"""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


class Shards:
    """Where the tensors of one call are sharded: the mesh dimensions to reduce over, and
    each tensor's whole size (a kernel reading numel(param) needs it, not the shard's)."""

    def __init__(self, numels: list[int], dims: list[tuple[object, Tensor | None]]):
        self.numels = numels
        # (process group, which tensors' sum partials this process keeps; None: all)
        self.dims = dims

    @classmethod
    def of(cls, params: list[Tensor]) -> Shards | None:
        """The sharding of `params`, or None when they are plain tensors (one process)."""
        dtensor = _dtensor_class()
        if dtensor is None:
            return None
        sharded = [isinstance(p, dtensor) for p in params]
        if not any(sharded):
            return None
        if not all(sharded):
            raise ValueError("fused=True: a param group mixes DTensor and plain tensor parameters")
        mesh = params[0].device_mesh
        if any(p.device_mesh != mesh for p in params):
            raise ValueError("fused=True: the DTensor parameters of a param group must share one device mesh")
        dims = []
        for dim in range(mesh.ndim):
            placements = [p.placements[dim] for p in params]
            if any(pl.is_partial() for pl in placements):
                raise ValueError("fused=True: a parameter with a Partial placement (reduce it first)")
            if not any(pl.is_shard() for pl in placements):
                continue  # replicated along this dimension: each process has the whole reduction
            first = mesh.get_local_rank(dim) == 0
            keep = [pl.is_shard() or first for pl in placements]
            dims.append((mesh.get_group(dim), None if all(keep) else torch.tensor(keep)))
        return cls([p.numel() for p in params], dims)

    def subset(self, index: list[int]) -> Shards:
        """The sharding of the tensors `index` (a runtime's group of one dtype)."""
        if len(index) == len(self.numels):
            return self
        dims = [(group, None if keep is None else keep[index]) for group, keep in self.dims]
        return Shards([self.numels[i] for i in index], dims)

    @staticmethod
    def local(tensors: list[Tensor]) -> list[Tensor]:
        """Each DTensor's local shard (a view of its data: updating it updates the DTensor)."""
        dtensor = _dtensor_class()
        return [t.to_local() if isinstance(t, dtensor) else t for t in tensors]

    def combine(self, table: Tensor, columns: list[int], ops: list[str]) -> None:
        """Replace this process's partials in `table` [tensors, reductions] (columns
        `columns`, reduced by `ops`) by the reductions over every shard: one all-reduce per
        kind of reduction and sharded mesh dimension."""
        for kind in ("sum", "min", "max"):
            picked = [c for c, op in zip(columns, ops) if op == kind]
            if not picked:
                continue
            values = table[:, picked]  # a copy: one contiguous buffer for the collective
            for group, keep in self.dims:
                if kind == "sum" and keep is not None:
                    values[~keep.to(values.device)] = 0
                dist.all_reduce(values, op=getattr(dist.ReduceOp, kind.upper()), group=group)
            table[:, picked] = values
