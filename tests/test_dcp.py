"""Distributed checkpoints of every catalog optimizer under FSDP2: torch.distributed.checkpoint
with get_optimizer_state_dict / set_optimizer_state_dict. Two processes (gloo on 127.0.0.1),
shards of uneven size and an empty one, float64, on each path: for-loop, foreach and fused.
Two steps, save, two more: the uninterrupted run; a fresh model and optimizer that load the
checkpoint and take the same two steps must end with the same params and states, bit for
bit and in the same dtypes (element states, per-tensor scalar states such as NAdam's
mu_product, per-tensor step counts and the per-group step count, a 0-d tensor in the param
group).

One process group per path loops over every spec (a spawn costs seconds); rank 0 writes
what it found to a JSON file that the test reads."""

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
from rank_exit import end_rank, start_rank

WORLD = 2
# dim 0 split by torch.chunk over 2 ranks: 2+1 rows, 1+0 rows (an empty shard), 4+3
SHAPES = [(3, 4), (1, 5), (7,)]
KEYWORDS = {"weight_decay": 0.01}  # where a spec has it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(cls, mesh, path: str):
    """A fresh FSDP2 model (its params from the same seed on every call) and its optimizer."""
    import inspect

    from torch.distributed.fsdp import fully_shard

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    model.weights = torch.nn.ParameterList(
        [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]
    )
    fully_shard(model, mesh=mesh)
    accepted = inspect.signature(cls.__init__).parameters
    flags = {"fused": True} if path == "fused" else {"foreach": path == "foreach"}
    return model, cls(model.parameters(), **{k: v for k, v in KEYWORDS.items() if k in accepted}, **flags)


def _steps(model, opt, mesh, first: int, count: int) -> None:
    """Steps `first` .. `first + count - 1`, each with its own gradients (seeded by the step)."""
    from torch.distributed.tensor import distribute_tensor

    for step in range(first, first + count):
        gen = torch.Generator().manual_seed(100 + step)
        for p, shape in zip(model.parameters(), SHAPES):
            g = torch.randn(shape, generator=gen, dtype=torch.float64)
            p.grad = distribute_tensor(g, mesh, p.placements)
        opt.step()


def _snapshot(model, opt) -> dict[str, torch.Tensor]:
    """Every param and state, whole (full_tensor of a DTensor), by name; and each group's step."""
    out = {}
    for i, p in enumerate(model.parameters()):
        out[f"param{i}"] = p.detach().full_tensor()
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):
                out[f"param{i}.{key}"] = value.full_tensor() if hasattr(value, "full_tensor") else value.clone()
    for i, group in enumerate(opt.param_groups):
        step = group.get("step", torch.tensor(-1.0))
        out[f"group{i}.step"] = step.clone() if torch.is_tensor(step) else torch.tensor(float(step))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: the same dtype and the same values."""
    return a.dtype == b.dtype and torch.equal(a, b)


def _case(name: str, path: str, mesh, folder: Path) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from optgen import optimizers

    cls = getattr(optimizers, name)
    model, opt = _build(cls, mesh, path)
    _steps(model, opt, mesh, 0, 2)
    saved = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(saved, checkpoint_id=str(folder))
    _steps(model, opt, mesh, 2, 2)
    uninterrupted = _snapshot(model, opt)

    model, opt = _build(cls, mesh, path)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    _steps(model, opt, mesh, 2, 2)
    resumed = _snapshot(model, opt)
    return {
        "keys": sorted(uninterrupted),
        "missing": sorted(set(uninterrupted) ^ set(resumed)),
        "different": sorted(k for k in uninterrupted if k in resumed and not _same(uninterrupted[k], resumed[k])),
    }


def worker(rank: int, port: int, path: str, names: list[str], folder: str) -> None:
    """One rank: every spec in `names` on one process group; rank 0 writes the results."""
    os.environ["TRITON_INTERPRET"] = "0"  # fused=True on CPU tensors: the C++ kernels
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    start_rank()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = {}
        for name in names:
            try:
                results[name] = _case(name, path, mesh, Path(folder) / name)
            except Exception as exc:  # noqa: BLE001 - raised on every rank alike: reported per spec
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        if rank == 0:
            (Path(folder) / "results.json").write_text(json.dumps(results))
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    end_rank()


def _sharded_names() -> list[str]:
    """Every catalog optimizer but those with matrix operations or axis reductions, which
    refuse sharded (DTensor) parameters (tests/test_matrix.py, tests/test_axes.py), and those
    with group states (Prodigy's sums over all parameters read states: they take no DTensor yet)."""
    import optgen
    from optgen import optimizers
    from optgen.backends.fused_matrix import is_matrix_spec
    from optgen.fused_support import fused_refusal
    from optgen.shapes import axis_constructs

    specs = {n: optgen.load(n.lower()) for n in optimizers.__all__}
    return [
        n
        for n, spec in specs.items()
        if not fused_refusal(spec)
        and not is_matrix_spec(spec)
        and not axis_constructs(spec)
        and not any(s.scope == "group" for s in spec.state.values())
    ]


def _run(tmp_path, path: str) -> dict:
    names = _sharded_names()
    code = (
        "import sys, torch.multiprocessing as mp\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import test_dcp as t\n"
        f"mp.spawn(t.worker, args=({_free_port()}, {path!r}, {names!r}, {str(tmp_path)!r}), nprocs={WORLD})\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, timeout=150, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return json.loads((tmp_path / "results.json").read_text())


def _check(results: dict) -> None:
    assert sorted(results) == sorted(_sharded_names())
    errors = {name: result["error"] for name, result in results.items() if "error" in result}
    assert not errors, errors
    for name, result in results.items():
        assert any("." in k and not k.startswith("group") for k in result["keys"]), (name, "no state saved")
        assert not result["missing"], (name, result["missing"])
        assert not result["different"], (name, result["different"])
    # the per-tensor scalar state is among what was compared
    assert "param1.mu_product" in results["NAdam"]["keys"]


@pytest.mark.parametrize("path", ["for-loop", "foreach", "fused"])
def test_dcp_resume_equals_uninterrupted(tmp_path, path):
    """The eager paths reduce explicitly on the local shards (_all_reduce_partials), the
    fused path runs the C++ kernels on them."""
    results = _run(tmp_path, path)
    _check(results)
    # the per-group step count (Lamb, LARS) is compared, as a tensor
    assert "group0.step" in results["Lamb"]["keys"]


def test_a_loaded_per_tensor_scalar_state_keeps_its_dtype():
    """Optimizer.load_state_dict casts every floating state but "step" to its param's dtype:
    NAdam's mu_product (kept in torch's scalar dtype, as torch.optim.NAdam keeps it) comes
    back float64 for float64 params unless the class restores it, and a resumed run then
    rounds differently from the uninterrupted one."""
    import copy

    from optgen import optimizers

    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(4)]

    def run(params, opt, step_grads):
        for gs in step_grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()

    params = [p.clone().requires_grad_() for p in start]
    opt = optimizers.NAdam(params)
    run(params, opt, grads[:2])
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    run(params, opt, grads[2:])

    resumed = [p.clone().requires_grad_() for p in saved_params]
    fresh = optimizers.NAdam(resumed)
    fresh.load_state_dict(saved)
    assert fresh.state[resumed[0]]["mu_product"].dtype == opt.state[params[0]]["mu_product"].dtype
    run(resumed, fresh, grads[2:])
    for a, b in zip(params, resumed):
        assert torch.equal(a.detach(), b.detach())
