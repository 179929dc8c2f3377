"""fused=True under FSDP2 (DTensor parameters from fully_shard): the kernels run on each
process's local shards and the runtimes all-reduce every per-tensor reduction between passes
(optgen/backends/fused_shards.py). Two processes (gloo on 127.0.0.1), shards of uneven size
and an empty one, against a single-process run given the same gradients: the C++ kernels in
float64 to 1e-12, the Triton kernels (TRITON_INTERPRET=1, float32 arithmetic) to 1e-6; and the
number of all-reduces per step.

One process group loops over every case (a spawn costs seconds); each worker writes its
findings to a JSON file that the tests read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpp_harness import have_compiler
from rank_exit import end_rank, start_rank

WORLD = 2
STEPS = 3
# dim 0 split by torch.chunk over 2 ranks: 2+1 rows, 1+0 rows (an empty shard), 4+3,
# 35+35 rows of 500 (two C++ blocks of 16384 elements on each rank)
SHAPES = [(3, 4), (1, 5), (7,), (70, 500)]
# (class, keywords, all-reduces per step: one per kind of reduction per pass)
CASES = {
    "Adam": ({"weight_decay": 0.01}, 0),
    "Lamb": ({"weight_decay": 0.01}, 1),  # one pass: two sums
    "LARS": ({"weight_decay": 0.01, "momentum": 0.9}, 1),  # one pass: two sums
    "SETAdam": ({"weight_decay": 0.01}, 2),  # one pass: two sums and an amin
    # a global clip: the class passes it combined over the processes, with collectives of its
    # own (not the fused runtime's: not counted here)
    "Adan": ({"weight_decay": 0.01, "max_grad_norm": 0.5}, None),
}
TRITON_CASES = ["Lamb", "SETAdam"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(dtype):
    gen = torch.Generator().manual_seed(0)
    start = [0.05 * torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES] for _ in range(STEPS)]
    return start, grads


def _single(cls, keywords, start, grads):
    """The reference: one process, plain tensors, the same fused path."""
    params = [p.clone().requires_grad_() for p in start]
    opt = cls(params, fused=True, **keywords)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], [opt.state[p] for p in params]


def _sharded(cls, keywords, start, grads, mesh, replicated: int | None):
    """FSDP2: the params are DTensors sharded on dim 0; grads given as the same DTensors.
    `replicated`: instead, DTensors made directly, that one param replicated on every rank
    (its sums must count once, not once per rank)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    if replicated is None:
        model = torch.nn.Module()
        model.weights = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in start])
        fully_shard(model, mesh=mesh)
        params = list(model.parameters())
    else:
        placements = [[Replicate()] if i == replicated else [Shard(0)] for i in range(len(start))]
        params = [torch.nn.Parameter(distribute_tensor(p.clone(), mesh, pl)) for p, pl in zip(start, placements)]
    opt = cls(params, fused=True, **keywords)
    counts = []
    calls = []
    real_all_reduce = torch.distributed.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return real_all_reduce(*args, **kwargs)

    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = distribute_tensor(g.clone(), mesh, p.placements)
            assert p.grad.to_local().shape == p.to_local().shape
        calls.clear()
        torch.distributed.all_reduce = counting_all_reduce
        try:
            opt.step()
        finally:
            torch.distributed.all_reduce = real_all_reduce
        counts.append(len(calls))
    full = [p.detach().full_tensor() for p in params]
    states = [{k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in opt.state[p].items()} for p in params]
    return full, states, counts, [p.to_local().numel() for p in params]


def _max_rel(a: list, b: list) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        scale = max(y.abs().max().item(), 1e-30) if y.numel() else 1.0
        worst = max(worst, (x.double() - y.double()).abs().max().item() / scale if y.numel() else 0.0)
    return worst


def _case(name, path, mesh, trap=False, replicated=None) -> dict:
    from optgen import optimizers

    cls = getattr(optimizers, name)
    keywords = CASES[name][0]
    dtype = torch.float64 if path == "cpp" else torch.float32
    start, grads = _data(dtype)
    ref, ref_states = _single(cls, keywords, start, grads)
    if trap:  # the local-norm trap: each process's reductions over its own shard only
        from optgen.backends import fused_shards

        fused_shards.Shards.combine = lambda self, table, columns, ops: None
    full, states, counts, local_numels = _sharded(cls, keywords, start, grads, mesh, replicated)
    state_errors = {}
    for key in ref_states[0]:
        if key != "step" and torch.is_tensor(ref_states[0][key]) and ref_states[0][key].is_floating_point():
            state_errors[key] = _max_rel([s[key] for s in states], [s[key] for s in ref_states])
    return {
        "param_error": _max_rel(full, ref),
        "state_errors": state_errors,
        "counts": counts,
        "local_numels": local_numels,
        "finite": all(bool(torch.isfinite(p).all()) for p in full),
    }


