"""The eager paths (for-loop and foreach) of the generated optimizers under sharding, in
real process groups (gloo on 127.0.0.1, 2 ranks): FSDP2 (fully_shard, DTensor parameters,
uneven shards and an empty one) and ZeRO-1 (ZeroRedundancyOptimizer with our
process_group), each equal to a single-process run given the same gradients; and the
collectives a foreach step makes, counted.

Each case runs in one spawn of 2 processes that loops over its optimizers; a worker asserts
and the failure comes back through torch.multiprocessing.spawn."""

from __future__ import annotations

import datetime
import functools
import pickle
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optgen
from optgen.optimizers import LARS, SGD, AdamW, Adan, Lamb, SETAdam
from optgen.parse import loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_exit import end_rank, start_rank

WORLD = 2
STEPS = 3
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}  # relative to the largest entry
DEADLINE = 90  # seconds for one spawn of workers
# dim 0 of 1 leaves rank 1 an empty shard; 3 rows split 2 + 1; 7 rows 4 + 3
SHAPES = [(3, 4), (1, 5), (1,), (7,), (2, 3)]

# name -> (class, constructor keywords, all_reduce calls per step): one per phase, param
# group (two below) and kind of reduction, and one for a global norm, on both eager paths
# (the for-loop's first loop reduces every tensor, then one collective combines them; LARS's
# foreach path splits each group here into matrices and vectors, a host-side branch on
# ndim, and combines the group's norms once before the split)
CASES = {
    "lamb": (Lamb, {"lr": 0.1, "weight_decay": 0.1, "max_grad_norm": 0.0}, 2),
    "lamb_pre_norm": (Lamb, {"lr": 0.1, "max_grad_norm": 0.3, "pre_norm": True}, 3),
    # other settings of the options: each reduces its own way in the for-loop's first loop
    "lamb_coupled": (
        Lamb,
        {"lr": 0.1, "weight_decay": 0.1, "max_grad_norm": 0.0, "weight_decouple": False, "grad_averaging": False},
        2,
    ),
    "lamb_fixed_decay": (
        Lamb,
        {"lr": 0.1, "weight_decay": 0.1, "max_grad_norm": 0.3, "fixed_decay": True, "pre_norm": True, "maximize": True},
        3,
    ),
    "lars": (LARS, {"lr": 0.1, "weight_decay": 0.01, "trust_coefficient": 0.02}, 2),
    "lars_nesterov": (LARS, {"lr": 0.1, "weight_decay": 0.01, "nesterov": True, "maximize": True}, 2),
    # one all_reduce for the sums and norms, one for the min: two kinds, two groups
    "setadam": (SETAdam, {"lr": 0.1, "weight_decay": 0.01}, 4),
    "setadam_decoupled": (SETAdam, {"lr": 0.1, "weight_decay": 0.01, "decoupled_weight_decay": True}, 4),
    "adan": (Adan, {"lr": 0.05, "weight_decay": 0.02, "max_grad_norm": 0.3}, 1),
    # elementwise updates: the local shards alone (these failed on DTensors in foreach)
    "sgd": (SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, 0),
    "adamw": (AdamW, {"lr": 0.1, "weight_decay": 0.01}, 0),
}
# Specs compiled from text for what the catalog lacks: two phases of reductions (the second
# norm reads the first), a scalar state read by a reduction's argument, and a tensor state,
# mean, amin, amax, numel and step together; the collectives per step on either path:
# one per phase, group and kind (norms and sums are one kind)
_HEAD = """
name: {name}
summary: A spec of the sharding tests.
hyperparameters:
  lr:   {{default: 0.1, range: "(0, inf)"}}
  beta: {{default: 0.9, range: "[0, 1)"}}
  eps:  {{default: 1.0e-8, range: "(0, inf)"}}
  weight_decay: {{default: 0.0, range: "[0, inf)"}}
options:
  flag: false
state:
  exp_avg: {{init: 0}}
  s: {{init: 1, scope: tensor}}
update: |
"""
COMPILED = {
    "TwoPhases": (
        """  exp_avg = beta * exp_avg + grad / (norm(grad) + eps)
  param = param - lr * exp_avg / (norm(exp_avg) + eps)
""",
        {"lr": 0.1},
        4,
    ),
    "ScalarState": (
        """  s = s * beta
  exp_avg = exp_avg * s + grad
  param = param - lr * exp_avg / (norm(exp_avg) + eps)
""",
        {"lr": 0.1},
        2,
    ),
    "MixedReductions": (
        """  exp_avg = beta * exp_avg + (1 - beta) * grad
  s = beta * s + (1 - beta) * mean(grad * grad)
  if flag:
      param = param * (1 - lr * weight_decay)
  m = amax(abs(exp_avg)) + amin(exp_avg) * 0.1
  param = param - lr * exp_avg / (sqrt(s / (1 - beta ** step)) + eps + m / numel(param))
""",
        {"lr": 0.1, "weight_decay": 0.1, "flag": True},
        6,
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int) -> None:
    start_rank()
    torch.set_default_dtype(torch.float64)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=DEADLINE),  # a collective left waiting fails
    )


