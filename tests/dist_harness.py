"""The distributed parity harness (tests/test_distributed.py): every catalog optimizer, on each
path, trained for a few steps under DDP, FSDP2 (`fully_shard`) or ZeRO-1 by gloo processes on
127.0.0.1, against a single-process run of the same model, inputs and path.

One launch per configuration: its worker processes form one process group and loop over
every case, each rank appending one JSON line per case to its own file. A case that raises on
some ranks while others wait in a collective would hang them; so after each case the ranks
meet in the parent's TCPStore (not in gloo): a rank that does not report within AGREE_S is
taken as stuck, the others exit, closing their sockets, which fails the stuck rank's
collective, and the parent relaunches the configuration from the next case. A launch is
killed when no rank has finished a case for STALL_S (a rank stuck outside a collective),
and the unfinished case reported; so a hung rank fails its cell instead of hanging CI.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import importlib
import importlib.util
import inspect
import json
import multiprocessing
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from rank_exit import end_rank, start_rank
from torch import nn

# The keyword through which an optgen optimizer learns the process group of its global
# reductions (gradient clipping, pre-norms) when it holds only a partition of the parameters
# (ZeRO-1). Passed only where the class's __init__ takes it: the one name to change if the
# optimizer API names it otherwise.
GROUP_KEYWORD = "process_group"

STEPS = 4
GLOO_TIMEOUT_S = 60  # a collective that never completes: the backstop behind AGREE_S
AGREE_S = 3.0  # how long the ranks that finished a case wait for the others (too short
# costs only time: a slow rank still records its case before it sees the abort and exits)
STALL_S = 150.0  # no case finished for this long (past the gloo backstop): kill the launch
PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# The Triton kernels in Triton's interpreter (fused=True with TRITON_INTERPRET=1 on CPU
# tensors): slow, so only the specs with per-tensor and global reductions.
TRITON_SPECS = ("Adan", "Lamb", "LARS", "SETAdam")

# Hyperparameters that make the hard terms run: global clipping (Adan, Lamb with pre_norm;
# max_grad_norm 0.05, below the gradients' global norm of 0.6 to 1.3, so it clips), per-tensor norms (Lamb, LARS),
# SETAdam's per-tensor sum, norm and amin, momentum, weight decay.
HYPER = {
    "AdaBelief": {"weight_decay": 0.01},
    "AdaBound": {"weight_decay": 0.01},
    "Adadelta": {"weight_decay": 0.01},
    "Adagrad": {"weight_decay": 0.01, "lr_decay": 0.01},
    "Adam": {"weight_decay": 0.01, "amsgrad": True},
    "Adamax": {"weight_decay": 0.01},
    "AdamW": {},
    "Adan": {"weight_decay": 0.02, "max_grad_norm": 0.05},
    "Lamb": {"weight_decay": 0.01, "pre_norm": True, "max_grad_norm": 0.05},
    "LARS": {"weight_decay": 0.01, "trust_coefficient": 0.02, "nesterov": True},
    "Lion": {"lr": 1e-3, "weight_decay": 0.01},
    "NAdam": {"weight_decay": 0.01},
    "PAdam": {"lr": 0.01, "weight_decay": 0.01},
    "RAdam": {"weight_decay": 0.01},
    "RMSprop": {"weight_decay": 0.01, "momentum": 0.9, "centered": True},
    "SETAdam": {"weight_decay": 0.01},
    "SGD": {"lr": 0.01, "weight_decay": 0.01, "momentum": 0.9, "nesterov": True},
}
TRAP = "ShardLocalLamb"
STUCK = "FailsOnLastRank"


@dataclass(frozen=True)
class Config:
    """A way of training on `world` ranks: "ddp", "fsdp" (fully_shard on the root module) or
    "zero" (DDP and ZeroRedundancyOptimizer)."""

    name: str
    kind: str
    world: int


CONFIGS = (
    Config("ddp2", "ddp", 2),
    Config("fsdp2", "fsdp", 2),
    Config("fsdp3", "fsdp", 3),  # uneven shards; the (2, 7) weight and (2,) bias: empty on rank 2
    Config("zero2", "zero", 2),
)


@dataclass(frozen=True)
class Case:
    spec: str  # a catalog class name, or TRAP
    path: str  # a PATHS key or "triton"
    dtype: str  # "float64" or "float32"

    @property
    def key(self) -> str:
        return f"{self.spec}-{self.path}-{self.dtype}"


class ShardLocalLamb(torch.optim.Optimizer):
    """A deliberately wrong LAMB-like step for DTensor parameters: the trust ratio uses the
    norms of the rank's own shard (`to_local()`), never combined across ranks, the mistake a
    hand-written optimizer makes under FSDP2. Correct for plain tensors (single process, DDP,
    ZeRO-1, which partitions whole tensors): the harness must tell the difference."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                param, grad = _local(p), _local(p.grad)
                param_norm, grad_norm = param.norm(), grad.norm()
                trust = torch.where((param_norm > 0) & (grad_norm > 0), param_norm / grad_norm, 1.0)
                param.sub_(group["lr"] * trust * grad)


