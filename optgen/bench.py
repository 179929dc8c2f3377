"""`optgen bench`: the generated foreach path against the optimizers people use today.

For each algorithm, optgen's class (``optgen.optimizers.<Name>``, ``foreach=True``) and its
reference (torch.optim's foreach path, or pytorch_optimizer's fastest path where torch has no
such optimizer) are built in one process on identical copies of one GPT-like parameter list
and stepped on identical gradients. After a warmup they are timed interleaved, A B B A A B ..., so that
drift in the machine's speed (other processes, frequency, memory traffic) falls on both sides
alike. Reported: the median step time of each side, the ratio of the medians, the spread of
the per-pair ratios, and each side's peak extra memory during one (untimed) step.

Any spec can be benchmarked (`optgen bench my_optimizer.yaml`): its reference is the class its
`parity:` names when that imports, else optgen's own for-loop path (the foreach path's baseline).
The default is a quick run (under a minute for the catalog); ``--thorough`` is the setting of
BENCHMARKS.md. ``--device cuda`` hands over to ``optgen.bench_gpu`` (the Triton path).
``--compile`` times torch.compile instead (compile_bench): the compile time and the compiled
step time of optgen's class and its reference, both through inductor.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import inspect
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
    matrices_only: bool = False  # the 2-D tensors of the list only (torch.optim.Muon refuses others)
    ours_foreach: bool = True  # optgen's faster path on CPU

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
    "Adafactor": Entry("torch.optim:Adafactor", {}),
    # torch.optim.Muon has no foreach path (foreach=True raises): both sides run their loops.
    # On CPU optgen's loop is its faster path too: the foreach path's stack + bmm pays for the
    # copies it makes (it is the GPU's path), see BENCHMARKS.md
    "Muon": Entry("torch.optim:Muon", {}, reference_foreach=False, matrices_only=True, ours_foreach=False),
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

    def __init__(self, cls, params, grads, kwargs: dict, foreach: bool, fused: bool = False):
        self.params = [torch.nn.Parameter(p.clone()) for p in params]
        for leaf, g in zip(self.params, grads):
            leaf.grad = g.clone()
        self.grads = grads
        if fused:  # optgen's fused C++ kernel (one call per step), which takes no foreach
            self.opt = cls(self.params, **kwargs, fused=True)
            return
        takes_foreach = "foreach" in inspect.signature(cls).parameters  # not every reference has a foreach path
        self.opt = cls(self.params, **kwargs, **({"foreach": foreach} if takes_foreach else {}))

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
        """The first two steps, under the profiler; the second one's peak (see peak_extra_bytes)."""
        self._restore_grads()
        return peak_extra_bytes(self.opt, self._restore_grads)


_MEASURED = "optgen_bench_measured_step"