def _initial() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]


def _gradient(full_param: torch.Tensor, step: int, index: int) -> torch.Tensor:
    """A gradient that depends on the parameter (so that an error in one step shows in the
    next), the same on every rank and in the single-process run."""
    generator = torch.Generator().manual_seed(1000 * step + index)
    noise = torch.randn(full_param.shape, generator=generator, dtype=torch.float64)
    return torch.sin(3 * full_param) + 0.5 * noise.to(full_param.dtype)


def _groups(params: list, kwargs: dict) -> list[dict]:
    """Two param groups, the second with a different lr."""
    return [{"params": params[:3]}, {"params": params[3:], "lr": kwargs["lr"] / 2}]


def _reference(cls, kwargs: dict, foreach: bool, dtype=torch.float64) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(t.to(dtype)) for t in _initial()]
    opt = cls(_groups(params, kwargs), foreach=foreach, **kwargs)
    for step in range(STEPS):
        for i, p in enumerate(params):
            p.grad = _gradient(p.detach(), step, i)
        opt.step()
    return [p.detach() for p in params]


class _Counting:
    """Counts torch.distributed.all_reduce calls (the generated code looks it up on each call)."""

    def __init__(self):
        self.calls = 0
        self.original = dist.all_reduce

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)

    def __enter__(self):
        dist.all_reduce = self
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


