"""The fused C++ (CPU) kernels, side by side in one process:

1. Adam, AdamW, SGD (momentum) and Adagrad: optgen fused=True against torch.optim's fused CPU
   kernels (fused=True), on a GPT-2-small-like list, one flat 50M tensor and 2000 small
   tensors; 1 thread on the thread clock, then 2 threads on the wall clock.
2. Every catalog spec: optgen fused=True against its own foreach path on the GPT-2-small
   list (1 thread, thread clock), and the bandwidth the fused step achieves against this
   machine's copy bandwidth (a large tensor copy_), counting the bytes the algorithm must
   read and write (param, grad and element states read once; param and states written once).
3. Compile time per spec: cold (an empty cache) and from the cache (a fresh process).

Sides are timed interleaved (A B B A ...) after a warmup, so that drift in the machine's speed
falls on both alike; medians are reported.

    python -m optgen.bench_cpu                 # everything (about 10 minutes on 2 cores)
    python -m optgen.bench_cpu --quick         # small sizes, a sanity check
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import optgen

from . import catalog, optimizers
from .bench import gpt_shapes, make_problem

PAIRS = {  # optgen class -> torch.optim class, shared keywords
    "Adam": ("Adam", {}),
    "AdamW": ("AdamW", {}),
    "SGD": ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    "Adagrad": ("Adagrad", {}),
}


def workloads(quick: bool) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    scale = 0.1 if quick else 1.0
    small = [(f"t{i}", (64 * (1 + i % 64),)) for i in range(2000)]  # 64..4096 elements, 4.2M in all
    return {
        "GPT-2 small (124M, 148 tensors)": gpt_shapes(124 * scale, 148),
        "flat 50M": [("flat", (int(50_000_000 * scale),))],
        "2000 small tensors": small,
    }


def _clock(threads: int):
    return time.thread_time if threads == 1 else time.perf_counter


def timed(opts: dict, rounds: int, threads: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each optimizer, interleaved."""
    clock = _clock(threads)
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    times: dict[str, list[float]] = {k: [] for k in opts}
    names = list(opts)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = clock()
            opts[name].step()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _make(cls, params, grads, **kwargs):
    ps = [p.clone() for p in params]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return cls(ps, **kwargs)


def copy_bandwidth(threads: int) -> float:
    """GB/s of `dst.copy_(src)` on 256 MiB float32 tensors (read + write bytes)."""
    torch.set_num_threads(threads)
    src = torch.randn(64 * 2**20)
    dst = torch.empty_like(src)
    clock = _clock(threads)
    samples = []
    for _ in range(7):
        start = clock()
        dst.copy_(src)
        samples.append(clock() - start)
    return 2 * src.numel() * 4 / statistics.median(samples[2:]) / 1e9


def vs_torch(quick: bool, rounds: int) -> list[str]:
    lines = [
        "| workload | threads | algorithm | optgen fused ms | torch fused ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for label, shapes in workloads(quick).items():
        params, grads = make_problem(shapes, torch.float32)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, (ref, kwargs) in PAIRS.items():
                opts = {
                    "optgen": _make(getattr(optimizers, name), params, grads, fused=True, **kwargs),
                    "torch": _make(getattr(torch.optim, ref), params, grads, fused=True, **kwargs),
                }
                t = timed(opts, rounds, threads)
                lines.append(
                    f"| {label} | {threads} | {name} | {t['optgen'] * 1e3:.2f} | {t['torch'] * 1e3:.2f} | "
                    f"{t['optgen'] / t['torch']:.2f} |"
                )
                print(lines[-1], flush=True)
                del opts
    return lines


def _min_bytes(spec, numel: int, elsize: int) -> int:
    from .backends.cpp.kernels import build

    kernel = build(spec, spec.default_options())
    reads = len(kernel.arrays)
    writes = sum(1 for s in kernel.program.outputs if s not in kernel.tensor_states)
    return numel * elsize * (reads + writes)


def vs_foreach(quick: bool, rounds: int, bandwidth: float) -> list[str]:
    torch.set_num_threads(1)
    shapes = gpt_shapes(124 * (0.1 if quick else 1.0), 148)
    params, grads = make_problem(shapes, torch.float32)
    numel = sum(p.numel() for p in params)
    lines = [
        f"| spec | fused ms | foreach ms | speed-up | fused GB/s | of copy ({bandwidth:.1f} GB/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in optimizers.__all__:
        cls = getattr(optimizers, name)
        spec = optgen.load(cls.__module__.rsplit(".", 1)[-1])
        opts = {
            "fused": _make(cls, params, grads, fused=True),
            "foreach": _make(cls, params, grads, foreach=True),
        }
        t = timed(opts, rounds, 1, warmup=1)
        gbs = _min_bytes(spec, numel, 4) / t["fused"] / 1e9
        lines.append(
            f"| {name} | {t['fused'] * 1e3:.1f} | {t['foreach'] * 1e3:.1f} | {t['foreach'] / t['fused']:.2f}x | "
            f"{gbs:.1f} | {100 * gbs / bandwidth:.0f}% |"
        )
        print(lines[-1], flush=True)
        del opts
    return lines


_COMPILE = """
import sys, time
from optgen.backends.cpp import compiler, runtime
start = time.perf_counter()
runtime._kernel(sys.argv[1], {}, {"param": "torch.float32"})
print(time.perf_counter() - start, sum(compiler.COMPILE_SECONDS.values()))
"""


def compile_times() -> list[str]:
    """Per spec (default options, float32): seconds to get a loaded kernel in a fresh
    process (after imports) with an empty cache (parsing, lowering, rendering, compiling),
    and again in another fresh process from the cache (its index: no lowering)."""
    lines = ["| spec | cold s (of which the compiler) | cached ms |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "XDG_CACHE_HOME": folder}
        for name in catalog.names():
            runs = []
            for _ in range(2):
                out = subprocess.run(
                    [sys.executable, "-c", _COMPILE, name], env=env, capture_output=True, text=True, check=True
                )
                runs.append([float(x) for x in out.stdout.split()])
            (cold, compiler_s), (cached, _) = runs
            lines.append(f"| {name} | {cold:.2f} ({compiler_s:.2f}) | {cached * 1e3:.0f} |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optgen.bench_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    parser.add_argument("--only", choices=["torch", "foreach", "compile"], help="one section")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 10)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    out = []
    bw1, bw2 = copy_bandwidth(1), copy_bandwidth(2)
    out.append(f"copy bandwidth: {bw1:.1f} GB/s (1 thread, thread clock), {bw2:.1f} GB/s (2 threads, wall clock)")
    print(out[-1], flush=True)
    if args.only in (None, "torch"):
        out += ["", *vs_torch(args.quick, rounds)]
    if args.only in (None, "foreach"):
        out += ["", *vs_foreach(args.quick, max(3, rounds // 2), bw1)]
    if args.only in (None, "compile"):
        out += ["", *compile_times()]
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
