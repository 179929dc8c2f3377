"""Harness for the fused Triton kernels: runs optgen.backends.triton.runtime side by side with
the float64 Reference interpreter (tests/test_triton_*.py import it), and checks that the
harness itself notices a wrong update.

Without CUDA the kernels run under the Triton interpreter on CPU tensors: TRITON_INTERPRET=1
is set here, if absent, before any generated module is imported (Triton reads it when a
kernel is decorated). With CUDA (and no interpreter) they run compiled on the GPU.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

import optgen
from optgen.backends.triton import runtime
from optgen.lower import lower
from optgen.reference import Reference, compile_expr

DEVICE = torch.device("cpu" if runtime.interpreting() or not torch.cuda.is_available() else "cuda")
RTOL = 1e-5

# Non-default hyperparameters, so that every term of an update is exercised.
OVERRIDES = {
    "weight_decay": 0.05,
    "momentum": 0.9,
    "dampening": 0.1,
    "max_grad_norm": 0.5,
    "lr_decay": 0.01,
    "initial_accumulator_value": 0.1,
}


def option_settings(spec) -> list[dict[str, bool]]:
    """Every combination for up to 3 options; else the default, each option flipped alone,
    all off and all on."""
    names = list(spec.options)
    if len(names) <= 3:
        return spec.option_combinations()
    default = spec.default_options()
    settings = [default] + [{**default, n: not default[n]} for n in names]
    settings += [{n: False for n in names}, {n: True for n in names}]
    unique = {tuple(s.items()): s for s in settings}
    return list(unique.values())


def lr_at(base: float, step: int) -> float:
    """A learning rate that changes every step (a scheduler)."""
    return base * (1.0 + 0.3 * math.sin(step))


def max_rel(actual: torch.Tensor, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: the error relative to the tensor's scale (elementwise relative
    error is meaningless where a state crosses zero)."""
    a = actual.detach().double().cpu().numpy()
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    diff = float(np.max(np.abs(a - expected))) if np.size(expected) else 0.0
    return diff / scale if scale > 0 else diff


class Side:
    """One param group run by the fused kernels, mirrored by a Reference group."""

    def __init__(self, spec, program, params: list[torch.Tensor], state_dtype):
        self.spec = spec
        self.program = program
        self.params = params
        self.state_dtype = state_dtype
        self.states: dict[str, list] | None = None
        self.steps = [0] * len(params)

    def init_states(self, hyper: dict[str, float], grads: list[torch.Tensor | None], maximize: bool) -> None:
        """States as the spec's `init` gives them at each tensor's first step."""
        if self.states is None:
            self.states = {s.name: [None] * len(self.params) for s in self.program.states}
        for s in self.program.states:
            init = compile_expr(s.init)
            for i, (p, g) in enumerate(zip(self.params, grads)):
                if g is None or self.states[s.name][i] is not None:
                    continue
                env = {k: np.float64(v) for k, v in hyper.items()}
                grad = g.double().cpu().numpy() * (-1.0 if maximize else 1.0)
                env.update(
                    param=p.double().cpu().numpy(), grad=grad, numel=np.float64(p.numel()), ndim=np.float64(p.dim())
                )
                value = init(env)
                dtype = self.state_dtype or torch.float32
                if s.scope == "element":
                    data = np.broadcast_to(value, p.shape).copy()
                    self.states[s.name][i] = torch.tensor(data, dtype=dtype, device=p.device)
                else:
                    self.states[s.name][i] = torch.tensor(float(value), dtype=torch.float32, device=p.device)


