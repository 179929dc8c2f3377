"""`optgen bench`: the generated foreach path against the optimizers people use today.

For each algorithm, optgen's class (``optgen.optimizers.<Name>``, ``foreach=True``) and its
reference (torch.optim's foreach path, or pytorch_optimizer's fastest path where torch has no
such optimizer) are built in one process on identical copies of one GPT-like parameter list
and stepped on identical gradients. After a warmup they are timed interleaved, A B B A A B ..., so that
drift in the machine's speed (other processes, frequency, memory traffic) falls on both sides
alike. Reported: the median step time of each side, the ratio of the medians, the spread of
the per-pair ratios, and each side's peak extra memory during one (untimed) step.

``--device cuda`` hands over to ``optgen.bench_gpu`` (the Triton path).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GOAL = 1.05  # the target: optgen's step time at most this multiple of the reference's


@dataclass(frozen=True)
class Entry:
    reference: str  # "module:Class"
    kwargs: dict  # constructor keywords shared by both sides (beyond params and foreach)
    reference_foreach: bool = True  # the reference's faster path on CPU

    @property
    def label(self) -> str:
        return f"{self.reference.replace(':', '.')} ({'foreach' if self.reference_foreach else 'loop'})"


# Constructor defaults unless a default would benchmark a trivial path (SGD without momentum).
# pytorch_optimizer 4.1.0's per-tensor loop beats its foreach path on CPU (its CPU foreach ops
# are a loop of the same kernels with fewer fused ones), so it is timed on the loop: its fastest.
ALGORITHMS: dict[str, Entry] = {
    "SGD": Entry("torch.optim:SGD", {"lr": 1e-2, "momentum": 0.9}),
    "Adagrad": Entry("torch.optim:Adagrad", {}),
    "RMSprop": Entry("torch.optim:RMSprop", {}),
    "Adadelta": Entry("torch.optim:Adadelta", {}),
    "Adam": Entry("torch.optim:Adam", {}),
    "AdamW": Entry("torch.optim:AdamW", {}),
    "NAdam": Entry("torch.optim:NAdam", {}),
    "RAdam": Entry("torch.optim:RAdam", {}),
    "Adamax": Entry("torch.optim:Adamax", {}),
    "Adan": Entry("pytorch_optimizer:Adan", {}, reference_foreach=False),
    "AdaBelief": Entry("pytorch_optimizer:AdaBelief", {}, reference_foreach=False),
    "Lion": Entry("pytorch_optimizer:Lion", {}, reference_foreach=False),
    "Lamb": Entry("pytorch_optimizer:Lamb", {}, reference_foreach=False),
    "AdaBound": Entry("pytorch_optimizer:AdaBound", {}, reference_foreach=False),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class BenchError(Exception):
    """Bad input or a missing dependency: reported in one line, exit code 2."""


# --------------------------------------------------------------------------- the problem
def gpt_shapes(params_millions: float, tensors: int) -> list[tuple[str, tuple[int, ...]]]:
    """Named shapes of a GPT-2-style model with about that many parameters and tensors.

    Each block has 12 tensors (two layernorms, qkv, attention projection, two MLP matrices,
    each with a bias); around the blocks sit token and position embeddings and a final
    layernorm. The vocabulary is 32 x width and the context 2 x width, so the parameter count
    is about (12 layers + 34) width^2 and fixes the width.
    """
    layers = max(1, round((tensors - 4) / 12))
    width = max(8, 8 * round(math.sqrt(params_millions * 1e6 / (12 * layers + 34)) / 8))
    d, vocab, context = width, 32 * width, 2 * width
    shapes = [("wte", (vocab, d)), ("wpe", (context, d))]
    for i in range(layers):
        block = [
            ("ln_1.weight", (d,)), ("ln_1.bias", (d,)),
            ("attn.c_attn.weight", (3 * d, d)), ("attn.c_attn.bias", (3 * d,)),
            ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
            ("ln_2.weight", (d,)), ("ln_2.bias", (d,)),
            ("mlp.c_fc.weight", (4 * d, d)), ("mlp.c_fc.bias", (4 * d,)),
            ("mlp.c_proj.weight", (d, 4 * d)), ("mlp.c_proj.bias", (d,)),
        ]  # fmt: skip
        shapes += [(f"h.{i}.{name}", shape) for name, shape in block]
    return shapes + [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


def make_problem(shapes, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    """Initial parameters (GPT-2's init: N(0, 0.02), layernorm weights 1, biases 0) and gradients."""
    gen = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for name, shape in shapes:
        if name.endswith("bias"):
            p = torch.zeros(shape)
        elif "ln_" in name:
            p = torch.ones(shape)
        else:
            p = 0.02 * torch.randn(shape, generator=gen)
        params.append(p.to(device=device, dtype=dtype))
        grads.append((1e-3 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype))
    return params, grads


# --------------------------------------------------------------------------- one side
def resolve(path: str):
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise BenchError(f"{path} needs the package {exc.name!r}, which is not installed") from exc


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


class Side:
    """One optimizer over its own copies of the parameters, stepped on the original gradients."""

    def __init__(self, cls, params, grads, kwargs: dict, foreach: bool):
        self.params = [torch.nn.Parameter(p.clone()) for p in params]
        for leaf, g in zip(self.params, grads):
            leaf.grad = g.clone()
        self.grads = grads
        self.opt = cls(self.params, foreach=foreach, **kwargs)

    def _restore_grads(self) -> None:
        # Some references overwrite p.grad (pytorch_optimizer's Adan loop negates it in place).
        torch._foreach_copy_([p.grad for p in self.params], self.grads)

    def step(self) -> None:
        self._restore_grads()
        self.opt.step()

    def time(self, steps: int, clock) -> float:
        """Seconds per step, mean over `steps` steps; restoring the gradients is not timed."""
        total = 0.0
        for _ in range(steps):
            self._restore_grads()
            start = clock()
            self.opt.step()  # CPU kernels are synchronous: the step is done when it returns
            total += clock() - start
        return total / steps

    def peak_extra_bytes(self) -> int | None:
        self._restore_grads()
        return peak_extra_bytes(self.opt)


def peak_extra_bytes(opt) -> int | None:
    """Peak bytes allocated and still live during one step, above what was live before it.

    Read from the allocation and free events that torch's CPU allocator reports to the
    profiler (profile_memory=True), so buffers made inside C++ kernels count too. None if
    this torch does not expose the events.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    try:
        events = prof.profiler.kineto_results.events()
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except AttributeError:
        return None
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


# --------------------------------------------------------------------------- one algorithm
@dataclass
class Row:
    name: str
    reference: str
    ours: list[float]  # seconds per step, one sample per interleaved round
    theirs: list[float]
    ours_peak: int | None
    theirs_peak: int | None
    param_bytes: int
    agreement: float  # max |p_ours - p_ref| / max |p_ref - p_0| after the run

    @property
    def ratio(self) -> float:
        return float(np.median(self.ours) / np.median(self.theirs))

    @property
    def ratio_iqr(self) -> tuple[float, float]:
        pairs = np.asarray(self.ours) / np.asarray(self.theirs)
        return float(np.percentile(pairs, 25)), float(np.percentile(pairs, 75))


def bench_one(name: str, ours_cls, cfg, params, grads) -> Row:
    entry = ALGORITHMS[name]
    if cfg.reference_path != "fastest":
        entry = dataclasses.replace(entry, reference_foreach=cfg.reference_path == "foreach")
    ref_cls = resolve(entry.reference)
    if ours_cls is None:  # --self-check: the reference, on its own path, against itself
        ours = Side(ref_cls, params, grads, entry.kwargs, entry.reference_foreach)
    else:
        ours = Side(ours_cls, params, grads, entry.kwargs, foreach=True)
    sides = (ours, Side(ref_cls, params, grads, entry.kwargs, entry.reference_foreach))
    for side in sides:
        side.step()  # creates the state, so that the memory measured next is the step's own
    peaks = [side.peak_extra_bytes() for side in sides]
    for _ in range(cfg.warmup):
        for side in sides:
            side.step()
    samples: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for r in range(cfg.repeats):
            order = (0, 1) if r % 2 == 0 else (1, 0)  # A B, B A: neither side always goes first
            for i in order:
                samples[i].append(sides[i].time(cfg.steps, CLOCKS[cfg.clock]))
    finally:
        gc.enable()
    return Row(
        name=name,
        reference=("(itself) " if ours_cls is None else "") + entry.label,
        ours=samples[0],
        theirs=samples[1],
        ours_peak=peaks[0],
        theirs_peak=peaks[1],
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        agreement=_agreement(sides[0].params, sides[1].params, params),
    )


def _agreement(ours, theirs, initial) -> float:
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
        moved = max(float((b - p0).abs().max()) for b, p0 in zip(theirs, initial))
    return diff / moved if moved > 0 else (0.0 if diff == 0 else math.inf)


# --------------------------------------------------------------------------- report
def _mib(nbytes: int | None, param_bytes: int) -> str:
    if nbytes is None:
        return "n/a"
    return f"{nbytes / 2**20:.1f} ({nbytes / param_bytes:.2f} P)"


def table(rows: list[Row]) -> str:
    head = (
        "| algorithm | reference | optgen ms | reference ms | ratio | pair ratios IQR | goal <= 1.05x "
        "| optgen peak extra MiB | reference peak extra MiB | max rel diff |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lo, hi = r.ratio_iqr
        lines.append(
            f"| {r.name} | {r.reference} | {1e3 * np.median(r.ours):.2f} | {1e3 * np.median(r.theirs):.2f} "
            f"| {r.ratio:.3f} | {lo:.3f} - {hi:.3f} | {'yes' if r.ratio <= GOAL else 'NO'} "
            f"| {_mib(r.ours_peak, r.param_bytes)} | {_mib(r.theirs_peak, r.param_bytes)} | {r.agreement:.1e} |"
        )
    return "\n".join(lines)


def setup_lines(cfg, shapes, argv: list[str]) -> list[str]:
    n = sum(math.prod(s) for _, s in shapes)
    try:
        po_version = importlib.metadata.version("pytorch_optimizer")
    except importlib.metadata.PackageNotFoundError:
        po_version = "not installed"
    machine = f"{os.cpu_count()}-core {_cpu_model()}"
    largest = max(shapes, key=lambda s: math.prod(s[1]))[1]
    load = f"load average {os.getloadavg()[0]:.1f} at the start"
    timing = f"{cfg.warmup} warmup steps, then {cfg.repeats} interleaved rounds of {cfg.steps} step(s) per side"
    timing += f", {cfg.clock} clock"
    versions = f"torch {torch.__version__} ({torch.get_num_threads()} threads), pytorch_optimizer {po_version}"
    return [
        f"command: `optgen bench {' '.join(argv)}`",
        f"date: {datetime.date.today().isoformat()}",
        f"machine: {machine}, {versions}, Python {platform.python_version()}, {load}",
        f"problem: GPT-like, {n / 1e6:.2f}M {cfg.dtype} parameters in {len(shapes)} tensors (largest {largest})",
        f"timing: {timing}",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


# --------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algorithms", nargs="+", metavar="NAME", help=f"default: all of {', '.join(ALGORITHMS)}")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per timing sample (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="interleaved timing samples per side (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (default 3)")
    p.add_argument("--params", type=float, default=12.0, metavar="MILLIONS", help="model size (default 12)")
    p.add_argument("--tensors", type=int, default=150, help="about this many parameter tensors (default 150)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the Triton path (optgen.bench_gpu)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument(
        "--reference-path",
        choices=("fastest", "foreach", "loop"),
        default="fastest",
        help="fastest (default): torch.optim's foreach, pytorch_optimizer's loop (its faster path on CPU)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: time.perf_counter; thread: CPU time of the calling thread, which ignores time spent "
        "descheduled on a busy machine (needs --threads 1)",
    )
    p.add_argument("--markdown", metavar="FILE", help="also write the setup and the table to FILE")
    p.add_argument(
        "--self-check",
        action="store_true",
        help="time each reference against itself: the ratios show this machine's noise floor",
    )


def _algorithm_names(requested: list[str] | None) -> list[str]:
    if not requested:
        return list(ALGORITHMS)
    by_lower = {name.lower(): name for name in ALGORITHMS}
    names = [part for item in requested for part in item.split(",") if part]
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise BenchError(f"unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}")
    return [by_lower[n.lower()] for n in names]


def _candidates(names: list[str], self_check: bool) -> dict:
    if self_check:
        return dict.fromkeys(names)
    try:
        optimizers = importlib.import_module("optgen.optimizers")
    except ModuleNotFoundError as exc:
        raise BenchError("optgen.optimizers is missing: run `optgen build` (or pass --self-check)") from exc
    missing = [n for n in names if not hasattr(optimizers, n)]
    if missing:
        raise BenchError(f"optgen.optimizers has no {', '.join(missing)}")
    return {n: getattr(optimizers, n) for n in names}


def _argv(args) -> list[str]:
    """The options of this run, spelled out: printed with the results, passed on to bench_gpu."""
    argv = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    argv += ["--params", str(args.params), "--tensors", str(args.tensors), "--dtype", args.dtype]
    argv += ["--reference-path", args.reference_path] if args.reference_path != "fastest" else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--clock", args.clock] if args.clock != "wall" else []
    if args.algorithms:
        argv += ["--algorithms", *args.algorithms]
    return argv


def _run_gpu(args) -> int:
    try:
        gpu = importlib.import_module("optgen.bench_gpu")
    except ModuleNotFoundError as exc:
        if exc.name != "optgen.bench_gpu":
            raise
        print("optgen bench: --device cuda needs optgen.bench_gpu (the Triton benchmark), which is missing",
              file=sys.stderr)  # fmt: skip
        return 2
    # the GPU benchmark's workloads are fixed (1B flat, GPT-2 small fp32/bf16): pass on only
    # the choice of algorithms and where to write the table
    argv = (["--algorithms", *args.algorithms] if args.algorithms else []) + (
        ["--markdown", args.markdown] if args.markdown else []
    )
    return gpu.main(argv)


def cli(args) -> int:
    if args.device == "cuda":
        return _run_gpu(args)
    try:
        names = _algorithm_names(args.algorithms)
        if min(args.steps, args.repeats) < 1 or args.warmup < 0 or args.params <= 0 or args.tensors < 1:
            raise BenchError("--steps and --repeats must be >= 1, --warmup >= 0, --params > 0, --tensors >= 1")
        if args.clock == "thread" and args.threads != 1:
            raise BenchError("--clock thread sees only the calling thread's CPU time: add --threads 1")
        candidates = _candidates(names, args.self_check)
    except BenchError as exc:
        print(f"optgen bench: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else the profiler prints two lines per memory measurement
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = gpt_shapes(args.params, args.tensors)
    params, grads = make_problem(shapes, DTYPES[args.dtype])
    header = setup_lines(args, shapes, _argv(args) + (["--self-check"] if args.self_check else []))
    print("\n".join(header), flush=True)
    rows = []
    for name in names:
        try:
            rows.append(bench_one(name, candidates[name], args, params, grads))
        except BenchError as exc:
            print(f"optgen bench: {exc}", file=sys.stderr)
            return 2
        r = rows[-1]
        print(f"  {name:<10} ratio {r.ratio:.3f}  ({1e3 * np.median(r.ours):.2f} ms vs "
              f"{1e3 * np.median(r.theirs):.2f} ms)", flush=True)  # fmt: skip
    text = table(rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(f"- {line}" for line in header) + "\n\n" + text + "\n")
    return 0
