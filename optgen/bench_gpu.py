"""GPU benchmark of optgen's fused Triton optimizers: `python -m optgen.bench_gpu`
(`optgen bench --device cuda` hands over here).

In one run on one GPU: first the copy bandwidth (a large device-to-device copy; bytes read
plus written per second), then for Adam, AdamW, Adan, SET-Adam, Lion, LAMB, Adafactor and
Muon (its 2-D parameters only) each implementation's optimizer step on

    flat        one tensor of 1B float32 parameters
    gpt2-fp32   GPT-2 small's parameter list (124M parameters in 148 tensors), float32
    gpt2-bf16   the same in bfloat16

Implementations: optgen's fused Triton step (float32 state; with bf16 params also bf16
state), torch.optim's fused step where torch has one, the foreach step (torch.optim, or
pytorch_optimizer where torch has no such optimizer, or optgen's own foreach class for
SET-Adam, which has no public implementation), and torch.compile of that foreach step (its
compile time reported). Each step is timed by triton.testing.do_bench (median).

Bandwidth: every implementation is credited with the same minimal traffic (each parameter,
gradient and state element read once and param and state written once, in the dtypes that
implementation keeps), divided by its step time, as a fraction of the copy bandwidth: 1.0
would be a step as fast as copying that many bytes.

Uses only APIs of torch >= 2.4 and triton >= 3.0 (the GPU image has torch 2.11, triton 3.6).
`--dry-run` runs everything on CPU with tiny sizes under the Triton interpreter, timed with
a plain clock, so that this file is exercised by the tests without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

GPT2_SMALL = {"vocab": 50257, "context": 1024, "width": 768, "layers": 12}
FLAT_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class Algorithm:
    spec: str  # catalog stem
    fused: str | None  # "module:Class" with fused=True, or None
    foreach: str  # "module:Class" with foreach=True
    kwargs: dict = field(default_factory=dict)  # constructor keywords for every implementation
    # "module:Class": optgen's torch class with fused=True, which makes states FusedStep does
    # not (reduced shapes, rank rules, matrix blocks between the kernels)
    optgen_class: str | None = None
    foreach_flag: bool = True  # the reference takes foreach=True (torch.optim.Muon has none)
    matrices: bool = False  # 2-D parameters only (Muon): a workload's matrices


ALGORITHMS = {
    "Adam": Algorithm("adam", "torch.optim:Adam", "torch.optim:Adam"),
    "AdamW": Algorithm("adamw", "torch.optim:AdamW", "torch.optim:AdamW"),
    "Adan": Algorithm("adan", None, "pytorch_optimizer:Adan"),
    "SETAdam": Algorithm("setadam", None, "optgen.optimizers:SETAdam"),
    "Lion": Algorithm("lion", None, "pytorch_optimizer:Lion"),
    "Lamb": Algorithm("lamb", None, "pytorch_optimizer:Lamb"),
    "Adafactor": Algorithm("adafactor", None, "torch.optim:Adafactor", optgen_class="optgen.optimizers:Adafactor"),
    "Muon": Algorithm(
        "muon", None, "torch.optim:Muon", optgen_class="optgen.optimizers:Muon", foreach_flag=False, matrices=True
    ),
}


@dataclass
class Row:
    workload: str
    algorithm: str
    implementation: str
    ms: float
    bytes_per_step: int
    bandwidth_fraction: float
    compile_s: float | None = None
    note: str = ""


# --------------------------------------------------------------------------- workloads
def gpt2_shapes(vocab: int, context: int, width: int, layers: int) -> list[tuple[int, ...]]:
    d = width
    shapes = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def workloads(dry_run: bool) -> dict[str, tuple[list[tuple[int, ...]], torch.dtype]]:
    if dry_run:
        small = gpt2_shapes(vocab=32, context=16, width=8, layers=1)
        return {
            "flat": ([(1031,)], torch.float32),
            "gpt2-fp32": (small, torch.float32),
            "gpt2-bf16": (small, torch.bfloat16),
        }
    gpt2 = gpt2_shapes(**GPT2_SMALL)
    return {
        "flat": ([(FLAT_PARAMS,)], torch.float32),
        "gpt2-fp32": (gpt2, torch.float32),
        "gpt2-bf16": (gpt2, torch.bfloat16),
    }


def make_params(shapes, dtype, device) -> list[torch.Tensor]:
    """Parameters with gradients (N(0, 0.02) values, N(0, 1e-3) gradients), made on the device."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
        p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=gen)
        params.append(p.requires_grad_())
    return params


