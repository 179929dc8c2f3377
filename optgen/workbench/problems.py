"""The problems `optgen compare` runs optimizers on: 2-D test functions (drawn as contours)
and a small classification task on scikit-learn's bundled digits (no download)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Function2D:
    """f(x, y) on a box, a start point and the global minimum (value and one minimiser)."""

    name: str
    title: str
    f: Callable[[Tensor, Tensor], Tensor]  # elementwise, so the contour grid and a point share it
    start: tuple[float, float]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1
    minimum: float
    argmin: tuple[float, float]
    log_levels: bool  # contours on a log scale (valleys many decades deep)

    def __call__(self, xy: Tensor) -> Tensor:
        return self.f(xy[0], xy[1])


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rastrigin(x, y):
    return 20 + x**2 - 10 * torch.cos(2 * math.pi * x) + y**2 - 10 * torch.cos(2 * math.pi * y)


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _saddle(x, y):
    # a saddle at the origin between two minima at (0, +-1): the start lies almost on the
    # saddle's stable direction, so the question is how fast an optimizer leaves it
    return 0.5 * x**2 + 0.25 * y**4 - 0.5 * y**2


_C, _S = math.cos(math.pi / 6), math.sin(math.pi / 6)


def _quadratic(x, y):
    # condition number 50, axes rotated by 30 degrees: a diagonal preconditioner cannot undo it
    u, v = _C * x + _S * y, -_S * x + _C * y
    return 0.5 * (u**2 + 50 * v**2)


FUNCTIONS: dict[str, Function2D] = {
    f.name: f
    for f in (
        Function2D("rosenbrock", "Rosenbrock", _rosenbrock, (-1.5, 2.0), (-2.0, 2.0, -1.0, 3.0), 0.0, (1.0, 1.0), True),
        Function2D("rastrigin", "Rastrigin", _rastrigin, (2.3, -1.7), (-3.0, 3.0, -3.0, 3.0), 0.0, (0.0, 0.0), False),
        Function2D("beale", "Beale", _beale, (-1.0, 1.5), (-4.5, 4.5, -4.5, 4.5), 0.0, (3.0, 0.5), True),
        Function2D("saddle", "Saddle", _saddle, (2.0, 1e-3), (-2.5, 2.5, -2.0, 2.0), -0.25, (0.0, 1.0), False),
        Function2D(
            "quadratic",
            "Ill-conditioned quadratic",
            _quadratic,
            (-4.0, 3.0),
            (-5.0, 5.0, -5.0, 5.0),
            0.0,
            (0.0, 0.0),
            True,
        ),
    )
}


# --------------------------------------------------------------------------- digits
@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 digits (1797 images, bundled with the package), split once with a
    fixed seed into train (60%), validation (20%, for the learning-rate search) and test."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[order], y[order]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return Digits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def mlp(seed: int) -> torch.nn.Module:
    """64 -> 64 -> 64 -> 10, GELU: small enough to train in a second, deep enough to be nonconvex."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 10),
    )
