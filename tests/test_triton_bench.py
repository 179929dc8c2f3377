"""optgen.bench_gpu cannot rot: its dry run (CPU, tiny sizes, Triton interpreter) goes
through every code path a GPU run takes except the CUDA timer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_triton_harness  # noqa: F401  (sets TRITON_INTERPRET=1 without CUDA)

from optgen import bench_gpu


def test_dry_run_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    argv = ["--dry-run", "--algorithms", "Adam", "Lamb", "--workloads", "flat", "gpt2-bf16"]
    argv += ["--compile-backend", "eager", "--json", str(out), "--markdown", str(md), "--params", "12"]
    assert bench_gpu.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    by = {(r["workload"], r["algorithm"], r["implementation"]): r for r in rows}
    assert ("flat", "Adam", "optgen fused (Triton)") in by
    assert ("flat", "Adam", "torch.optim.Adam fused") in by
    assert ("gpt2-bf16", "Lamb", "optgen fused (Triton), bf16 state") in by
    assert ("gpt2-bf16", "Lamb", "torch.compile(pytorch_optimizer.Lamb foreach)") in by
    for r in rows:
        assert not r["note"], r
        assert r["ms"] > 0 and r["bytes_per_step"] > 0 and math.isfinite(r["bandwidth_fraction"])
    compiled = [r for r in rows if r["implementation"].startswith("torch.compile")]
    assert compiled and all(r["compile_s"] > 0 for r in compiled)
    assert "| flat | Adam | optgen fused (Triton) |" in md.read_text()


def test_dry_run_of_the_shaped_algorithms(tmp_path):
    """Adafactor and Muon run through optgen's class with fused=True (reduced states, rank
    rules, matrix blocks); Muon on the workload's 2-D parameters only, against torch.optim.Muon
    (no foreach flag)."""
    out = tmp_path / "bench.json"
    argv = ["--dry-run", "--algorithms", "Adafactor", "Muon", "--workloads", "flat", "gpt2-bf16", "--no-compile"]
    assert bench_gpu.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    got = {(r["workload"], r["algorithm"], r["implementation"]) for r in rows}
    assert got == {
        ("flat", "Adafactor", "optgen fused (Triton)"),
        ("flat", "Adafactor", "torch.optim.Adafactor foreach"),
        ("gpt2-bf16", "Adafactor", "optgen fused (Triton)"),
        ("gpt2-bf16", "Adafactor", "optgen fused (Triton), bf16 state"),
        ("gpt2-bf16", "Adafactor", "torch.optim.Adafactor foreach"),
        ("gpt2-bf16", "Muon", "optgen fused (Triton)"),
        ("gpt2-bf16", "Muon", "optgen fused (Triton), bf16 state"),
        ("gpt2-bf16", "Muon", "torch.optim.Muon"),
    }, got  # no flat Muon row: one 1-D tensor has no matrix
    for r in rows:
        assert not r["note"], r
        assert r["ms"] > 0 and r["bytes_per_step"] > 0


def test_gpt2_small_shapes():
    shapes = bench_gpu.gpt2_shapes(**bench_gpu.GPT2_SMALL)
    assert len(shapes) == 148
    assert abs(sum(math.prod(s) for s in shapes) - 124.44e6) < 0.01e6


def test_step_bytes_counts_each_array_once():
    import torch

    p = [torch.zeros(10, dtype=torch.bfloat16)]
    s = [torch.zeros(10), torch.zeros(10)]
    # param + grad read and param written (2 bytes each), two fp32 states read and written
    assert bench_gpu.step_bytes(p, s) == 3 * 20 + 2 * 80


def test_unknown_algorithm():
    assert bench_gpu.main(["--dry-run", "--algorithms", "Nope"]) == 2