def worker(rank: int, port: int, path: str, names: list[str], out: str, trap: bool) -> None:
    """One rank: every case in `names` on one process group; rank 0 writes the results."""
    os.environ["TRITON_INTERPRET"] = "1" if path == "triton" else "0"  # before triton is imported
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    start_rank()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = {}
        for name in names:
            results[name] = _case(name, path, mesh, trap)
            results[name]["all_local_numels"] = _gather(results[name]["local_numels"])
        if path == "cpp" and not trap:  # a param group mixing sharded and replicated params
            results["Lamb replicated"] = _case("Lamb", path, mesh, replicated=2)
        if rank == 0:
            Path(out).write_text(json.dumps(results))
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    end_rank()


def _gather(values: list[int]) -> list[list[int]]:
    import torch.distributed as dist

    gathered = [None] * WORLD
    dist.all_gather_object(gathered, values)
    return gathered


def _run(tmp_path, path: str, names: list[str], trap: bool = False) -> dict:
    """Spawn the ranks in a fresh interpreter (bounded in time), return rank 0's results."""
    out = tmp_path / f"{path}{'_trap' if trap else ''}.json"
    code = (
        "import sys, torch.multiprocessing as mp\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import test_sharded_fused as t\n"
        f"mp.spawn(t.worker, args=({_free_port()}, {path!r}, {names!r}, {str(out)!r}, {trap}), nprocs={WORLD})\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, timeout=120, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def _check_shards(result: dict) -> None:
    """The split the test means to exercise: uneven shards, one of them empty."""
    by_rank = result["all_local_numels"]
    assert by_rank == [[8, 5, 4, 17500], [4, 0, 3, 17500]]


needs_compiler = pytest.mark.skipif(not have_compiler(), reason="no C++ compiler")


@needs_compiler
def test_cpp_fused_fsdp2_equals_single_process(tmp_path):
    results = _run(tmp_path, "cpp", list(CASES))
    for name, (_, per_step) in CASES.items():
        result = results[name]
        _check_shards(result)
        assert result["finite"], name
        assert result["param_error"] <= 1e-12, (name, result["param_error"])
        assert result["state_errors"] and max(result["state_errors"].values()) <= 1e-12, (name, result)
        assert per_step is None or result["counts"] == [per_step] * STEPS, (name, result["counts"])
    mixed = results["Lamb replicated"]
    assert mixed["local_numels"] == [8, 5, 7, 17500]  # rank 0's: the (7,) param whole
    assert mixed["param_error"] <= 1e-12 and mixed["counts"] == [1] * STEPS, mixed


def test_triton_fused_fsdp2_equals_single_process(tmp_path):
    """float32 kernels: the sharded sums add the same terms in another order (per shard, then
    across ranks, versus per 1024-element block with atomics), a few ulps of each norm, which
    the update carries into the params as a relative error of about 1e-7 (measured 7.6e-8)."""
    pytest.importorskip("triton")
    results = _run(tmp_path, "triton", TRITON_CASES)
    for name in TRITON_CASES:
        result = results[name]
        _check_shards(result)
        assert result["finite"], name
        assert result["param_error"] <= 1e-6, (name, result["param_error"])
        assert max(result["state_errors"].values()) <= 1e-6, (name, result)
        assert result["counts"] == [CASES[name][1]] * STEPS, (name, result["counts"])


@needs_compiler
def test_shard_local_reductions_are_caught(tmp_path):
    """The check can fail: with each rank's reductions left over its own shard (what a
    layer-wise norm computed naively on a shard gives), Lamb and SETAdam are far off."""
    results = _run(tmp_path, "cpp", ["Lamb", "SETAdam"], trap=True)
    for name in ("Lamb", "SETAdam"):
        assert results[name]["param_error"] > 1e-6, (name, results[name])
        assert results[name]["counts"] == [0] * STEPS
