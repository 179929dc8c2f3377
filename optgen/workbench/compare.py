"""Running optimizers side by side: `optgen compare SPEC...`.

Two parts, both deterministic for a seed:
- 2-D test functions: each optimizer starts from the function's start point; its learning rate
  is the best of a log-spaced grid (lowest final f - f*, ties broken by the lowest mean
  f - f* along the path, i.e. the faster one), unless the lr was given on the command line.
- digits: a small MLP on scikit-learn's digits, minibatches of 64. The lr is the best of a
  grid by validation loss after a short run with the first seed; then each seed trains from
  its own initialisation and batch order, and the curves are averaged over seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .problems import FUNCTIONS, Digits, Function2D, load_digits, mlp
from .progress import Progress


@dataclass(frozen=True)
class Contender:
    label: str  # "adam", "adam(lr=0.001)", or the spec's name for a path
    cls: type
    hyper: dict[str, Any]  # constructor keywords from the command line (lr among them: no search)


@dataclass(frozen=True)
class Settings:
    functions: tuple[str, ...] = tuple(FUNCTIONS)
    steps_2d: int = 200
    grid_2d: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-4.0, 0.75, 0.5))  # 1e-4 .. 3.2
    digits: bool = True
    digits_steps: int = 300
    digits_search_steps: int = 150
    grid_digits: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    seeds: int = 3
    batch: int = 64
    eval_every: int = 15
    seed: int = 0

    def grid(self, contender: Contender, grid: tuple[float, ...]) -> tuple[float, ...]:
        return (float(contender.hyper["lr"]),) if "lr" in contender.hyper else grid

    def search_grid(self, contender: Contender) -> tuple[float, ...]:
        """The digits task's lr grid: empty when the lr was given."""
        return () if "lr" in contender.hyper else self.grid_digits

    def units(self, contenders: list[Contender]) -> int:
        """Runs in all, for the progress bar."""
        total = 0
        for c in contenders:
            total += len(self.functions) * len(self.grid(c, self.grid_2d))
            if self.digits:
                total += len(self.search_grid(c)) + self.seeds
        return total


# --------------------------------------------------------------------------- 2-D functions
@dataclass
class Path2D:
    lr: float
    points: np.ndarray  # [steps + 1, 2], stops early where f became non-finite
    gaps: np.ndarray  # f - f* at each point
    tried: list[tuple[float, float]] = field(default_factory=list)  # (lr, final gap) of the search

    @property
    def final_gap(self) -> float:
        return float(self.gaps[-1]) if np.isfinite(self.gaps[-1]) else math.inf

    @property
    def diverged(self) -> bool:
        return not np.isfinite(self.gaps).all()

    def score(self, steps: int) -> tuple[float, float]:
        if self.diverged or len(self.gaps) < steps + 1:
            return (math.inf, math.inf)
        return (float(self.gaps[-1]), float(self.gaps.mean()))


def run_2d(contender: Contender, fn: Function2D, lrs: tuple[float, ...], steps: int) -> list[Path2D]:
    """One path per learning rate. Each lr has its own point and its own optimizer (so no
    global reduction, e.g. LAMB's gradient clipping, couples two runs); f is evaluated on all
    points at once, which keeps the autograd overhead of one run, not of len(lrs)."""
    points = [torch.tensor(fn.start, dtype=torch.float64, requires_grad=True) for _ in lrs]
    opts = [contender.cls([xy], **{**contender.hyper, "lr": lr}) for xy, lr in zip(points, lrs)]
    tracks = [[xy.detach().numpy().copy()] for xy in points]
    gaps: list[list[float]] = [[] for _ in lrs]
    alive = list(range(len(lrs)))
    for step in range(steps + 1):
        values = fn.f(torch.stack([points[i][0] for i in alive]), torch.stack([points[i][1] for i in alive]))
        for i, value in zip(alive, values.tolist()):
            gaps[i].append(value - fn.minimum)
        alive = [i for i in alive if math.isfinite(gaps[i][-1])]  # a diverged run stops here
        if step == steps or not alive:
            break
        for opt in opts:
            opt.zero_grad()
        fn.f(torch.stack([points[i][0] for i in alive]), torch.stack([points[i][1] for i in alive])).sum().backward()
        for i in alive:
            opts[i].step()
            tracks[i].append(points[i].detach().numpy().copy())
    return [Path2D(lr, np.array(track), np.array(gap)) for lr, track, gap in zip(lrs, tracks, gaps)]


def search_2d(contender: Contender, fn: Function2D, settings: Settings, progress: Progress) -> Path2D:
    grid = settings.grid(contender, settings.grid_2d)
    paths = run_2d(contender, fn, grid, settings.steps_2d)
    best = min(paths, key=lambda path: path.score(settings.steps_2d))
    best.tried = [(path.lr, path.final_gap) for path in paths]
    progress.advance(f"{contender.label} {fn.name}", len(grid))
    return best