class FailsOnLastRank(torch.optim.Optimizer):
    """Raises on the last rank while the others gather their DTensor parameters, a collective
    the last rank never joins (as SETAdam's amin() of an empty shard did on main): the harness
    must report the case, not hang. Run last, so its launch's early exit costs no relaunch;
    single-process (the reference) it leaves the parameters as they are."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        if dist.is_initialized() and dist.get_rank() == dist.get_world_size() - 1:
            raise RuntimeError("deliberate failure on the last rank")
        for group in self.param_groups:
            for p in group["params"]:
                _full(p)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def cases(dtypes=("float64", "float32")) -> list[Case]:
    """Every catalog spec on every path this machine has (fused: a C++ compiler; Triton:
    the triton package), the trap per dtype, and the deliberate rank failure last."""
    import optgen
    from optgen import optimizers
    from optgen.backends.fused_matrix import is_matrix_spec
    from optgen.fused_support import fused_refusal
    from optgen.shapes import axis_constructs

    paths = [path for path in PATHS if path != "fused" or _have_compiler()]
    triton = import_triton()
    out = []
    for dtype in dtypes:
        for spec in sorted(optimizers.__all__):
            spec_obj = optgen.load(spec.lower())
            group_states = any(s.scope == "group" for s in spec_obj.state.values())
            if fused_refusal(spec_obj) or is_matrix_spec(spec_obj) or axis_constructs(spec_obj) or group_states:
                # matrix operations and axis reductions need whole tensors, and sums over all
                # parameters that read states take no DTensor yet: sharded parameters are refused
                # (tests/test_matrix.py, test_axes.py, test_scalars.py); the group-state specs
                # (Prodigy's sums, schedule-free) are not run sharded here
                continue
            extra = ["triton"] if spec in TRITON_SPECS and triton else []
            out += [Case(spec, path, dtype) for path in [*paths, *extra]]
        out.append(Case(TRAP, "loop", dtype))
    return [*out, Case(STUCK, "loop", "float64")]


# --------------------------------------------------------------------------- one run
def model(dtype: torch.dtype) -> nn.Module:
    """Matrices and vectors; with 3 ranks the (7, 5) weight splits 3/3/1 and the (2, 7) weight
    and (2,) bias leave rank 2 an empty shard."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).to(dtype)


def batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch on every rank: DDP's and FSDP2's gradient averages are then the
    single-process gradients (up to the rounding of a division by the world size)."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 5, generator=gen, dtype=dtype), torch.randn(8, 2, generator=gen, dtype=dtype)


