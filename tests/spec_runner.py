"""Run one spec on every path a user can take (torch for-loop, foreach, fused Triton) and
against the float64 Reference interpreter: the test side of "check ok => compiles on every
path and computes the right numbers" (tests/test_frontdoor.py, tests/test_fuzz_specs.py).

The fused path runs in Triton's interpreter on CPU when there is no GPU (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import numpy as np
import torch

import optgen
from optgen.fused_support import fused_refusal
from optgen.lower import resolve_options
from optgen.matrix import BFloat16, matrix_location
from optgen.reference import Reference
from optgen.spec import If, holds

PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# float64 in, float64 arithmetic (for-loop, foreach); the fused kernels compute in float32
RTOL = {"forloop": 1e-9, "foreach": 1e-9, "fused": 2e-4}
# a spec that rounds to bfloat16 (Muon's Newton-Schulz): the torch paths then compute in
# bfloat16, the Reference rounds only at bfloat16() (docs/spec-language.md)
BF16_RTOL = 5e-2
SHAPES = [(3, 2), (5,), (1,)]
MATRIX_SHAPES = [(3, 2), (2, 5), (1, 1)]  # matrix operations need 2-D parameters


class _Recording(Reference):
    """The Reference, noting whether a host value (hyperparameters and step only) was ever
    NaN or infinite: the generated code computes those in Python floats, as torch.optim
    does, where a domain error raises (ZeroDivisionError, OverflowError, a math domain
    error) or goes complex instead of giving NaN."""

    host_nonfinite = False

    def _store(self, i, env, program):
        for v in program.values:
            if v.scope == "host" and not np.all(np.isfinite(np.asarray(env[v.name], dtype=np.float64))):
                self.host_nonfinite = True
        super()._store(i, env, program)


HOST_ERRORS = (ArithmeticError, ValueError, TypeError, RuntimeError)


def _problem(steps: int, seed: int, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    return init, grads


def _rounds_to_bfloat16(spec, options: dict) -> bool:
    """Whether the update, under these options, calls bfloat16()."""
    active = resolve_options(spec, {k: v for k, v in options.items() if k in spec.options})

    def walk(block) -> bool:
        for stmt in block:
            if isinstance(stmt, If):
                if walk(stmt.body if holds(stmt.cond, active) else stmt.orelse):
                    return True
            elif (
                hasattr(stmt, "expr")
                and stmt.expr.has(BFloat16)
                or walk(getattr(stmt, "body", []))
                or walk(getattr(stmt, "orelse", []))
            ):
                return True
        return False

    return walk(spec.update)


def compare(
    path: str, got: np.ndarray, want: np.ndarray, poisoned: bool = False, rtol: float | None = None
) -> str | None:
    """Why `got` is not `want` (None when it is): equal NaN and infinity positions, and the
    finite entries within RTOL of the tensor's magnitude.

    poisoned: a parameter was already NaN/inf before the last step. Then a state may be NaN
    in the Reference only, through 0 * NaN: the generated code skips a term scaled by a
    zero hyperparameter (`weight_decay * param` at weight_decay=0), as torch.optim does."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if poisoned:
        got = np.where(np.isfinite(want), got, want)
    finite = np.isfinite(want)
    if path == "fused" and not np.all(np.abs(want[finite]) < 1e30):
        return None  # float32 arithmetic: values beyond its range may overflow where float64 does not
    # float32 may reach NaN by another way (inf - inf where float64 stays finite): the
    # fused path must agree on whether a NaN appears, not on every position
    fused_agrees = path == "fused" and np.isnan(got).any() == np.isnan(want).any()
    if not np.array_equal(got[~finite], want[~finite], equal_nan=True) and not fused_agrees:
        return f"non-finite entries differ: {got.ravel()[:6]} vs {want.ravel()[:6]}"
    scale = max(np.abs(want[finite]).max(initial=0.0), 1e-30)
    diff = np.abs(got[finite] - want[finite]).max(initial=0.0)
    if not diff <= (rtol or RTOL[path]) * scale:
        return f"max diff {diff:.3g} (scale {scale:.3g})"
    return None


def _refused_at_construction(cls, params, options, refusal: str) -> str | None:
    """The fused path refuses what its kernels do not run (optgen/fused_support.py): a
    ValueError with that message when the optimizer is made. None when it does so."""
    try:
        cls(params, **PATHS["fused"], **options)
    except ValueError as exc:
        return None if str(exc) == refusal else f"fused refused with another message: {exc}"
    return "fused=True was accepted, though the fused kernels do not run this spec"


def run_paths(spec, steps: int = 3, seed: int = 0, paths=tuple(PATHS), options=None) -> dict[str, str | None]:
    """path -> None when it matches the Reference after `steps` steps in float64 (params and
    every state), else what differs. An exception on a path propagates: a crash after a
    clean check is a bug. `options`: constructor keywords for the spec's options."""
    options = dict(options or {})
    cls = optgen.compile(spec)
    init, grads = _problem(steps, seed, MATRIX_SHAPES if matrix_location(spec) is not None else SHAPES)
    ref = _Recording(spec, [{"params": [p.copy() for p in init], **options}])
    poisoned = False
    with np.errstate(all="ignore"):
        for g in grads:
            poisoned = poisoned or not all(np.isfinite(p).all() for p in ref.params)
            ref.step(g)
    out = {}
    refusal = fused_refusal(spec)
    rtol = BF16_RTOL if _rounds_to_bfloat16(spec, options) else None
    for path in paths:
        params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in init]
        if path == "fused" and refusal:
            out[path] = _refused_at_construction(cls, params, options, refusal)
            continue
        opt = cls(params, **PATHS[path], **options)
        try:
            for g in grads:
                for p, gg in zip(params, g):
                    p.grad = torch.tensor(gg)
                opt.step()
        except HOST_ERRORS:
            if not ref.host_nonfinite:
                raise
        if ref.host_nonfinite:  # Python float semantics on the host (see _Recording)
            out[path] = None
            continue
        problems = []
        for i, (p, want) in enumerate(zip(params, ref.params)):
            why = compare(path, p.detach().numpy(), want, rtol=rtol)
            if why:
                problems.append(f"param {i}: {why}")
            for key, value in ref.state[i].items():
                if key == "step" or key not in opt.state[p]:
                    continue
                mine = opt.state[p][key]
                mine = mine.detach().cpu().double().numpy() if torch.is_tensor(mine) else mine
                why = compare(path, mine, value, poisoned, rtol)
                if why:
                    problems.append(f"state {key!r} of param {i}: {why}")
        out[path] = "; ".join(problems) or None
    return out
