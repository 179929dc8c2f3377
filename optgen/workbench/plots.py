"""The pictures of a comparison (matplotlib, Agg backend: no display needed), each written as
PNG and SVG. SVGs carry no date and a fixed id salt, so the same run gives the same files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .compare import Comparison
from .problems import FUNCTIONS, Function2D

COLUMNS = 4  # panels per row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "optgen", "font.size": 9, "axes.titlesize": 9})
    return plt


def save(fig, out: Path, stem: str) -> list[Path]:
    """PNG and SVG, each written beside its final name and moved there (never half-written)."""
    written = []
    for ext, extra in (("png", {"dpi": 150, "metadata": {"Software": None}}), ("svg", {"metadata": {"Date": None}})):
        path = out / f"{stem}.{ext}"
        staging = out / f".{stem}.{os.getpid()}.{ext}"
        fig.savefig(staging, format=ext, bbox_inches="tight", **extra)
        os.replace(staging, path)
        written.append(path)
    return written


def _surface(fn: Function2D, n: int = 120):
    x0, x1, y0, y1 = fn.box
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    gx, gy = np.meshgrid(xs, ys)
    with torch.no_grad():
        z = fn.f(torch.from_numpy(gx), torch.from_numpy(gy)).numpy() - fn.minimum
    return gx, gy, (np.log10(z + 1e-3) if fn.log_levels else z)


def function_figure(result: Comparison, name: str, out: Path) -> list[Path]:
    """One panel per optimizer (its path over the contours of f), and a last panel with
    f - f* along each path."""
    plt = _pyplot()
    fn = FUNCTIONS[name]
    labels = [c.label for c in result.contenders]
    panels = len(labels) + 1
    cols = min(panels, COLUMNS)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False)
    gx, gy, z = _surface(fn)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        ax = axes.flat[i]
        path = result.paths[name][label]
        # the contours as pixels in the SVG too (as vectors they are megabytes); the paths stay vectors
        ax.contourf(gx, gy, z, levels=24, cmap="viridis", alpha=0.85).set_rasterized(True)
        ax.contour(gx, gy, z, levels=12, colors="white", linewidths=0.3, alpha=0.5).set_rasterized(True)
        pts = path.points
        ax.plot(pts[:, 0], pts[:, 1], "-", color="#ff5a36", lw=1.2)
        ax.plot(pts[:, 0], pts[:, 1], ".", color="#ff5a36", ms=2)
        ax.plot(*fn.start, "o", color="white", mec="black", ms=5)
        ax.plot(*fn.argmin, "*", color="gold", mec="black", ms=9)
        ax.set_xlim(fn.box[0], fn.box[1])
        ax.set_ylim(fn.box[2], fn.box[3])
        gap = "diverged" if path.diverged else f"f-f*={path.final_gap:.2g}"
        ax.set_title(f"{label}\nlr={path.lr:.2g}, {gap}")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes.flat[len(labels)]
    for i, label in enumerate(labels):
        gaps = np.maximum(result.paths[name][label].gaps, 1e-16)
        ax.semilogy(gaps, color=colors[i % len(colors)], label=label, lw=1.2)
    ax.set_xlabel("step")
    ax.set_title("f - f* (best lr each)")
    ax.legend(fontsize=7)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle(f"{fn.title}: {result.settings.steps_2d} steps from {fn.start}", fontsize=10)
    fig.tight_layout()
    try:
        return save(fig, out, f"fn-{name}")
    finally:
        plt.close(fig)


def digits_figure(result: Comparison, out: Path) -> list[Path]:
    """Training loss and test accuracy (mean over seeds, +- one standard deviation shaded),
    and the median time of one optimizer step."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax, time_ax) = plt.subplots(1, 3, figsize=(12, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(result.digits)
    for i, label in enumerate(labels):
        res, color = result.digits[label], colors[i % len(colors)]
        for ax, key in ((loss_ax, "train_loss"), (acc_ax, "test_acc")):
            steps, mean, std = res.stat(key)
            ax.plot(steps, mean, color=color, label=f"{label} (lr={res.lr:.2g})", lw=1.3)
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    loss_ax.set_yscale("log")
    loss_ax.set_title("training loss (full train set)")
    acc_ax.set_title("test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("step")
    loss_ax.legend(fontsize=7)
    micro = [result.digits[label].microseconds() for label in labels]
    time_ax.barh(range(len(labels)), micro, color=[colors[i % len(colors)] for i in range(len(labels))])
    time_ax.set_yticks(range(len(labels)), labels)
    time_ax.invert_yaxis()
    time_ax.set_xlabel("microseconds (median)")
    time_ax.set_title("optimizer.step() time")
    seeds = result.settings.seeds
    fig.suptitle(f"digits, MLP 64-64-64-10, batch {result.settings.batch}, {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    try:
        return save(fig, out, "digits")
    finally:
        plt.close(fig)
