"""Smoke tests of `optgen bench` on tiny problems: the table's shape and the harness's
bookkeeping (identical inputs on both sides, memory, options). Timings are never asserted."""

from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

from optgen import bench, cli

TINY = ["--params", "0.05", "--tensors", "16", "--steps", "3", "--repeats", "2", "--warmup", "1"]
COLUMNS = ["algorithm", "reference", "optgen ms", "reference ms", "ratio", "pair ratios IQR",
           "optgen peak extra MiB", "reference peak extra MiB", "max rel diff"]  # fmt: skip


def _rows(text: str) -> dict[str, dict[str, str]]:
    """The markdown table in `text`, as {algorithm: {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].strip("|").split("|")) == {"---"}
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["algorithm"]: row for row in rows}


def _mib(cell: str) -> float:
    match = re.fullmatch(r"(\d+\.\d) \((\d+\.\d\d) P\)", cell)
    assert match, f"memory cell {cell!r}"
    return float(match.group(1))


def _run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(["bench", *argv])
    return code, capsys.readouterr().out


def test_optgen_against_references(capsys, tmp_path):
    out_file = tmp_path / "table.md"
    code, out = _run(capsys, *TINY, "--algorithms", "adam,lion", "--markdown", str(out_file))
    assert code == 0
    rows = _rows(out)
    assert set(rows) == {"Adam", "Lion"}
    for row in rows.values():
        assert set(COLUMNS) <= set(row)
        assert float(row["ratio"]) > 0
        lo, hi = map(float, row["pair ratios IQR"].split(" - "))
        assert 0 < lo <= hi
        # Same start, same gradients, same number of steps: both sides must agree (float32).
        assert float(row["max rel diff"]) < 1e-4
    assert "torch.optim.Adam (foreach)" in rows["Adam"]["reference"]
    assert "pytorch_optimizer.Lion (loop)" in rows["Lion"]["reference"]
    # torch's foreach Adam keeps one temporary the size of the parameters (its denominator).
    assert _mib(rows["Adam"]["reference peak extra MiB"]) > 0
    assert _rows(out_file.read_text()) == rows


def test_self_check_sides_are_identical(capsys):
    code, out = _run(capsys, *TINY, "--algorithms", "sgd", "AdaBelief", "--self-check", "--reference-path", "foreach")
    assert code == 0
    rows = _rows(out)
    assert list(rows) == ["SGD", "AdaBelief"]
    for row in rows.values():
        assert row["reference"].startswith("(itself)") and row["reference"].endswith("(foreach)")
        assert float(row["max rel diff"]) == 0.0
        assert row["optgen peak extra MiB"] == row["reference peak extra MiB"]


def test_gpt_shapes_hit_the_requested_size():
    shapes = bench.gpt_shapes(12, 150)
    count = sum(math.prod(shape) for _, shape in shapes)
    assert 140 <= len(shapes) <= 160
    assert 10e6 <= count <= 14e6
    assert len({name for name, _ in shapes}) == len(shapes)


def test_bad_input_exits_2(capsys):
    assert cli.main(["bench", *TINY, "--algorithms", "adamm", "--self-check"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    # quick runs on one thread, where the thread clock is right; with more threads it is refused
    assert cli.main(["bench", *TINY, "--clock", "thread", "--threads", "2", "--self-check"]) == 2
    assert "--threads 1" in capsys.readouterr().err


def test_cuda_without_bench_gpu(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optgen.bench_gpu", None)  # import raises ModuleNotFoundError
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "optgen.bench_gpu" in capsys.readouterr().err


def test_cuda_hands_algorithms_and_table_to_bench_gpu(monkeypatch, tmp_path):
    seen = []
    fake = types.ModuleType("optgen.bench_gpu")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "optgen.bench_gpu", fake)
    table = str(tmp_path / "gpu.md")
    assert cli.main(["bench", "--device", "cuda", "--algorithms", "adan", "--repeats", "7", "--markdown", table]) == 0
    (argv,) = seen
    assert argv == ["--algorithms", "adan", "--markdown", table]  # the GPU workloads are fixed


YOGI = str(Path(__file__).resolve().parent.parent / "docs" / "examples" / "yogi.yaml")


def test_user_spec_picks_its_parity_reference(capsys, tmp_path):
    """A spec outside the table (`unknown algorithm(s) Yogi` before): its parity: names
    pytorch_optimizer.Yogi, which imports, so it is the reference; the float32 results agree."""
    plot = tmp_path / "ratios.svg"
    code, out = _run(capsys, *TINY, YOGI, "--plot", str(plot))
    assert code == 0
    row = _rows(out)["Yogi"]
    assert row["reference"] == "pytorch_optimizer.Yogi (loop)"
    assert float(row["max rel diff"]) < 1e-4
    assert plot.read_text().startswith("<?xml") and "Yogi" in plot.read_text()
    assert "note:" not in out


def test_spec_without_importable_reference_is_timed_against_its_loop(capsys, tmp_path):
    text = Path(YOGI).read_text().replace("parity: pytorch_optimizer.Yogi", "parity: independent")
    spec = tmp_path / "yogi_independent.yaml"
    spec.write_text(text)
    code, out = _run(capsys, *TINY, str(spec), "setadam")
    assert code == 0
    rows = _rows(out)
    assert rows["Yogi"]["reference"] == "optgen.Yogi (loop)"
    assert rows["SETAdam"]["reference"] == "optgen.SETAdam (loop)"
    assert float(rows["Yogi"]["max rel diff"]) < 1e-4  # foreach and loop paths agree
    assert "note: Yogi: no importable parity reference ('independent')" in out


def test_missing_reference_package_is_reported_and_skipped(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # as if not installed
    code, out = _run(capsys, *TINY, "adam", "lion", YOGI)
    assert code == 0
    rows = _rows(out)
    assert list(rows) == ["Adam", "Yogi"]
    assert "Lion skipped" in out and "pip install 'optgen[bench]'" in out
    assert rows["Yogi"]["reference"] == "optgen.Yogi (loop)"
    assert "parity reference pytorch_optimizer.Yogi" in out


def test_quick_default_and_thorough_presets():
    args = cli.parser("bench").parse_args(["bench"])
    bench._apply_preset(args)
    assert (args.params, args.repeats) == (bench.PRESETS["quick"]["params"], bench.PRESETS["quick"]["repeats"])
    args = cli.parser("bench").parse_args(["bench", "--thorough", "--repeats", "5"])
    bench._apply_preset(args)
    assert (args.params, args.tensors, args.repeats) == (12.0, 150, 5)  # an explicit option wins
    assert (args.threads, args.clock) == (1, "thread")  # BENCHMARKS.md's table


def test_no_allocator_warning_on_stderr(capfd):
    """pytorch_optimizer's Lamb frees a state tensor each step: profiling from after the
    first step made torch's CPU allocator log a warning to the process's stderr."""
    assert cli.main(["bench", *TINY, "--algorithms", "lamb"]) == 0
    err = capfd.readouterr().err
    assert "CPUAllocator" not in err and "unknown size" not in err
    assert err == ""


def test_fused_times_the_fused_kernel(capsys):
    """--fused: optgen's side is the fused C++ kernel (no torch temporaries: nothing allocated
    during a step), the foreach path otherwise; both agree with torch.optim.Adafactor."""
    code, out = _run(capsys, *TINY, "--fused", "adafactor")
    assert code == 0 and "--fused" in out
    fused = _rows(out)["Adafactor"]
    code, out = _run(capsys, *TINY, "adafactor")
    assert code == 0 and "--fused" not in out
    foreach = _rows(out)["Adafactor"]
    assert _mib(fused["optgen peak extra MiB"]) == 0.0 < _mib(foreach["optgen peak extra MiB"])
    for row in (fused, foreach):
        assert row["reference"] == "torch.optim.Adafactor (foreach)"
        assert float(row["max rel diff"]) < 1e-4