class Harness:
    """The fused runtime and the Reference, stepped with the same gradients.

    groups: list of dicts {"shapes": [...], plus constructor keywords}; options and maximize
    apply to every group."""

    def __init__(
        self, name: str, groups: list[dict], options=None, maximize=False, dtype=torch.float32, state_dtype=None, seed=0
    ):
        self.spec = optgen.load(name)
        self.key = self.spec.module_name
        self.options = {**self.spec.default_options(), **(options or {})}
        self.maximize = maximize
        self.rng = np.random.default_rng(seed)
        self.program = lower(self.spec, self.options)
        ref_groups, self.sides = [], []
        for g in groups:
            shapes = g["shapes"]
            values = [self.rng.standard_normal(s) for s in shapes]
            params = [torch.tensor(v, dtype=dtype, device=DEVICE) for v in values]
            keywords = {k: v for k, v in self._overrides().items()}
            keywords.update({k: v for k, v in g.items() if k != "shapes"})
            # the reference starts from the (rounded) fused params, so only the update differs
            ref_groups.append(
                {"params": [p.double().cpu().numpy() for p in params], **keywords, **self.options, "maximize": maximize}
            )
            self.sides.append(Side(self.spec, self.program, params, state_dtype))
        self.ref = Reference(self.spec, ref_groups)
        self.base_lr = [grp["lr"] for grp in self.ref.param_groups]
        self.initial = [p.copy() for p in self.ref.params]
        self.steps_run = 0

    def _overrides(self) -> dict:
        return {k: v for k, v in OVERRIDES.items() if k in self.spec.hyperparameters}

    def hyper(self, gi: int) -> dict[str, float]:
        """The group's hyperparameters and its group states as the step starts (the kernels
        take group states as host scalars; the torch module computes their new values)."""
        group = self.ref.param_groups[gi]
        out = {}
        for key, h in self.spec.hyperparameters.items():
            value = group[key]
            out.update(zip(h.names, value) if h.is_tuple else [(h.names[0], value)])
        return {**out, **self.group_states[gi]}

    def _snapshot_group_states(self) -> None:
        self.group_states = [
            {s.name: float(group[s.key]) for s in self.program.group_states} for group in self.ref.param_groups
        ]

    def step(self, t: int, present=None) -> None:
        """One step with fresh gradients; `present(gi, i)` False leaves a parameter out."""
        all_grads, per_group = [], []
        for gi, side in enumerate(self.sides):
            self.ref.param_groups[gi]["lr"] = lr_at(self.base_lr[gi], t)
            grads = []
            for i, p in enumerate(side.params):
                g = torch.tensor(self.rng.standard_normal(tuple(p.shape)), dtype=p.dtype, device=DEVICE)
                grads.append(g if present is None or present(gi, i) else None)
            per_group.append(grads)
            all_grads += [None if g is None else g.double().cpu().numpy() for g in grads]
        self._snapshot_group_states()
        self.ref.step(all_grads)
        self.fused_step(per_group)
        self.steps_run += 1

    def fused_step(self, per_group) -> None:
        totals: dict[str, torch.Tensor] = {}
        live = []
        for gi, (side, grads) in enumerate(zip(self.sides, per_group)):
            hyper = self.hyper(gi)
            side.init_states(hyper, grads, self.maximize)
            idx = [i for i, g in enumerate(grads) if g is not None]
            for i in idx:
                side.steps[i] += 1
            live.append((side, hyper, idx, grads))
            # the states as they are before the step: a sum may read them (Prodigy's)
            sums = runtime.fused_global(
                self.key,
                params=[side.params[i] for i in idx],
                grads=[grads[i] for i in idx],
                hyper=hyper,
                options=self.options,
                maximize=self.maximize,
                states={name: [ts[i] for i in idx] for name, ts in side.states.items()},
                steps=[side.steps[i] for i in idx],
            )
            for name, value in sums.items():
                totals[name] = totals[name] + value if name in totals else value
        for side, hyper, idx, grads in live:
            runtime.fused_step(
                self.key,
                params=[side.params[i] for i in idx],
                grads=[grads[i] for i in idx],
                states={name: [ts[i] for i in idx] for name, ts in side.states.items()},
                steps=[side.steps[i] for i in idx],
                hyper=hyper,
                options=self.options,
                global_values=totals,
                maximize=self.maximize,
            )

    def errors(self) -> dict[str, float]:
        """Largest relative error of each param and state, over all tensors."""
        out: dict[str, float] = {}
        flat = [(side, i) for side in self.sides for i in range(len(side.params))]
        for k, (side, i) in enumerate(flat):
            out["param"] = max(out.get("param", 0.0), max_rel(side.params[i], self.ref.params[k]))
            for s in self.program.states:
                if side.states is None or side.states[s.name][i] is None:
                    continue
                expected = np.asarray(self.ref.state[k][s.key], dtype=np.float64)
                out[s.name] = max(out.get(s.name, 0.0), max_rel(side.states[s.name][i], expected))
        return out

    def update_error(self) -> tuple[float, float]:
        """(error of the total update p_t - p_0 relative to its scale, what float32 rounding of
        p alone can explain: half an ulp of max |p| per step). The param check alone would
        miss an update off by 0.1%: the update is much smaller than p."""
        diff = scale = bound = 0.0
        flat = [(side, i) for side in self.sides for i in range(len(side.params))]
        for k, (side, i) in enumerate(flat):
            if side.params[i].numel() == 0:
                continue
            moved = self.ref.params[k] - self.initial[k]
            fused = side.params[i].detach().double().cpu().numpy() - self.initial[k]
            diff = max(diff, float(np.max(np.abs(fused - moved))))
            scale = max(scale, float(np.max(np.abs(moved))))
            eps = torch.finfo(side.params[i].dtype).eps
            bound = max(bound, 0.5 * eps * float(np.max(np.abs(self.ref.params[k]))) * max(1, self.steps_run))
        return (diff / scale if scale else diff), (bound / scale if scale else bound)

    def assert_close(self, rtol: float = RTOL) -> None:
        errors = self.errors()
        bad = {k: v for k, v in errors.items() if not v <= rtol}
        assert not bad, f"{self.spec.name} {self.options}: relative errors above {rtol}: {bad}"
        error, rounding = self.update_error()
        assert error <= rtol + rounding, (
            f"{self.spec.name} {self.options}: update off by {error:.3g} (rounding explains {rounding:.3g})"
        )


