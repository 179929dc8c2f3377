"""The written side of a comparison: report.md (Markdown, pictures linked beside it) and
results.json (every number; timings under their own keys, the only part a seed leaves free)."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from .compare import Comparison
from .problems import FUNCTIONS


def _num(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "diverged"
    return f"{x:.{digits}g}"


def _grid(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{len(values)} values, {values[0]:.2g} to {values[-1]:.2g}, log-spaced"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(result: Comparison, command: str) -> str:
    s = result.settings
    labels = [c.label for c in result.contenders]
    given = [c.label for c in result.contenders if "lr" in c.hyper]
    lines = [
        f"# Optimizer comparison: {', '.join(labels)}",
        "",
        (
            f"`{command}` (seed {s.seed}; torch {torch.__version__}, {platform.machine()}, "
            f"{result.threads} thread(s); {result.seconds:.1f} s)."
        ),
        "",
        "## How the learning rates were chosen",
        "",
        (
            f"- 2-D functions: for each optimizer and function, {_grid(s.grid_2d)}; each run takes "
            f"{s.steps_2d} steps from the same start; the chosen lr has the lowest final f - f*, ties broken by the "
            "lowest mean f - f* along the path (the faster one). A run whose f becomes NaN or inf is out."
        ),
    ]
    if result.digits:
        lines.append(
            f"- digits: {_grid(s.grid_digits)}; {s.digits_search_steps} steps with seed {s.seed}; the chosen lr has "
            f"the lowest validation loss. Then {s.seeds} seed(s) x {s.digits_steps} steps at that lr."
        )
    if given:
        lines.append(f"- no search for {', '.join(given)}: the lr was given on the command line.")
    lines.append("- Other hyperparameters: the spec's defaults unless given on the command line.")
    lines += ["", "## Summary", ""]
    lines += _table(
        [
            "optimizer",
            *(f"{FUNCTIONS[f].title}: f - f*" for f in s.functions),
            *(["digits test acc."] if result.digits else []),
        ],
        [
            [
                label,
                *(_num(result.paths[f][label].final_gap) for f in s.functions),
                *([_pct(result.digits[label].final("test_acc"))] if result.digits else []),
            ]
            for label in labels
        ],
    )
    lines += ["", "## 2-D test functions", ""]
    for name in s.functions:
        fn = FUNCTIONS[name]
        ranking = result.ranking(name)
        lines += [f"### {fn.title}", "", f"![{fn.title}](fn-{name}.png)", ""]
        lines += _table(
            ["optimizer", "lr", f"f - f* after {s.steps_2d} steps", "mean f - f* along the path", "rank"],
            [
                [
                    label,
                    f"{path.lr:.2g}",
                    _num(path.final_gap),
                    _num(float(np.mean(path.gaps)) if not path.diverged else math.inf),
                    str(ranking.index(label) + 1),
                ]
                for label, path in ((label, result.paths[name][label]) for label in labels)
            ],
        )
        lines.append("")
    if result.digits:
        lines += _digits(result, labels)
    return "\n".join(lines).rstrip() + "\n"


def _pct(stat: tuple[float, float]) -> str:
    mean, std = stat
    return "diverged" if math.isnan(mean) else f"{100 * mean:.1f}% ± {100 * std:.1f}"


def _digits(result: Comparison, labels: list[str]) -> list[str]:
    s = result.settings
    lines = [
        "## Digits (scikit-learn's bundled 8x8 digits, MLP 64-64-64-10)",
        "",
        "![digits](digits.png)",
        "",
        (
            f"Mean ± standard deviation over {s.seeds} seed(s), after {s.digits_steps} steps of batch {s.batch}. "
            "Times are medians over every step of every seed, on this machine and its load at the time."
        ),
        "",
    ]
    rows = []
    for label in labels:
        res = result.digits[label]
        loss, loss_sd = res.final("train_loss")
        val, val_sd = res.final("val_loss")
        rows.append(
            [
                label,
                f"{res.lr:.2g}",
                "diverged" if math.isnan(loss) else f"{loss:.4f} ± {loss_sd:.4f}",
                "diverged" if math.isnan(val) else f"{val:.4f} ± {val_sd:.4f}",
                _pct(res.final("test_acc")),
                f"{res.microseconds():.0f}",
                f"{res.microseconds('total_seconds'):.0f}",
            ]
        )
    lines += _table(
        ["optimizer", "lr", "train loss", "validation loss", "test accuracy", "step (µs)", "full step (µs)"], rows
    )
    return lines + [""]


def results_json(result: Comparison) -> dict:
    s = result.settings
    out = {
        "seed": s.seed,
        "functions": {
            name: {
                label: {
                    "lr": path.lr,
                    "final_gap": path.final_gap,
                    "tried": path.tried,
                    "path": path.points.tolist(),
                }
                for label, path in result.paths[name].items()
            }
            for name in s.functions
        },
        "digits": {
            label: {
                "lr": res.lr,
                "tried": res.tried,
                "curves": [
                    {"steps": c.steps, "train_loss": c.train_loss, "val_loss": c.val_loss, "test_acc": c.test_acc}
                    for c in res.curves
                ],
            }
            for label, res in result.digits.items()
        },
        "timing": {
            "seconds": result.seconds,
            "digits_step_us": {label: res.microseconds() for label, res in result.digits.items()},
            "digits_full_step_us": {label: res.microseconds("total_seconds") for label, res in result.digits.items()},
        },
    }
    return out


def _finite(value):
    """JSON has no NaN or inf: a diverged number is null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_all(result: Comparison, out: Path, command: str) -> list[Path]:
    report, data = out / "report.md", out / "results.json"
    write_text(data, json.dumps(_finite(results_json(result)), indent=1, allow_nan=False) + "\n")
    write_text(report, markdown(result, command))
    return [report, data]