# --------------------------------------------------------------------------- digits
@dataclass
class Curve:
    """One training run: evaluations every `eval_every` steps (and at the end)."""

    lr: float
    steps: list[int]
    train_loss: list[float]
    val_loss: list[float]
    test_acc: list[float]
    step_seconds: list[float]  # optimizer.step() alone, each step
    total_seconds: list[float]  # zero_grad + forward + backward + step


def train_digits(contender: Contender, data: Digits, lr: float, seed: int, steps: int, settings: Settings) -> Curve:
    model = mlp(seed)
    opt = contender.cls(model.parameters(), **{**contender.hyper, "lr": lr})
    # a spec with `modes:` (schedule-free) trains at one sequence and is evaluated at another
    modes = callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))
    batches = torch.Generator().manual_seed(seed)
    curve = Curve(lr, [], [], [], [], [], [])
    loss_fn = torch.nn.functional.cross_entropy
    for step in range(steps + 1):
        if step % settings.eval_every == 0 or step == steps:
            if modes:
                opt.eval()
            _evaluate(model, data, step, curve)
            if not math.isfinite(curve.train_loss[-1]) or step == steps:
                break
        if modes:
            opt.train()
        idx = torch.randint(len(data.x_train), (settings.batch,), generator=batches)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        curve.step_seconds.append(t2 - t1)
        curve.total_seconds.append(t2 - t0)
    return curve


def _evaluate(model, data: Digits, step: int, curve: Curve) -> None:
    loss_fn = torch.nn.functional.cross_entropy
    with torch.no_grad():
        curve.steps.append(step)
        curve.train_loss.append(loss_fn(model(data.x_train), data.y_train).item())
        curve.val_loss.append(loss_fn(model(data.x_val), data.y_val).item())
        curve.test_acc.append((model(data.x_test).argmax(1) == data.y_test).float().mean().item())


@dataclass
class DigitsResult:
    lr: float
    tried: list[tuple[float, float]]  # (lr, validation loss after the search run)
    curves: list[Curve]  # one per seed

    @property
    def diverged(self) -> bool:
        return any(len(c.steps) < len(self.curves[0].steps) or not np.isfinite(c.train_loss).all() for c in self.curves)

    def stat(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """steps, mean and standard deviation over seeds (NaN-padded where a run stopped)."""
        steps = max((c.steps for c in self.curves), key=len)
        rows = np.full((len(self.curves), len(steps)), np.nan)
        for i, c in enumerate(self.curves):
            rows[i, : len(c.steps)] = getattr(c, key)
        return np.array(steps), rows.mean(0), rows.std(0)

    def final(self, key: str) -> tuple[float, float]:
        values = np.array([getattr(c, key)[-1] if not self.diverged else np.nan for c in self.curves])
        return float(values.mean()), float(values.std())

    def microseconds(self, key: str = "step_seconds") -> float:
        """The median over every timed step of every seed, in microseconds."""
        times = [t for c in self.curves for t in getattr(c, key)]
        return 1e6 * float(np.median(times)) if times else math.nan


def search_digits(contender: Contender, data: Digits, settings: Settings, progress: Progress) -> DigitsResult:
    tried = []
    for lr in settings.search_grid(contender):
        curve = train_digits(contender, data, lr, settings.seed, settings.digits_search_steps, settings)
        finished = curve.steps[-1] == settings.digits_search_steps and math.isfinite(curve.val_loss[-1])
        tried.append((lr, curve.val_loss[-1] if finished else math.inf))
        progress.advance(f"{contender.label} digits lr={lr:.2g}")
    lr = float(contender.hyper["lr"]) if "lr" in contender.hyper else min(tried, key=lambda t: t[1])[0]
    curves = []
    for i in range(settings.seeds):
        curves.append(train_digits(contender, data, lr, settings.seed + i, settings.digits_steps, settings))
        progress.advance(f"{contender.label} digits seed {settings.seed + i}")
    return DigitsResult(lr, tried, curves)


# --------------------------------------------------------------------------- everything
@dataclass
class Comparison:
    contenders: list[Contender]
    settings: Settings
    paths: dict[str, dict[str, Path2D]]  # function -> label -> best path
    digits: dict[str, DigitsResult]  # label -> result (empty without the digits task)
    seconds: float = 0.0
    threads: int = 1  # torch's intra-op threads during the runs

    def ranking(self, fn: str) -> list[str]:
        """Labels, best first, by the search's score."""
        paths = self.paths[fn]
        return sorted(paths, key=lambda label: paths[label].score(self.settings.steps_2d))


def compare(contenders: list[Contender], settings: Settings, progress: Progress | None = None) -> Comparison:
    progress = progress or Progress(settings.units(contenders), enabled=False)
    start = time.perf_counter()
    paths: dict[str, dict[str, Path2D]] = {}
    for name in settings.functions:
        fn = FUNCTIONS[name]
        paths[name] = {c.label: search_2d(c, fn, settings, progress) for c in contenders}
    digits = {}
    if settings.digits:
        data = load_digits()
        digits = {c.label: search_digits(c, data, settings, progress) for c in contenders}
    progress.close()
    return Comparison(contenders, settings, paths, digits, time.perf_counter() - start, torch.get_num_threads())
