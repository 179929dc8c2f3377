"""What the fused kernels cost to compile: hyperparameters are runtime arguments (an lr
schedule never recompiles), options are compile-time, and every kernel compiles for a real
GPU with vector loads.

Without a GPU nothing is compiled at launch (the interpreter runs the Python function), so
"how many compilations" is measured the way Triton decides it: each launch's arguments go
through Triton's own launch-time specialisation for an sm_90 target (dtypes, pointer
alignment, ints equal to 1, constexpr values), and two launches compile twice exactly when
their keys differ. The same recorded launches are then compiled ahead of time to PTX with
Triton's CUDA backend (no driver needed), so the kernels are checked by the real compiler,
not only by the lenient interpreter. With CUDA, the compiled-kernel caches are counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_triton_harness import DEVICE, Harness, run

from optgen.backends.triton import runtime

triton = pytest.importorskip("triton")


class Recorder:
    """Stands in for a kernel in its generated module; keeps each launch's arguments."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, dict(kwargs)))
            return self.kernel[grid](*args, **kwargs)

        return launch


def record(monkeypatch, key: str) -> dict[str, Recorder]:
    module = runtime.load(key)
    recorders = {}
    for name in dir(module):
        obj = getattr(module, name)
        if name.startswith(f"{key}_") and hasattr(obj, "fn"):
            recorders[name] = Recorder(obj)
            monkeypatch.setattr(module, name, recorders[name])
    return recorders


class Sm90:
    """Triton's launch-time specialisation and ahead-of-time compilation for an H100,
    without one. Uses Triton internals (3.9); skips where they moved."""

    def __init__(self):
        try:
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource, make_backend
            from triton.runtime.jit import JITFunction, create_function_from_signature
        except ImportError as exc:  # pragma: no cover - another Triton
            pytest.skip(f"Triton internals moved: {exc}")
        try:
            self.target = GPUTarget("cuda", 90, 32)
            self.backend = make_backend(self.target)
        except (KeyError, RuntimeError) as exc:  # pragma: no cover - no CUDA backend in this Triton build
            pytest.skip(f"no CUDA backend: {exc}")
        self.ASTSource, self.JITFunction, self.bind = ASTSource, JITFunction, create_function_from_signature
        self._jit: dict = {}

    def jit(self, kernel):
        fn = kernel.fn
        if fn not in self._jit:
            self._jit[fn] = self.JITFunction(fn)
        return self._jit[fn]

    def key(self, kernel, args, kwargs) -> str:
        """What Triton's kernel cache is keyed by for this launch."""
        jf = self.jit(kernel)
        _, specialization, options = self.bind(jf.signature, jf.params, self.backend)(*args, **kwargs)
        return str(specialization) + str(options)

    def job(self, module_path: str, kernel, args, kwargs) -> dict:
        """What compiling this launch takes, as plain data: the specialised signature,
        constexprs and attributes (by argument name) and the launch options."""
        jf = self.jit(kernel)
        bound, specialization, options = self.bind(jf.signature, jf.params, self.backend)(*args, **kwargs)
        _, signature, constexprs, attrs = jf._pack_args(self.backend, options, bound, specialization, options)
        names = jf.arg_names
        return {
            "path": module_path,
            "kernel": kernel.fn.__name__,
            "signature": signature,
            "constexprs": {names[k[0]]: v for k, v in constexprs.items()},
            "attrs": {names[k[0]]: v for k, v in attrs.items()},
            "options": options,
        }


# Compiles in a fresh interpreter: under TRITON_INTERPRET=1 Triton's own library kernels
# (tl.sum's combine function, ...) were created for the interpreter, not the compiler.
_COMPILE = """
import importlib.util, json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
out = []
for job in json.load(sys.stdin):
    spec = importlib.util.spec_from_file_location("m", job["path"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, job["kernel"])
    index = {name: i for i, name in enumerate(fn.arg_names)}
    attrs = {(index[k],): v for k, v in job["attrs"].items()}
    src = ASTSource(fn, job["signature"], job["constexprs"], attrs)
    try:
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=job["options"]).asm["ptx"]
        out.append({"kernel": job["kernel"], "ok": True,
                    "vector_loads": bool(re.search(r"ld\\.global(\\.\\w+)*\\.v4\\.b32", ptx)),
                    "vector_stores": bool(re.search(r"st\\.global(\\.\\w+)*\\.v4\\.b32", ptx))})
    except Exception as exc:
        out.append({"kernel": job["kernel"], "ok": False, "error": str(exc)[-2000:]})
json.dump(out, sys.stdout)
"""


def compile_for_sm90(jobs: list[dict]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE],
        check=False,
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def sm90():
    return Sm90()


def _lr_schedule_run(name: str, options=None, steps: int = 8) -> Harness:
    """Steps with lr changing every step and betas changed half-way, as a scheduler would."""
    h = Harness(name, [{"shapes": [(16, 4), (32,)]}], options=options)
    for t in range(1, steps + 1):
        if t == steps // 2 and "betas" in h.spec.hyperparameters:
            group = h.ref.param_groups[0]
            group["betas"] = tuple(b * 0.99 for b in group["betas"])
        h.step(t)
    return h