@contextlib.contextmanager
def triton_interpreter(on: bool):
    """fused=True on CPU tensors runs the C++ kernels, or Triton's in its interpreter when
    TRITON_INTERPRET=1 (optgen.backends.cpp.runtime.select reads it at each step)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.cache
def _have_compiler() -> bool:
    from optgen.backends.cpp import compiler
    from optgen.errors import SetupError

    try:
        compiler.compiler()
    except SetupError:
        return False
    return True


def import_triton() -> bool:
    """Import Triton in interpreter mode, if installed: imported first while
    TRITON_INTERPRET=0 (a C++ case), its kernels would refuse to run in the interpreter later."""
    if importlib.util.find_spec("triton") is None:
        return False
    with triton_interpreter(True):
        importlib.import_module("triton.language")
    return True


def optimizer_class(spec: str):
    if spec in (TRAP, STUCK):
        return {TRAP: ShardLocalLamb, STUCK: FailsOnLastRank}[spec]
    from optgen import optimizers

    return getattr(optimizers, spec)


def optimizer_kwargs(case: Case) -> dict:
    if case.spec in (TRAP, STUCK):
        return {}
    return {**HYPER.get(case.spec, {}), **PATHS[case.path if case.path != "triton" else "fused"]}


def train(case: Case, module: nn.Module, make_optimizer) -> list[torch.Tensor]:
    """STEPS steps of a least-squares loss; the parameters afterwards, whole (gathered from
    DTensor shards), detached, in float64."""
    dtype = getattr(torch, case.dtype)
    with triton_interpreter(case.path == "triton"):
        opt = make_optimizer(module.parameters())
        for step in range(STEPS):
            x, y = batch(step, dtype)
            opt.zero_grad(set_to_none=True)
            ((module(x) - y) ** 2).mean().backward()
            opt.step()
    return [_full(p).detach().to(torch.float64).clone() for p in module.parameters()]


def _full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def reference(case: Case) -> list[torch.Tensor]:
    """The single-process run: same model, batches and path."""
    cls = optimizer_class(case.spec)
    kwargs = optimizer_kwargs(case)
    return train(case, model(getattr(torch, case.dtype)), lambda params: cls(params, **kwargs))


def distributed(config: Config, case: Case, group) -> list[torch.Tensor]:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    cls = optimizer_class(case.spec)
    kwargs = optimizer_kwargs(case)
    module = model(getattr(torch, case.dtype))
    if config.kind == "fsdp":
        fully_shard(module, mesh=DeviceMesh.from_group(group, "cpu"))
        return train(case, module, lambda params: cls(params, **kwargs))
    module = DistributedDataParallel(module, process_group=group)
    if config.kind == "ddp":
        return train(case, module, lambda params: cls(params, **kwargs))
    local_class = cls
    if GROUP_KEYWORD in inspect.signature(cls.__init__).parameters:
        local_class = functools.partial(cls, **{GROUP_KEYWORD: group})
    return train(
        case,
        module,
        lambda params: ZeroRedundancyOptimizer(params, optimizer_class=local_class, process_group=group, **kwargs),
    )


def max_diff(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(got, want))


# --------------------------------------------------------------------------- workers
def _worker(rank: int, config: Config, todo: list[Case], port: int, prefix: str, out: str) -> None:
    """One rank: every case of `todo` in turn, a JSON line each to `out`.rank; exits early
    (the parent relaunches from the next case) when some rank does not report a case."""
    start_rank()
    torch.set_num_threads(1)
    import_triton()
    store = dist.PrefixStore(
        prefix, dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=30))
    )
    timeout = datetime.timedelta(seconds=GLOO_TIMEOUT_S)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=config.world, timeout=timeout)
    group = dist.group.WORLD
    with open(f"{out}.{rank}", "a", encoding="utf-8") as log:
        for n, case in enumerate(todo):
            _record(log, {"case": case.key, "start": True})
            try:
                # float64 values as JSON numbers: repr round-trips them exactly
                row = {"params": [p.flatten().tolist() for p in distributed(config, case, group)]}
            except Exception as exc:  # noqa: BLE001 - any failure is the cell's result
                row = {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]}
            _record(log, {"case": case.key, "rank": rank, **row})
            store.set(f"{n}/{rank}", "error" if "error" in row else "ok")
            statuses = _agree(store, n, config.world, AGREE_S)
            if statuses is None or "abort" in statuses:
                # some rank is stuck in a collective this rank never entered: exiting closes
                # this rank's connections, which fails that collective (ProcessGroup.abort()
                # does not, on gloo); the others see "abort" and exit; the parent relaunches
                store.set(f"{n}/abort", "1")
                os._exit(3)
            if "error" in statuses:
                # the group may hold unmatched or aborted collectives: a fresh one
                group = dist.new_group(list(range(config.world)), timeout=timeout)
    dist.destroy_process_group()
    end_rank()


def _record(log, row: dict) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()


def _agree(store, n: int, world: int, wait_s: float) -> set[str] | None:
    """Every rank's status for case n (with "abort" when some rank gave up), or None when
    some rank did not report within wait_s."""
    keys = [f"{n}/{r}" for r in range(world)]
    try:
        store.wait(keys, datetime.timedelta(seconds=wait_s))
    except Exception:  # noqa: BLE001 - a timeout: some rank is stuck
        return None
    statuses = {store.get(k).decode() for k in keys}
    if store.check([f"{n}/abort"]):
        statuses.add("abort")
    return statuses


# --------------------------------------------------------------------------- the parent
def run_config(config: Config, todo: list[Case]) -> dict[str, list[dict]]:
    """Each case's rows under `config`, one per rank: {"params": the parameters after
    training, flattened} or {"error": text}; or one row {"error": text} for a case some rank
    never finished."""
    ctx = multiprocessing.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        launch = 0
        while len(results) < len(todo):
            remaining = [c for c in todo if c.key not in results]
            out = str(Path(tmp) / f"launch{launch}")
            procs = [
                ctx.Process(
                    target=_worker,
                    args=(r, config, remaining, store.port, f"{config.name}/{launch}/", out),
                    daemon=True,
                )
                for r in range(config.world)
            ]
            for p in procs:
                p.start()
            hung = _wait(procs, out)
            done = _read(out, config.world)
            progressed = False
            for case in remaining:
                rows = done.get(case.key)
                if rows is None:
                    break
                if len(rows) == config.world:
                    results[case.key] = rows
                    progressed = True
                    continue
                # started but some rank never finished it: that rank hung or died
                codes = [p.exitcode for p in procs]
                results[case.key] = [{"error": _unfinished(rows, config.world, bool(hung), codes)}]
                progressed = True
                break
            if not progressed:  # nothing started: the launch itself failed
                for case in remaining:
                    results[case.key] = [{"error": f"launch {launch} of {config.name} ran no case"}]
            launch += 1
    return results


def _wait(procs: list, out: str) -> list:
    """Wait for the workers to exit; kill them all when none of their result files has grown
    for STALL_S. The killed ones."""
    files = [Path(f"{out}.{r}") for r in range(len(procs))]
    last, sizes = time.monotonic(), None
    while any(p.is_alive() for p in procs):
        now_sizes = [f.stat().st_size if f.is_file() else 0 for f in files]
        if now_sizes != sizes:
            last, sizes = time.monotonic(), now_sizes
        elif time.monotonic() - last > STALL_S:
            break
        procs[0].join(0.2)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    return hung


def _read(out: str, world: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in range(world):
        path = Path(f"{out}.{r}")
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if not row.get("start"):
                rows.setdefault(row["case"], []).append(row)
            else:
                rows.setdefault(row["case"], [])
    return rows


def _merge(rows: list[dict], want: list[torch.Tensor]) -> dict:
    """{"diff": the largest difference from `want` any rank saw} or {"error": every rank's}."""
    errors = [f"rank {r['rank']}: {r['error']}" if "rank" in r else r["error"] for r in rows if "error" in r]
    if errors:
        return {"error": "\n".join(errors)}
    got = [[torch.tensor(p, dtype=torch.float64) for p in r["params"]] for r in rows]
    return {"diff": max(max_diff(params, [w.flatten() for w in want]) for params in got)}


def _unfinished(rows: list[dict], world: int, killed: bool, exit_codes: list) -> str:
    errors = [r["error"] for r in rows if "error" in r]
    how = (
        f"were killed, no progress for {STALL_S:.0f} s" if killed else "did not report: stuck in a collective, or died"
    )
    first = f"; first error: {errors[0]}" if errors else ""
    return f"{world - len(rows)} of {world} ranks {how} (exit codes {exit_codes}, -11: segfault){first}"


def run_matrix(configs=CONFIGS, todo: list[Case] | None = None) -> dict[tuple[str, str], dict]:
    """{(config name, case key): {"diff": ...} or {"error": ...}} for every configuration and
    case. The configurations run at once (most of a relaunch is waiting),
    and the single-process references meanwhile."""
    todo = cases() if todo is None else todo
    with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
        futures = {config.name: pool.submit(run_config, config, todo) for config in configs}
        refs = {case.key: reference(case) for case in todo}
        return {
            (name, key): _merge(rows, refs[key])
            for name, future in futures.items()
            for key, rows in future.result().items()
        }