def peak_extra_bytes(opt, between=lambda: None) -> int | None:
    """Peak bytes allocated during a step above what was live before it: the second of two
    steps of a new optimizer (the first creates the state).

    Read from the allocation and free events that torch's CPU allocator reports to the
    profiler (profile_memory=True), so buffers made inside C++ kernels count too. Profiling
    starts before the first step, so every block the measured step frees (a state tensor the
    step replaces, as pytorch_optimizer's Lamb does) was allocated under the profiler: else
    the allocator logs "Memory block of unknown size was allocated before the profiling
    started" to stderr. None if this torch does not expose the events.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
        between()
        with record_function(_MEASURED):
            opt.step()
    try:
        events = prof.profiler.kineto_results.events()
        mark = next(e for e in events if e.name() == _MEASURED)
        start, end = mark.start_ns(), mark.end_ns()
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except (AttributeError, StopIteration):
        return None
    live = sum(nbytes for t, nbytes in changes if t < start)
    base = peak = live
    for t, nbytes in changes:
        if start <= t <= end:
            live += nbytes
            peak = max(peak, live)
    return peak - base


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


def bench_one(target: Target, cfg, params, grads) -> Row:
    name, ours_cls, ref_cls, entry = target.name, target.ours, target.reference, target.entry
    if cfg.reference_path != "fastest":
        entry = dataclasses.replace(entry, reference_foreach=cfg.reference_path == "foreach")
    if entry.matrices_only:
        params, grads = zip(*[(p, g) for p, g in zip(params, grads) if p.ndim == 2])
    if ours_cls is None:  # --self-check: the reference, on its own path, against itself
        ours = Side(ref_cls, params, grads, entry.kwargs, entry.reference_foreach)
    else:
        ours = Side(ours_cls, params, grads, entry.kwargs, foreach=entry.ours_foreach, fused=cfg.fused)
    sides = (ours, Side(ref_cls, params, grads, entry.kwargs, entry.reference_foreach))
    peaks = [side.peak_extra_bytes() for side in sides]  # steps 1 (creating the state) and 2
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


# --------------------------------------------------------------------------- what to bench
@dataclass(frozen=True)
class Target:
    """One row: optgen's class for a spec and what it is timed against."""

    name: str
    ours: type | None  # None: --self-check (the reference against itself)
    entry: Entry
    reference: type  # the reference class (optgen's own, on its loop path, when there is none)
    note: str = ""  # why the reference is what it is, when it is not the spec's parity reference


OPTIONAL = {"pytorch_optimizer": "pytorch-optimizer", "adabound": "adabound"}  # module -> pip name


def _missing(module: str) -> str:
    name = OPTIONAL.get(module.split(".")[0], module.split(".")[0])
    return f"the reference needs {name!r}, which is not installed (pip install 'optgen[bench]')"


def _spec_target(arg: str, self_check: bool) -> Target:
    """A spec outside ALGORITHMS (a catalog name or a path): its parity reference when that
    imports, else optgen's own for-loop path."""
    from . import catalog, load
    from .workbench.factory import optimizer_class

    is_path = arg.endswith((".yaml", ".yml"))
    if not is_path and catalog.path_of(arg) is None:
        raise BenchError(
            f"unknown algorithm(s) {arg}: neither a catalog spec ({', '.join(catalog.names())}) nor a .yaml path"
        )
    spec = load(Path(arg) if is_path else arg)
    ours = optimizer_class(Path(arg) if is_path else arg)
    module, _, cls_name = spec.parity.rpartition(".")
    if module and cls_name:
        try:
            ref = getattr(importlib.import_module(module), cls_name)
            entry = Entry(f"{module}:{cls_name}", {}, reference_foreach=module.startswith("torch.optim"))
            return Target(spec.name, None if self_check else ours, entry, ref)
        except ModuleNotFoundError as exc:
            note = f"parity reference {spec.parity}: {_missing(exc.name or module)}; timed against its own loop path"
        except AttributeError:
            note = f"parity reference {spec.parity} does not exist; timed against its own loop path"
    else:
        note = f"no importable parity reference ({spec.parity!r}): timed against its own loop path"
    entry = Entry(f"optgen:{spec.name}", {}, reference_foreach=False)
    return Target(spec.name, None if self_check else ours, entry, ours, note)


def targets(requested: list[str], self_check: bool) -> tuple[list[Target], list[str]]:
    """The rows to run and the notes on what was skipped; a known algorithm whose reference
    package is missing is skipped with a note (the others still run)."""
    by_lower = {name.lower(): name for name in ALGORITHMS}
    names = [part for item in requested for part in item.split(",") if part] or list(ALGORITHMS)
    out, notes = [], []
    for arg in names:
        if arg.lower() not in by_lower:
            out.append(_spec_target(arg, self_check))
            continue
        name = by_lower[arg.lower()]
        entry = ALGORITHMS[name]
        try:
            ref = resolve(entry.reference)
        except BenchError as exc:
            notes.append(f"{name} skipped: {exc}; pip install 'optgen[bench]'")
            continue
        out.append(Target(name, None if self_check else _ours(name), entry, ref))
    return out, notes