def run(name: str, shapes, steps: int = 3, **kwargs) -> Harness:
    h = Harness(name, [{"shapes": shapes}], **kwargs)
    for t in range(1, steps + 1):
        h.step(t)
    return h


# --------------------------------------------------------------------------- the harness itself
def test_harness_catches_a_wrong_update():
    """A perturbation of one element of the fused param, or of a state, must fail the check."""
    h = run("adam", [(5,), (3, 2)], steps=2)
    h.assert_close()
    h.sides[0].params[1].view(-1)[3] += 1e-4
    with pytest.raises(AssertionError, match="param"):
        h.assert_close()
    h = run("adam", [(5,)], steps=2)
    h.sides[0].states["exp_avg_sq"][0][0] *= 1.001
    with pytest.raises(AssertionError, match="exp_avg_sq"):
        h.assert_close()


def test_harness_catches_a_slightly_wrong_lr():
    """An lr off by 0.1% moves params by far less than 1e-5 of their size: the update check
    must still see it."""
    h = Harness("sgd", [{"shapes": [(4, 4)]}])
    real = h.hyper
    h.hyper = lambda gi: {**real(gi), "lr": real(gi)["lr"] * 1.001}
    for t in range(1, 6):
        h.step(t)
    assert h.errors()["param"] < 1e-5
    with pytest.raises(AssertionError, match="update off"):
        h.assert_close()


def test_harness_catches_a_wrong_hyperparameter():
    """The fused side run with another beta2 than the reference must be caught."""
    h = Harness("adam", [{"shapes": [(6,)]}])
    real = h.hyper
    h.hyper = lambda gi: {**real(gi), "beta2": 0.99}
    for t in (1, 2):
        h.step(t)
    with pytest.raises(AssertionError):
        h.assert_close()