@pytest.mark.parametrize("name", ["adam", "setadam", "lamb", "nadam", "adan"])
def test_lr_schedule_compiles_each_kernel_once(name, monkeypatch, sm90):
    recorders = record(monkeypatch, name)
    options = {"pre_norm": True} if name == "lamb" else None
    _lr_schedule_run(name, options).assert_close()
    for kernel_name, rec in recorders.items():
        if not rec.launches:
            continue
        keys = {sm90.key(rec.kernel, args, kwargs) for args, kwargs in rec.launches}
        assert len(rec.launches) >= 4
        assert len(keys) == 1, f"{kernel_name}: {len(keys)} specialisations over an lr schedule"


def test_group_size_does_not_recompile(monkeypatch, sm90):
    """Groups of 1, 2 and 3 tensors (sizes multiples of 16) share one compiled kernel."""
    recorders = record(monkeypatch, "adam")
    for count in (1, 2, 3):
        run("adam", [(16 * (i + 1),) for i in range(count)], steps=1)
    rec = recorders["adam_update"]
    assert len({sm90.key(rec.kernel, args, kwargs) for args, kwargs in rec.launches}) == 1


def test_options_are_compile_time(monkeypatch, sm90):
    """The counter is not blind: amsgrad and maximize are constexpr, so each setting is its
    own compiled kernel."""
    recorders = record(monkeypatch, "adam")
    run("adam", [(8,)], steps=1)
    run("adam", [(8,)], steps=1, options={"amsgrad": True})
    run("adam", [(8,)], steps=1, maximize=True)
    rec = recorders["adam_update"]
    keys = {sm90.key(rec.kernel, args, kwargs) for args, kwargs in rec.launches}
    assert len(keys) == 3


def test_hyperparameters_are_float_arguments(monkeypatch):
    """No hyperparameter reaches a kernel as an int (Triton specialises ints equal to 1) or as
    a constexpr; the launcher's constexprs are options and layout only."""
    recorders = record(monkeypatch, "sgd")
    h = Harness("sgd", [{"shapes": [(8,)], "lr": 1, "momentum": 1, "weight_decay": 0}])
    h.step(1)
    (args, kwargs), *_ = recorders["sgd_update"].launches
    scalars = [a for a in args if not isinstance(a, torch.Tensor) and a is not None]
    assert scalars and all(type(a) is float for a in scalars)
    assert set(kwargs) <= {"MAXIMIZE", "NESTEROV", "ALIGN", "BLOCK_SIZE", "num_warps"}


@pytest.mark.skipif(DEVICE.type != "cuda", reason="counts real compilations on a GPU")
def test_lr_schedule_compiles_once_on_gpu():  # pragma: no cover - needs CUDA
    module = runtime.load("adam")
    h = _lr_schedule_run("adam", steps=2)
    caches = sum(len(c[0]) for c in module.adam_update.device_caches.values())
    for t in range(3, 12):
        h.step(t)
    assert sum(len(c[0]) for c in module.adam_update.device_caches.values()) == caches


# Kernels that together use every construct the emitter prints: atomics (sum, min), per-tensor
# state, ndim, sign, a non-integer power, where, global sums, every option of LAMB.
AOT_CASES = [
    ("adam", {"amsgrad": True}, False),
    ("setadam", None, False),
    ("nadam", None, True),
    ("lars", None, False),
    ("lion", None, False),
    ("padam", None, False),
    ("radam", None, False),
    ("lamb", {"pre_norm": True, "weight_decouple": False, "grad_averaging": False}, False),
    ("adan", None, False),
]


def test_kernels_compile_for_sm90_with_vector_loads(monkeypatch, sm90):
    """Every recorded launch of AOT_CASES compiles to PTX, with 16-byte loads (and stores, in
    the update kernels): the sizes and offsets of these tensors are multiples of ALIGN = 16."""
    jobs = []
    for name, options, bf16 in AOT_CASES:
        recorders = record(monkeypatch, name)
        h = Harness(
            name, [{"shapes": [(16, 4), (32,)]}], options=options, dtype=torch.bfloat16 if bf16 else torch.float32
        )
        h.step(1)
        path = runtime.load(name).__file__
        for rec in recorders.values():
            if rec.launches:
                args, kwargs = rec.launches[0]
                assert kwargs["ALIGN"] == 16
                jobs.append(sm90.job(path, rec.kernel, args, kwargs))
        monkeypatch.undo()
    results = compile_for_sm90(jobs)
    assert len(results) == len(jobs) >= len(AOT_CASES)
    for r in results:
        assert r["ok"], f"{r['kernel']}: {r.get('error')}"
        assert r["vector_loads"], f"{r['kernel']}: no 16-byte loads"
        if r["kernel"].endswith("_update"):
            assert r["vector_stores"], f"{r['kernel']}: no 16-byte stores"