def _ours(name: str):
    try:
        optimizers = importlib.import_module("optgen.optimizers")
        return getattr(optimizers, name)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise BenchError(f"optgen.optimizers has no {name}: run `optgen build` (or pass --self-check)") from exc


# --------------------------------------------------------------------------- command line
# quick: the default, under a minute for the catalog on a 2-core machine. thorough: the setting
# of BENCHMARKS.md's table (a GPT-2-like 12M model, 40 interleaved samples per side, one thread
# on the thread clock, which ignores time spent descheduled on a busy machine). Both run on one
# thread: on a shared machine, torch's OpenMP threads spin-waiting for each other made a run
# many times slower and its ratios noise. An explicit option wins over the preset.
PRESETS = {
    "quick": {"steps": 1, "repeats": 6, "warmup": 1, "params": 1.0, "tensors": 40, "threads": 1, "clock": "wall"},
    "thorough": {
        "steps": 1,
        "repeats": 40,
        "warmup": 3,
        "params": 12.0,
        "tensors": 150,
        "threads": 1,
        "clock": "thread",
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "specs",
        nargs="*",
        metavar="SPEC",
        help=f"catalog names or spec paths (default: {', '.join(ALGORITHMS)}); a spec is timed against the "
        "class its parity: names, or against its own for-loop path when that does not import",
    )
    p.add_argument("--algorithms", nargs="+", metavar="NAME", help="the same as SPEC...")
    p.add_argument("--thorough", action="store_true", help="the setting of BENCHMARKS.md's table (minutes)")
    q, t = PRESETS["quick"], PRESETS["thorough"]
    for name, kind, meta, text in (
        ("steps", int, None, "optimizer steps per timing sample"),
        ("repeats", int, None, "interleaved timing samples per side"),
        ("warmup", int, None, "untimed steps per side first"),
        ("params", float, "MILLIONS", "model size"),
        ("tensors", int, None, "about this many parameter tensors"),
    ):
        p.add_argument(f"--{name}", type=kind, metavar=meta, help=f"{text} (quick {q[name]:g}, thorough {t[name]:g})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the Triton path (optgen.bench_gpu)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument(
        "--reference-path",
        choices=("fastest", "foreach", "loop"),
        default="fastest",
        help="fastest (default): torch.optim's foreach, pytorch_optimizer's loop (its faster path on CPU)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--fused",
        action="store_true",
        help="time optgen's fused C++ kernel (fused=True, one call per step) instead of its foreach path",
    )
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        help="wall (quick): time.perf_counter; thread (thorough): CPU time of the calling thread, which ignores "
        "time spent descheduled on a busy machine (needs --threads 1)",
    )
    p.add_argument("--markdown", metavar="FILE", help="also write the setup and the table to FILE")
    p.add_argument("--plot", metavar="FILE.png|FILE.svg", help="also draw the ratios (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--compile",
        action="store_true",
        help="time torch.compile(opt.step) with inductor instead: compile time and compiled step time, the "
        "for-loop path of both sides, a tensor lr (default: Adam)",
    )
    p.add_argument(
        "--self-check",
        action="store_true",
        help="time each reference against itself: the ratios show this machine's noise floor",
    )


