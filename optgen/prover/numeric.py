"""Float64 evaluation of proof expressions on batches of points, and the sampling of points.

Numbers never prove anything here: they screen obligations before SymPy is asked, and they
find (and re-check) counterexamples. A batch holds TRIALS independent points; an element
value is an array (TRIALS, ELEMENTS) (one small parameter tensor per trial), a scalar is
(TRIALS, 1). Reductions (sum, amin, amax, global_norm) run over the elements of a trial, so
each trial is a one-tensor model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy

from ..expr import NUMEL, GlobalSum, ReduceMax, ReduceMin, ReduceSum
from ..reference import compile_expr
from ..spec import Interval

TRIALS = 64
ELEMENTS = 3
RTOL = 1e-7  # two float64 results this far apart (relative to 1 + |a| + |b|) differ

_REDUCE = {ReduceSum: np.sum, GlobalSum: np.sum, ReduceMin: np.min, ReduceMax: np.max}


@dataclass
class Compiled:
    """An expression with its reductions pulled out, innermost first, as closures."""

    reductions: list  # (placeholder name, numpy reduction, closure of its argument)
    body: object

    def __call__(self, env: dict) -> np.ndarray:
        env = dict(env)
        with np.errstate(all="ignore"):
            for name, reduce, arg in self.reductions:
                env[name] = reduce(
                    np.asarray(arg(env), dtype=np.float64) + np.zeros((1, ELEMENTS)), axis=-1, keepdims=True
                )
            return np.asarray(self.body(env), dtype=np.float64)


def compile_batch(expr: sympy.Basic) -> Compiled:
    reductions = []
    replaced = {}
    for node in sympy.postorder_traversal(expr):
        if isinstance(node, tuple(_REDUCE)) and node not in replaced:
            arg = node.args[0].xreplace(replaced)
            name = f"__reduction_{len(reductions)}"
            reductions.append((name, _REDUCE[type(node)], compile_expr(arg)))
            replaced[node] = sympy.Symbol(name, real=True)
    return Compiled(reductions, compile_expr(_replace_reductions(expr, replaced)))


def _replace_reductions(expr, replaced):
    for _ in range(len(replaced) + 1):  # nested reductions: replace inside-out until stable
        new = expr.xreplace(replaced)
        if new == expr:
            return new
        expr = new
    return expr


def evaluate(expr: sympy.Basic, env: dict) -> np.ndarray:
    """`expr` on a batch, broadcast to (TRIALS, ELEMENTS)."""
    value = compile_batch(expr)(env)
    return np.broadcast_to(value, _shape(env)).astype(np.float64)


def _shape(env: dict) -> tuple[int, int]:
    trials = max((np.shape(v)[0] for v in env.values() if np.ndim(v) == 2), default=1)
    return trials, ELEMENTS


def differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where two float64 results disagree beyond round-off (non-finite values never count)."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(a) & np.isfinite(b)
        return finite & (np.abs(a - b) > RTOL * (1 + np.abs(a) + np.abs(b)))


# --------------------------------------------------------------------------- sampling
class Sampler:
    """Random points: hyperparameters from their ranges, tensors from a normal law."""

    def __init__(self, seed: int = 0, trials: int = TRIALS):
        self.rng = np.random.default_rng(seed)
        self.trials = trials

    def scalar(self, iv: Interval) -> np.ndarray:
        """Values inside `iv`, a few of them on a closed endpoint (momentum = 0 is a case)."""
        n = self.trials
        lo, hi = iv.lo, iv.hi
        if math.isfinite(lo) and math.isfinite(hi):
            pad = 0.02 * (hi - lo)
            values = self.rng.uniform(lo + pad, hi - pad, n)
        elif math.isfinite(lo):
            values = lo + np.exp(self.rng.uniform(math.log(0.05), math.log(5.0), n))
        elif math.isfinite(hi):
            values = hi - np.exp(self.rng.uniform(math.log(0.05), math.log(5.0), n))
        else:
            values = 2.0 * self.rng.standard_normal(n)
        for end, is_open in ((lo, iv.lo_open), (hi, iv.hi_open)):
            if math.isfinite(end) and not is_open:
                values = np.where(self.rng.random(n) < 0.1, end, values)
        return values.reshape(n, 1)

    def tensor(self, iv: Interval | None = None) -> np.ndarray:
        """Per-element values; confined to `iv` when it is one-sided (v >= 0)."""
        shape = (self.trials, ELEMENTS)
        x = self.rng.standard_normal(shape)
        if iv is None or (iv.lo == -math.inf and iv.hi == math.inf):
            return x
        if math.isfinite(iv.lo) and math.isfinite(iv.hi):
            return self.rng.uniform(iv.lo, iv.hi, shape)
        if math.isfinite(iv.lo):
            return iv.lo + np.abs(x) + (1e-3 if iv.lo_open else 0.0)
        return iv.hi - np.abs(x) - (1e-3 if iv.hi_open else 0.0)

    def scalar_state(self, iv: Interval | None = None) -> np.ndarray:
        return self.tensor(iv)[:, :1]


def base_env() -> dict:
    return {NUMEL: np.float64(ELEMENTS)}


def random_env(exprs, table: dict[str, Interval], scopes: dict[str, str], sampler: Sampler) -> dict:
    """A batch of random values for every free symbol of `exprs`: hyperparameters (names in
    `table` that are not inputs) from their ranges, the step count from 1 to 6, inputs as
    tensors (per-tensor scalars for `tensor` scope) inside their known intervals."""
    env = base_env()
    steps = sampler.rng.integers(1, 7, (sampler.trials, 1)).astype(np.float64)
    for sym in set().union(*(e.free_symbols for e in exprs)):
        name = sym.name
        if name == NUMEL:
            continue
        if name in table and name not in scopes:
            env[name] = sampler.scalar(table[name])
        elif sym.is_integer:
            env[name] = steps
        elif scopes.get(name) == "tensor":
            env[name] = sampler.scalar_state(table.get(name))
        else:
            env[name] = sampler.tensor(table.get(name))
    return env


def first_divergence(mask: np.ndarray) -> int | None:
    """The first trial with any diverging element, or None."""
    rows = np.flatnonzero(np.asarray(mask).reshape(mask.shape[0], -1).any(axis=1))
    return int(rows[0]) if rows.size else None


def pick(env: dict, trial: int) -> dict:
    """One trial of a batch environment, as plain floats and lists (for reports)."""
    out = {}
    for name, value in env.items():
        arr = np.asarray(value)
        if arr.ndim == 2:
            row = arr[trial]
            out[name] = float(row[0]) if row.size == 1 else [float(x) for x in row]
        else:
            out[name] = float(arr)
    return out