def _sharded_run(
    mesh, cls, kwargs: dict, foreach: bool, dtype, placements=None, grad_placements=None
) -> tuple[list, list[int]]:
    """STEPS steps on DTensor parameters, fully_shard's (placements None: Shard(0), uneven,
    one of them empty on rank 1) or distribute_tensor's, with gradients placed as the
    parameters or as `grad_placements`: the parameters and the number of all_reduce calls
    each step made."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    if placements is None:
        model = torch.nn.Module()
        model.ps = torch.nn.ParameterList([torch.nn.Parameter(t.to(dtype)) for t in _initial()])
        fully_shard(model, mesh=mesh)
        params = list(model.parameters())
        empty = {0} if dist.get_rank() == 1 else {5, 1}
        assert {p.to_local().numel() for p in params[1:3]} == empty
    else:
        params = [torch.nn.Parameter(distribute_tensor(t.to(dtype), mesh, placements)) for t in _initial()]
    opt = cls(_groups(params, kwargs), foreach=foreach, **kwargs)
    calls = []
    for step in range(STEPS):
        for i, p in enumerate(params):
            grad = _gradient(p.detach().full_tensor(), step, i)
            p.grad = distribute_tensor(grad, mesh, grad_placements or p.placements)
        with _Counting() as count:
            opt.step()
        calls.append(count.calls)
    return params, calls


def _assert_equal(params: list, cls, kwargs: dict, foreach: bool, dtype, what) -> None:
    """The parameters (DTensors) equal those of a single-process run."""
    for i, (p, want) in enumerate(zip(params, _reference(cls, kwargs, foreach, dtype))):
        error = (p.detach().full_tensor() - want).abs().max().item()
        assert error <= TOLERANCE[dtype] * max(1.0, want.abs().max().item()), (what, i, error)


def _fsdp_worker(rank: int, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    _init(rank, port)
    mesh = init_device_mesh("cpu", (WORLD,))
    try:
        for name, (cls, kwargs, collectives) in CASES.items():
            for foreach in (False, True):
                params, calls = _sharded_run(mesh, cls, kwargs, foreach, torch.float64)
                _assert_equal(params, cls, kwargs, foreach, torch.float64, (name, foreach))
                assert calls == [collectives] * STEPS, (name, foreach, calls)
        for name, (update, kwargs, collectives) in COMPILED.items():
            cls = optgen.compile(loads(_HEAD.format(name=name) + update))
            for foreach in (False, True):
                params, calls = _sharded_run(mesh, cls, kwargs, foreach, torch.float64)
                _assert_equal(params, cls, kwargs, foreach, torch.float64, (name, foreach))
                assert calls == [collectives] * STEPS, (name, foreach, calls)
        for name in ("lamb", "setadam"):
            cls, kwargs, _ = CASES[name]
            for foreach in (False, True):
                params, _ = _sharded_run(mesh, cls, kwargs, foreach, torch.float32)
                _assert_equal(params, cls, kwargs, foreach, torch.float32, (name, foreach, "float32"))
            # replicated DTensors (each rank holds the whole tensor): nothing to combine
            params, calls = _sharded_run(mesh, cls, kwargs, True, torch.float64, [Replicate()])
            _assert_equal(params, cls, kwargs, True, torch.float64, (name, "replicated"))
            assert calls == [0] * STEPS, (name, "replicated", calls)
            # gradients replicated, parameters sharded: the gradients are resharded alike
            params, _ = _sharded_run(mesh, cls, kwargs, False, torch.float64, [Shard(0)], [Replicate()])
            _assert_equal(params, cls, kwargs, False, torch.float64, (name, "resharded gradients"))
        # HSDP's layout, (Replicate, Shard(0)) on a 2-d mesh: reductions over the shard dim
        mesh_2d = init_device_mesh("cpu", (1, WORLD))
        for name in ("lars", "adan"):
            cls, kwargs, collectives = CASES[name]
            params, calls = _sharded_run(mesh_2d, cls, kwargs, True, torch.float64, [Replicate(), Shard(0)])
            _assert_equal(params, cls, kwargs, True, torch.float64, (name, "2-d mesh"))
            assert calls == [collectives] * STEPS, (name, "2-d mesh", calls)
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    end_rank()


def _zero_worker(rank: int, port: int) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    _init(rank, port)
    cases = {"adan": CASES["adan"], "lamb_pre_norm": CASES["lamb_pre_norm"]}
    try:
        for name, (cls, kwargs, _) in cases.items():
            for foreach in (False, True):
                errors = {}
                for process_group in (dist.group.WORLD, None):
                    params = [torch.nn.Parameter(t.clone()) for t in _initial()]
                    opt = ZeroRedundancyOptimizer(
                        _groups(params, kwargs),
                        optimizer_class=functools.partial(cls, process_group=process_group),
                        foreach=foreach,
                        **kwargs,
                    )
                    # each rank optimizes a part of the parameters
                    assert 0 < sum(len(group["params"]) for group in opt.optim.param_groups) < len(params)
                    for step in range(STEPS):
                        for i, p in enumerate(params):
                            p.grad = _gradient(p.detach(), step, i)
                        opt.step()
                    # the process group is no param group key: the state dict pickles
                    local = opt.optim
                    assert all("process_group" not in group for group in local.state_dict()["param_groups"])
                    assert pickle.loads(pickle.dumps(local))._process_group is None
                    expected = _reference(cls, kwargs, foreach)
                    errors[process_group] = max((p.detach() - w).abs().max().item() for p, w in zip(params, expected))
                assert errors[dist.group.WORLD] <= TOLERANCE[torch.float64], (name, foreach, errors)
                # without the process group each rank clips by its own partition's norm:
                # the check above would see it
                assert errors[None] > 1e-6, (name, foreach, errors)
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    end_rank()


def _spawn(worker) -> None:
    """Run `worker` on WORLD ranks; a worker's exception fails the test, and so does a run
    past DEADLINE (its processes killed)."""
    context = mp.spawn(worker, args=(_free_port(),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{worker.__name__} ran past {DEADLINE} s")


def test_fsdp2_equals_single_process_and_one_all_reduce_per_phase_group_and_kind():
    _spawn(_fsdp_worker)


def test_zero1_global_norm_over_the_process_group_equals_single_process():
    _spawn(_zero_worker)