def _apply_preset(args) -> None:
    for name, value in PRESETS["thorough" if args.thorough else "quick"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _argv(args) -> list[str]:
    """The options of this run, spelled out: printed with the results, passed on to bench_gpu."""
    argv = ["--thorough"] if args.thorough else []
    argv += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    argv += ["--params", f"{args.params:g}", "--tensors", str(args.tensors), "--dtype", args.dtype]
    argv += ["--reference-path", args.reference_path] if args.reference_path != "fastest" else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--fused"] if args.fused else []
    argv += ["--clock", args.clock] if args.clock != "wall" else []
    return argv + _requested(args)


def _requested(args) -> list[str]:
    return [*(args.specs or []), *(args.algorithms or [])]


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
    argv = (["--algorithms", *_requested(args)] if _requested(args) else []) + (
        ["--markdown", args.markdown] if args.markdown else []
    )
    return gpu.main(argv)


def _check_args(args) -> None:
    if min(args.steps, args.repeats) < 1 or args.warmup < 0 or args.params <= 0 or args.tensors < 1:
        raise BenchError("--steps and --repeats must be >= 1, --warmup >= 0, --params > 0, --tensors >= 1")
    if args.clock == "thread" and args.threads != 1:
        raise BenchError("--clock thread sees only the calling thread's CPU time: add --threads 1")
    if args.plot:
        if not args.plot.endswith((".png", ".svg")):
            raise BenchError("--plot writes a .png or an .svg file")
        if importlib.util.find_spec("matplotlib") is None:
            raise BenchError("--plot needs matplotlib, which is not installed: pip install 'optgen[workbench]'")


def plot(rows: list[Row], path: Path) -> None:
    """Each algorithm's ratio (median of optgen's step times over the reference's), with the
    interquartile range of the per-pair ratios."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "optgen"
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(rows) + 1.2))
    ratios = [r.ratio for r in rows]
    lo = [r.ratio - min(r.ratio, r.ratio_iqr[0]) for r in rows]
    hi = [max(r.ratio, r.ratio_iqr[1]) - r.ratio for r in rows]
    colors = ["#2a9d8f" if x <= GOAL else "#e76f51" for x in ratios]
    ax.barh(range(len(rows)), ratios, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), [f"{r.name} vs {r.reference}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(GOAL, color="black", lw=0.8, ls="--")
    ax.set_xlabel(
        "step time, optgen / reference (lower: optgen faster)\nwhiskers: pair-ratio IQR; dashed: the 1.05 goal"
    )
    fig.tight_layout()
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fig.savefig(
        staging,
        format=path.suffix[1:],
        dpi=150,
        bbox_inches="tight",
        metadata={"Date": None} if path.suffix == ".svg" else {},
    )
    plt.close(fig)
    os.replace(staging, path)


def _bench_all(args, chosen: list[Target], notes: list[str]) -> tuple[list[Row], list[str], list[str]]:
    """The rows, the notes, and the setup lines printed above them."""
    shapes = gpt_shapes(args.params, args.tensors)
    params, grads = make_problem(shapes, DTYPES[args.dtype])
    header = setup_lines(args, shapes, _argv(args) + (["--self-check"] if args.self_check else []))
    print("\n".join(header), flush=True)
    from .workbench.progress import Progress

    progress = Progress(len(chosen), enabled=False if args.quiet else None)
    rows = []
    for target in chosen:
        rows.append(bench_one(target, args, params, grads))
        progress.advance(target.name)
        r = rows[-1]
        print(f"  {target.name:<10} ratio {r.ratio:.3f}  ({1e3 * np.median(r.ours):.2f} ms vs "
              f"{1e3 * np.median(r.theirs):.2f} ms)", flush=True)  # fmt: skip
    progress.close()
    return rows, notes + [f"{t.name}: {t.note}" for t in chosen if t.note], header


def cli(args) -> int:
    _apply_preset(args)
    if args.device == "cuda":
        return _run_gpu(args)
    try:
        _check_args(args)
        chosen, notes = targets(_requested(args) or (["Adam"] if args.compile else []), args.self_check)
        if not chosen:
            raise BenchError("nothing to run: " + "; ".join(notes))
    except BenchError as exc:
        print(f"optgen bench: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else the profiler prints two lines per memory measurement
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.compile:
            header = setup_lines(args, gpt_shapes(args.params, args.tensors), _argv(args) + ["--compile"])
            text = compile_table([compile_bench(target, args) for target in chosen])
        else:
            rows, notes, header = _bench_all(args, chosen, notes)
            text = table(rows) + "".join(f"\n\nnote: {n}" for n in notes)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own
    print(text)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(f"- {line}" for line in header) + "\n\n" + text + "\n")
    if args.plot and not args.compile:
        plot(rows, Path(args.plot))
    return 0


# --------------------------------------------------------------------------- torch.compile
@dataclass
class CompileRow:
    label: str
    compile_s: float  # the first compiled step: dynamo's capture, inductor's codegen and C++ build
    graphs: int  # dynamo's graphs over all the steps (1: no recompilation)
    compiled_ms: float  # the median compiled step
    eager_ms: float  # the median eager step, for scale


def compile_bench(target: Target, cfg) -> list[CompileRow]:
    """optgen's class and its reference, each compiled with inductor (`torch.compile(opt.step)`,
    a tensor lr, the for-loop path: what both trace), on copies of one GPT-like problem. Each
    side compiles in a fresh inductor cache, so that neither reuses the other's kernels or an
    earlier run's; then the eager and the compiled steps are timed interleaved, side by side
    (warmup, then `repeats` samples of `steps` steps each)."""
    import tempfile

    shapes = gpt_shapes(cfg.params, cfg.tensors)
    params, grads = make_problem(shapes, DTYPES[cfg.dtype])
    sides = [(f"optgen.optimizers.{target.name}", target.ours or target.reference)]
    sides.append((target.entry.reference.replace(":", "."), target.reference))
    rows, eager, compiled = [], [], []
    # inductor's one-time costs (its imports, its C++ toolchain probe) fall on neither side
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optgen-bench-inductor-")
    torch.compile(lambda x: x.mul(2).add_(1), backend="inductor")(torch.ones(3))
    for label, cls in sides:
        copies = [p.clone() for p in params]
        for p, g in zip(copies, grads):
            p.grad = g.clone()
        lr = torch.tensor(target.entry.kwargs.get("lr", 1e-3))
        opt = cls(copies, **(target.entry.kwargs | {"lr": lr, "foreach": False}))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optgen-bench-inductor-")
        step = torch.compile(opt.step, backend="inductor")
        before = _graphs()
        start = time.perf_counter()
        step()
        rows.append(CompileRow(f"{label} (loop)", time.perf_counter() - start, _graphs() - before, 0.0, 0.0))
        eager.append(opt.step)
        compiled.append(step)
    for attr, steps in (("eager_ms", eager), ("compiled_ms", compiled)):
        for row, ms, new_graphs in zip(rows, *_interleaved_ms(steps, cfg)):
            setattr(row, attr, ms)
            row.graphs += new_graphs
    return rows


def _graphs() -> int:
    import torch._dynamo

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _interleaved_ms(steps: list, cfg) -> tuple[list[float], list[int]]:
    """The median step time of each of `steps` (A B B A ...), and the graphs each compiled
    meanwhile (a recompilation)."""
    clock = CLOCKS[cfg.clock]
    samples: list[list[float]] = [[] for _ in steps]
    graphs = [0 for _ in steps]
    for step in steps:
        for _ in range(cfg.warmup):
            step()
    for r in range(cfg.repeats):
        for i in range(len(steps)) if r % 2 == 0 else reversed(range(len(steps))):
            before = _graphs()
            start = clock()
            for _ in range(cfg.steps):
                steps[i]()
            samples[i].append((clock() - start) / cfg.steps * 1e3)
            graphs[i] += _graphs() - before
    return [float(np.median(s)) for s in samples], graphs


def compile_table(groups: list[list[CompileRow]]) -> str:
    lines = [
        "| optimizer | first compiled step (s) | graphs | compiled step (ms) | eager step (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for rows in groups:
        lines += [
            f"| {r.label} | {r.compile_s:.1f} | {r.graphs} | {r.compiled_ms:.2f} | {r.eager_ms:.2f} |" for r in rows
        ]
    return "\n".join(lines)