# --------------------------------------------------------------------------- implementations
def _class(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class FusedStep:
    """optgen's fused Triton step driven directly through the runtime (what the torch class
    calls with fused=True), with state made from the spec's `init`."""

    def __init__(self, spec_key: str, params: list[torch.Tensor], state_dtype: torch.dtype | None):
        import optgen
        from optgen.backends.triton import runtime
        from optgen.lower import lower

        self.runtime = runtime
        self.key = spec_key
        spec = optgen.load(spec_key)
        self.options = spec.default_options()
        self.hyper = {n: h.default[i] for h in spec.hyperparameters.values() for i, n in enumerate(h.names)}
        self.params = [p.detach() for p in params]
        self.grads = [p.grad for p in params]
        program = lower(spec, self.options)
        self.states = {
            s.name: [self._init(s, p, g, state_dtype) for p, g in zip(self.params, self.grads)] for s in program.states
        }
        self.global_names = [r.name for r in program.reductions("global")]
        self.steps = [0] * len(params)

    @staticmethod
    def _init(state, p, g, dtype):
        init = state.init
        if state.scope == "tensor":
            return torch.tensor(float(init), dtype=torch.float32, device=p.device)
        if init.is_Number:
            return torch.full_like(p, float(init), dtype=dtype or torch.float32)
        if str(init) in ("grad", "param"):
            return (g if str(init) == "grad" else p).to(dtype or torch.float32, copy=True)
        raise NotImplementedError(f"state init {init}")

    def step(self) -> None:
        self.steps = [s + 1 for s in self.steps]
        values = {}
        # as the torch class: the gradient norm only when clipping is on
        if self.global_names and self.hyper.get("max_grad_norm", 1.0) != 0:
            values = self.runtime.fused_global(
                self.key, params=self.params, grads=self.grads, hyper=self.hyper, options=self.options, maximize=False
            )
        self.runtime.fused_step(
            self.key,
            params=self.params,
            grads=self.grads,
            states=self.states,
            steps=self.steps,
            hyper=self.hyper,
            options=self.options,
            global_values=values,
            maximize=False,
        )

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for ts in self.states.values() for t in ts]


def implementations(name: str, algo: Algorithm, dtype: torch.dtype, compile_foreach: bool, compile_backend: str):
    """(label, factory(params) -> (step function, state tensors), compile?) for one algorithm."""

    def torch_class(path: str, **flags):
        def make(params):
            opt = _class(path)(params, **algo.kwargs, **flags)
            return opt.step, lambda: [
                t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0
            ]

        return make

    def fused(state_dtype):
        if algo.optgen_class:
            return torch_class(algo.optgen_class, fused=True, **({"state_dtype": state_dtype} if state_dtype else {}))

        def make(params):
            f = FusedStep(algo.spec, params, state_dtype)
            return f.step, f.state_tensors

        return make

    out = [("optgen fused (Triton)", fused(None), False)]
    if dtype != torch.float32:
        out.append(("optgen fused (Triton), bf16 state", fused(torch.bfloat16), False))
    if algo.fused:
        out.append((f"{algo.fused.replace(':', '.')} fused", torch_class(algo.fused, fused=True), False))
    label = algo.foreach.replace(":", ".") + (" foreach" if algo.foreach_flag else "")
    reference = torch_class(algo.foreach, **({"foreach": True} if algo.foreach_flag else {}))
    out.append((label, reference, False))
    if compile_foreach:
        out.append((f"torch.compile({label})", reference, True))
    return out


# --------------------------------------------------------------------------- timing
def compiled_step(step: Callable[[], None], backend: str) -> Callable[[], None]:
    """torch.compile of an optimizer step, as torch's docs write it: a compiled function that
    calls `step` (compiling the bound method itself would leave the step eager)."""

    @torch.compile(backend=backend, fullgraph=False)
    def run() -> None:
        step()

    return run


def timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Median ms of one call: triton.testing.do_bench on a GPU, a plain clock on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=25, rep=200, return_mode="median"))

    def clock(fn) -> float:  # a dry run checks the code, not the speed: one call
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return clock


def copy_bandwidth(device: torch.device, nbytes: int, measure) -> float:
    """Bytes per second of a device-to-device copy, counting the bytes read and written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_bytes(params: list[torch.Tensor], states: list[torch.Tensor]) -> int:
    """Minimal traffic of one step: param and grad read, param written, each state read and written."""
    p = sum(t.numel() * t.element_size() for t in params)
    s = sum(t.numel() * t.element_size() for t in states)
    return 3 * p + 2 * s


def bench_one(name, algo, workload, shapes, dtype, device, measure, copy_bw, args) -> list[Row]:
    rows = []
    for label, make, compiled in implementations(name, algo, dtype, not args.no_compile, args.compile_backend):
        params = make_params(shapes, dtype, device)
        try:
            step, states = make(params)
            compile_s = None
            if compiled:
                step = compiled_step(step, args.compile_backend)
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                compile_s = time.perf_counter() - start
            else:
                step()  # states exist after the first step
            ms = measure(step)
            nbytes = step_bytes(params, states())
            rows.append(Row(workload, name, label, ms, nbytes, nbytes / (ms * 1e-3) / copy_bw, compile_s))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:  # out of memory, unsupported dtype...
            rows.append(Row(workload, name, label, math.nan, 0, math.nan, note=f"{type(exc).__name__}: {exc}"[:200]))
        finally:
            del params
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(format_row(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------- report
def format_row(r: Row) -> str:
    compiled = f"  compile {r.compile_s:.1f} s" if r.compile_s is not None else ""
    note = f"  ({r.note})" if r.note else ""
    return f"{r.workload:10} {r.algorithm:8} {r.implementation:48} {r.ms:9.3f} ms  {r.bandwidth_fraction:6.1%} of copy{compiled}{note}"


def markdown(rows: list[Row], header: list[str]) -> str:
    lines = [
        *header,
        "",
        "| workload | algorithm | implementation | ms/step | GB/step | of copy bandwidth | compile s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        compiled = f"{r.compile_s:.1f}" if r.compile_s is not None else ""
        lines.append(
            f"| {r.workload} | {r.algorithm} | {r.implementation} | {r.ms:.3f} | {r.bytes_per_step / 1e9:.2f} | {r.bandwidth_fraction:.1%} | {compiled} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m optgen.bench_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", nargs="+", metavar="NAME", help=f"default: {' '.join(ALGORITHMS)}")
    p.add_argument("--workloads", nargs="+", choices=("flat", "gpt2-fp32", "gpt2-bf16"), help="default: all")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--copy-gib", type=float, default=4.0, help="size of the bandwidth copy (default 4 GiB)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter: checks this script runs"
    )
    args, ignored = p.parse_known_args(argv)
    return args, ignored


def main(argv: list[str] | None = None) -> int:
    args, ignored = parse(sys.argv[1:] if argv is None else argv)
    if ignored:
        print(f"bench_gpu: ignoring {' '.join(ignored)} (the CPU benchmark's options)", file=sys.stderr)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined
        args.copy_gib = 1 / 1024
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --dry-run to check the script on CPU)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    names = args.algorithms or list(ALGORITHMS)
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        print(
            f"bench_gpu: unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}",
            file=sys.stderr,
        )
        return 2
    measure = timer(device)
    copy_bw = copy_bandwidth(device, int(args.copy_gib * 2**30), measure)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    import triton

    header = [
        f"# optgen fused Triton benchmark on {gpu}",
        f"torch {torch.__version__}, triton {triton.__version__}; copy bandwidth {copy_bw / 1e9:.0f} GB/s (read + write)",
    ]
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    for workload, (shapes, dtype) in workloads(args.dry_run).items():
        if args.workloads and workload not in args.workloads:
            continue
        for name in names:
            algo = ALGORITHMS[name]
            picked = [s for s in shapes if len(s) == 2] if algo.matrices else shapes
            if picked:
                rows += bench_one(name, algo, workload, picked, dtype, device, measure, copy_bw, args)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(rows, header))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"header": header, "copy_bandwidth": copy_bw, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
