"""Parity: every catalog spec, run by optgen's float64 reference interpreter, against the
implementation it is a drop-in for (torch.optim, pytorch_optimizer, adabound; SET-Adam
against the independent NumPy oracle in reference_impls.py).

Each case runs both side by side for STEPS steps on two param groups with different,
non-default hyperparameters (weight decay on), a learning rate changed before every step,
and gradients g_t = noise_t + 0.5 * p_t computed from each implementation's own params.
Every parameter, and every state whose key both sides share, must agree to RTOL.

pytorch_optimizer computes the global gradient norm (Adan's max_grad_norm, Lamb's pre_norm)
in float32 even for float64 gradients; those cases swap in the same function without the
cast, since a float32 norm alone differs by ~1e-8.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adabound
import numpy as np
import pytest
import pytorch_optimizer
import pytorch_optimizer.optimizer.adan
import pytorch_optimizer.optimizer.lamb
import schedulefree
import torch

import optgen
from optgen import catalog
from optgen.reference import Reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_impls import SETAdam, max_rel_diff, muon_in_input_dtype

STEPS = 64
RTOL = 1e-9

# Two groups; a 2-D tensor with norm above Lamb's clamp of 10, a 1-element tensor, a 1-D
# tensor, and a 2-D tensor that starts at zero (the "norm is 0" branches of Lamb and LARS).
SHAPES = [[(4, 3), (1,)], [(7,), (2, 5)]]
INIT_SCALE = [[4.0, 1.0], [1.0, 0.0]]


def lr_schedule(step: int) -> float:
    """Multiplier of each group's initial lr before step `step` (1-based): never constant."""
    return 0.6 + 0.4 * math.cos(0.3 * step)


@dataclass
class Case:
    id: str
    spec: str
    make: Callable[..., Any]  # (param groups, **shared) -> the reference optimizer
    groups: tuple[dict, dict]  # per-group hyperparameters, constructor keyword names
    shared: dict = field(default_factory=dict)  # options and constructor-level keywords, same in every group
    # optgen state key -> (reference state key, transform of the reference's value)
    state_map: dict = field(default_factory=dict)
    float64_global_norm: bool = False  # pytorch_optimizer computes the global grad norm in float32
    skip_every: int = 0  # > 0: parameter 1 gets no gradient (None) on every skip_every-th step
    shapes: list | None = None  # per group, instead of SHAPES (Muon takes matrices only), scale 1


def _adam_groups(wd=(0.1, 0.05)):
    return (
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": wd[0]},
        {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-7, "weight_decay": wd[1]},
    )


SGD_GROUPS = (
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
    {"lr": 0.02, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.05},
)
SGD_NESTEROV_GROUPS = (
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.1},
    {"lr": 0.02, "momentum": 0.5, "dampening": 0.0, "weight_decay": 0.05},
)
# torch's Adagrad fills `sum` from the constructor's initial_accumulator_value, ignoring a
# param group's own value: pass it to the constructor only.
ADAGRAD_GROUPS = (
    {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "eps": 1e-8},
    {"lr": 0.05, "lr_decay": 0.0, "weight_decay": 0.05, "eps": 1e-10},
)
RMSPROP_GROUPS = (
    {"lr": 1e-2, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.1, "momentum": 0.8},
    {"lr": 3e-3, "alpha": 0.95, "eps": 1e-7, "weight_decay": 0.05, "momentum": 0.0},
)
ADADELTA_GROUPS = (
    {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1},
    {"lr": 1.0, "rho": 0.95, "eps": 1e-6, "weight_decay": 0.05},
)
NADAM_GROUPS = (
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "momentum_decay": 0.01},
    {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-7, "weight_decay": 0.05, "momentum_decay": 0.004},
)
# beta2 = 0.99 and 0.9: rho_t crosses 5 at steps 4 and 6, so both branches of the rectification run.
RADAM_GROUPS = (
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.85, 0.9), "eps": 1e-7, "weight_decay": 0.05},
)
# gamma large enough that both bounds of the clamp bind within STEPS.
ADABOUND_GROUPS = (
    {"lr": 1e-2, "betas": (0.8, 0.99), "final_lr": 0.01, "gamma": 0.5, "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.9, 0.95), "final_lr": 0.2, "gamma": 0.01, "eps": 1e-7, "weight_decay": 0.05},
)
ADAN_GROUPS = (
    {"lr": 1e-2, "betas": (0.9, 0.85, 0.98), "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.98, 0.92, 0.99), "eps": 1e-7, "weight_decay": 0.05},
)
# With clipping the reference reads max_grad_norm and the clipping eps from the constructor.
ADAN_CLIP_GROUPS = tuple({k: v for k, v in g.items() if k != "eps"} for g in ADAN_GROUPS)
ADABELIEF_GROUPS = (
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-12, "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-16, "weight_decay": 0.05},
)
PADAM_GROUPS = (
    {"lr": 5e-2, "betas": (0.8, 0.99), "partial": 0.125, "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 2e-2, "betas": (0.9, 0.95), "partial": 0.25, "eps": 1e-7, "weight_decay": 0.05},
)
LION_GROUPS = (
    {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.1},
    {"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.05},
)
SF_SGD_GROUPS = (
    {"lr": 0.3, "momentum": 0.8, "weight_decay": 0.01, "warmup_steps": 5},
    {"lr": 0.1, "momentum": 0.95, "weight_decay": 0.0},
)
SF_ADAMW_GROUPS = (
    {"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.05, "warmup_steps": 4},
    {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0},
)


def _schedulefree(cls):
    """The package put in train mode: it starts in eval mode and refuses step() until then."""

    def make(groups, **shared):
        opt = cls(groups, **shared)
        opt.train()
        return opt

    make.__name__ = cls.__name__
    return make


LAMB_GROUPS = (
    {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.05},
)
# Prodigy's reference computes d from param_groups[0]'s lr (the spec from each group's own):
# one lr in both groups; weight_decay and eps the reference reads per group
PRODIGY_GROUPS = (
    {"lr": 1.0, "weight_decay": 0.1, "eps": 1e-6},
    {"lr": 1.0, "weight_decay": 0.05, "eps": 1e-8},
)
LARS_GROUPS = (
    {"lr": 0.5, "weight_decay": 0.1, "momentum": 0.9, "dampening": 0.1, "trust_coefficient": 0.02},
    {"lr": 0.2, "weight_decay": 0.05, "momentum": 0.0, "dampening": 0.0, "trust_coefficient": 1e-3},
)
LARS_NESTEROV_GROUPS = (
    {"lr": 0.5, "weight_decay": 0.1, "momentum": 0.9, "dampening": 0.0, "trust_coefficient": 0.02},
    {"lr": 0.2, "weight_decay": 0.05, "momentum": 0.5, "dampening": 0.0, "trust_coefficient": 1e-3},
)

to = torch.optim
po = pytorch_optimizer
NEGATE = lambda x: -x
ADAN_STATE = {"previous_grad": ("previous_grad", NEGATE)}

MUON_GROUPS = (
    {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9},
    {"lr": 0.01, "weight_decay": 0.05, "momentum": 0.95, "ns_steps": 3},
)
MUON_SHAPES = [[(4, 3), (3, 5)], [(6, 2), (3, 5)]]
# eps1=None in group 0: the machine epsilon of the parameters' dtype (float64 here, as the
# Reference's); a 2-D tensor takes the factored branch, a 1-D one the full variance.
ADAFACTOR_GROUPS = (
    {"lr": 0.05, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.1},
    {"lr": 0.02, "beta2_decay": -0.6, "eps": (1e-12, 1e-2), "d": 1.5, "weight_decay": 0.05},
)

MUON_IN_DTYPE = {"bf16_newton_schulz": False}  # ours in the parameter's dtype, as the reference


def _muon_in_input_dtype(groups, bf16_newton_schulz: bool, **shared):
    """torch.optim.Muon with Newton-Schulz in the input dtype (ours: bf16_newton_schulz=False)."""
    assert not bf16_newton_schulz
    return muon_in_input_dtype()(groups, **shared)


CASES = [
    # torch.optim
    Case("sgd-momentum-dampening", "sgd", to.SGD, SGD_GROUPS),
    Case("sgd-nesterov", "sgd", to.SGD, SGD_NESTEROV_GROUPS, {"nesterov": True, "momentum": 0.9}),
    Case("adam", "adam", to.Adam, _adam_groups()),
    Case("adafactor", "adafactor", to.Adafactor, ADAFACTOR_GROUPS),
    Case(
        "adafactor-maximize-skipped_grads",
        "adafactor",
        to.Adafactor,
        ADAFACTOR_GROUPS,
        {"maximize": True},
        skip_every=3,
    ),
    Case("adam-amsgrad", "adam", to.Adam, _adam_groups(), {"amsgrad": True}),
    # torch.optim counts steps per tensor: a parameter without a gradient is skipped entirely.
    Case("adam-amsgrad-skipped_grads", "adam", to.Adam, _adam_groups(), {"amsgrad": True}, skip_every=3),
    # options are per param group in torch.optim: each group gets its own specialised program.
    Case("adam-amsgrad_in_group_0_only", "adam", to.Adam, ({**_adam_groups()[0], "amsgrad": True}, _adam_groups()[1])),
    Case(
        "rmsprop-centered_in_group_1_only",
        "rmsprop",
        to.RMSprop,
        (RMSPROP_GROUPS[0], {**RMSPROP_GROUPS[1], "centered": True}),
    ),
    Case("adam-decoupled_weight_decay", "adam", to.Adam, _adam_groups(), {"decoupled_weight_decay": True}),
    Case("adamw", "adamw", to.AdamW, _adam_groups()),
    Case("adamw-amsgrad", "adamw", to.AdamW, _adam_groups(), {"amsgrad": True}),
    Case("adagrad", "adagrad", to.Adagrad, ADAGRAD_GROUPS, {"initial_accumulator_value": 0.1}),
    Case("rmsprop", "rmsprop", to.RMSprop, RMSPROP_GROUPS),
    Case("rmsprop-centered", "rmsprop", to.RMSprop, RMSPROP_GROUPS, {"centered": True}),
    Case("adadelta", "adadelta", to.Adadelta, ADADELTA_GROUPS),
    Case("nadam", "nadam", to.NAdam, NADAM_GROUPS),
    Case("nadam-skipped_grads", "nadam", to.NAdam, NADAM_GROUPS, skip_every=4),
    Case("nadam-decoupled_weight_decay", "nadam", to.NAdam, NADAM_GROUPS, {"decoupled_weight_decay": True}),
    Case("radam", "radam", to.RAdam, RADAM_GROUPS),
    Case("radam-decoupled_weight_decay", "radam", to.RAdam, RADAM_GROUPS, {"decoupled_weight_decay": True}),
    Case("adamax", "adamax", to.Adamax, _adam_groups()),
    # the AdaBound authors' package
    Case("adabound", "adabound", adabound.AdaBound, ADABOUND_GROUPS),
    Case("adabound-amsbound", "adabound", adabound.AdaBound, ADABOUND_GROUPS, {"amsbound": True}),
    # pytorch_optimizer
    Case("adan-proximal", "adan", po.Adan, ADAN_GROUPS, state_map=ADAN_STATE),
    Case("adan-weight_decouple", "adan", po.Adan, ADAN_GROUPS, {"weight_decouple": True}, state_map=ADAN_STATE),
    Case(
        "adan-proximal-max_grad_norm",
        "adan",
        po.Adan,
        ADAN_CLIP_GROUPS,
        {"max_grad_norm": 2.0, "eps": 1e-6},
        state_map=ADAN_STATE,
        float64_global_norm=True,
    ),
    Case(
        "adan-weight_decouple-max_grad_norm",
        "adan",
        po.Adan,
        ADAN_CLIP_GROUPS,
        {"weight_decouple": True, "max_grad_norm": 2.0, "eps": 1e-6},
        state_map=ADAN_STATE,
        float64_global_norm=True,
    ),
    Case("adabelief", "adabelief", po.AdaBelief, ADABELIEF_GROUPS),
    Case("adabelief-l2", "adabelief", po.AdaBelief, ADABELIEF_GROUPS, {"weight_decouple": False}),
    Case("adabelief-fixed_decay", "adabelief", po.AdaBelief, ADABELIEF_GROUPS, {"fixed_decay": True}),
    Case("adabelief-ams_bound", "adabelief", po.AdaBelief, ADABELIEF_GROUPS, {"ams_bound": True}),
    Case("adabelief-rectify", "adabelief", po.AdaBelief, ADABELIEF_GROUPS, {"rectify": True, "n_sma_threshold": 5}),
    Case(
        "adabelief-rectify-no_sgd-ams_bound",
        "adabelief",
        po.AdaBelief,
        ADABELIEF_GROUPS,
        {"rectify": True, "degenerated_to_sgd": False, "ams_bound": True, "n_sma_threshold": 6},
    ),
    Case("padam", "padam", po.PAdam, PADAM_GROUPS),
    Case("padam-weight_decouple", "padam", po.PAdam, PADAM_GROUPS, {"weight_decouple": True}),
    Case("padam-fixed_decay", "padam", po.PAdam, PADAM_GROUPS, {"weight_decouple": True, "fixed_decay": True}),
    Case("lion", "lion", po.Lion, LION_GROUPS),
    Case("lion-l2", "lion", po.Lion, LION_GROUPS, {"weight_decouple": False}),
    Case("lion-fixed_decay", "lion", po.Lion, LION_GROUPS, {"fixed_decay": True}),
    Case("lamb", "lamb", po.Lamb, LAMB_GROUPS),
    Case("lamb-l2", "lamb", po.Lamb, LAMB_GROUPS, {"weight_decouple": False}),
    Case("lamb-fixed_decay", "lamb", po.Lamb, LAMB_GROUPS, {"fixed_decay": True}),
    Case("lamb-adam-no_grad_averaging", "lamb", po.Lamb, LAMB_GROUPS, {"adam": True, "grad_averaging": False}),
    Case(
        "lamb-pre_norm",
        "lamb",
        po.Lamb,
        LAMB_GROUPS,
        {"pre_norm": True, "max_grad_norm": 1.0, "eps": 1e-6},
        float64_global_norm=True,
    ),
    Case(
        "lamb-pre_norm-max_grad_norm_0",
        "lamb",
        po.Lamb,
        LAMB_GROUPS,
        {"pre_norm": True, "max_grad_norm": 0.0, "eps": 1e-6},
        float64_global_norm=True,
    ),
    # pytorch_optimizer counts steps per param group (group["step"], spec `step: per_group`):
    # a parameter without a gradient still advances its group's bias corrections.
    Case("lamb-skipped_grads", "lamb", po.Lamb, LAMB_GROUPS, skip_every=2),
    Case("adan-skipped_grads", "adan", po.Adan, ADAN_GROUPS, state_map=ADAN_STATE, skip_every=2),
    Case("adabelief-skipped_grads", "adabelief", po.AdaBelief, ADABELIEF_GROUPS, skip_every=3),
    Case("padam-skipped_grads", "padam", po.PAdam, PADAM_GROUPS, skip_every=2),
    Case("lars", "lars", po.LARS, LARS_GROUPS),
    # a distance estimate d shared by both groups (group states, sums over all parameters)
    Case("prodigy", "prodigy", po.Prodigy, PRODIGY_GROUPS, {"d0": 1e-2}),
    Case("prodigy-bias_correction", "prodigy", po.Prodigy, PRODIGY_GROUPS, {"d0": 1e-2, "bias_correction": True}),
    Case("prodigy-safeguard_warmup", "prodigy", po.Prodigy, PRODIGY_GROUPS, {"d0": 1e-2, "safeguard_warmup": True}),
    Case("prodigy-skipped_grads", "prodigy", po.Prodigy, PRODIGY_GROUPS, {"d0": 1e-2}, skip_every=3),
    Case("lars-nesterov", "lars", po.LARS, LARS_NESTEROV_GROUPS, {"nesterov": True}),
    # the package's weighting (lr_max**weight_lr_power * (k+1)**r, group states lr_max and
    # weight_sum) at its defaults and at other powers
    Case("sgdschedulefree", "sgdschedulefree", _schedulefree(schedulefree.SGDScheduleFree), SF_SGD_GROUPS),
    Case("adamwschedulefree", "adamwschedulefree", _schedulefree(schedulefree.AdamWScheduleFree), SF_ADAMW_GROUPS),
    Case(
        "sgdschedulefree-r_and_weight_lr_power",
        "sgdschedulefree",
        _schedulefree(schedulefree.SGDScheduleFree),
        SF_SGD_GROUPS,
        {"r": 0.5, "weight_lr_power": 1.0},
    ),
    Case(
        "adamwschedulefree-r_and_weight_lr_power",
        "adamwschedulefree",
        _schedulefree(schedulefree.AdamWScheduleFree),
        SF_ADAMW_GROUPS,
        {"r": 1.5, "weight_lr_power": 3.0},
    ),
    Case(
        "adamwschedulefree-equal_weights",
        "adamwschedulefree",
        _schedulefree(schedulefree.AdamWScheduleFree),
        SF_ADAMW_GROUPS,
        {"r": 0.0, "weight_lr_power": 0.0},
    ),
    Case(
        "sgdschedulefree-skipped_grads",
        "sgdschedulefree",
        _schedulefree(schedulefree.SGDScheduleFree),
        SF_SGD_GROUPS,
        skip_every=2,
    ),
    # Newton-Schulz in the input dtype (torch's runs in bfloat16): tests/test_matrix.py
    Case("muon", "muon", _muon_in_input_dtype, MUON_GROUPS, MUON_IN_DTYPE, shapes=MUON_SHAPES),
    Case(
        "muon-no-nesterov",
        "muon",
        _muon_in_input_dtype,
        MUON_GROUPS,
        {**MUON_IN_DTYPE, "nesterov": False},
        shapes=MUON_SHAPES,
    ),
    # no public implementation: the independent oracle
    Case("setadam", "setadam", SETAdam, _adam_groups()),
    Case("setadam-decoupled_weight_decay", "setadam", SETAdam, _adam_groups(), {"decoupled_weight_decay": True}),
    Case("setadam-tau", "setadam", SETAdam, tuple({**g, "tau": tau} for g, tau in zip(_adam_groups(), (0.25, 0.9)))),
]


# --------------------------------------------------------------------------- drivers
class TorchDriver:
    """A torch.optim-style optimizer on float64 tensors."""

    def __init__(self, case: Case, init: list[list[np.ndarray]]):
        self.tensors = [[torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in g] for g in init]
        groups = [{"params": ts, **hp} for ts, hp in zip(self.tensors, case.groups)]
        self.opt = case.make(groups, **case.shared)
        self.flat = [t for g in self.tensors for t in g]

    def set_lr(self, index: int, lr: float) -> None:
        self.opt.param_groups[index]["lr"] = lr

    def params(self) -> list[np.ndarray]:
        return [t.detach().numpy().copy() for t in self.flat]

    def step(self, grads: list[np.ndarray]) -> None:
        for t, g in zip(self.flat, grads):
            t.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        self.opt.step()

    def state(self, i: int) -> dict:
        out = {}
        for key, value in self.opt.state[self.flat[i]].items():
            if isinstance(value, torch.Tensor):
                out[key] = value.detach().numpy().copy() if value.dim() else float(value)
            elif isinstance(value, (int, float)):
                out[key] = float(value)
        return out


class NumpyDriver:
    """An oracle with the interpreter's interface (reference_impls)."""

    def __init__(self, case: Case, init: list[list[np.ndarray]]):
        groups = [{"params": [p.copy() for p in g], **hp} for g, hp in zip(init, case.groups)]
        self.opt = case.make(groups, **case.shared)

    def set_lr(self, index: int, lr: float) -> None:
        self.opt.param_groups[index]["lr"] = lr

    def params(self) -> list[np.ndarray]:
        return [p.copy() for p in self.opt.params]

    def step(self, grads) -> None:
        self.opt.step(grads)

    def state(self, i: int) -> dict:
        return dict(self.opt.state[i])


def _float64_grad_norm_sq(param_groups, device=None, *, weight_adaptive=False):
    """pytorch_optimizer's get_global_gradient_norm (squared global norm) without its float32 cast."""
    assert not weight_adaptive
    grads = [p.grad for g in param_groups for p in g["params"] if p.grad is not None]
    return torch.stack([torch.sum(g * g) for g in grads]).sum().reshape(1)


@pytest.fixture(autouse=True)
def float64_torch():
    # torch.optim keeps scalar state (step, NAdam's mu_product) in the default dtype.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _init_params(rng, case: Case | None = None) -> list[list[np.ndarray]]:
    if case is not None and case.shapes is not None:
        return [[rng.standard_normal(shape) for shape in shapes] for shapes in case.shapes]
    return [
        [scale * rng.standard_normal(shape) for shape, scale in zip(shapes, scales)]
        for shapes, scales in zip(SHAPES, INIT_SCALE)
    ]


def _state_pairs(case: Case, ref_state: dict, other_state: dict):
    for key, value in ref_state.items():
        other_key, transform = case.state_map.get(key, (key, lambda x: x))
        if other_key in other_state:
            yield key, value, transform(other_state[other_key])


@pytest.mark.filterwarnings("ignore:This overload of add_? is deprecated:UserWarning")  # in adabound
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_parity(case: Case, monkeypatch):
    if case.float64_global_norm:
        monkeypatch.setattr(pytorch_optimizer.optimizer.adan, "get_global_gradient_norm", _float64_grad_norm_sq)
        monkeypatch.setattr(pytorch_optimizer.optimizer.lamb, "get_global_gradient_norm", _float64_grad_norm_sq)

    rng = np.random.default_rng(sum(map(ord, case.id)))
    init = _init_params(rng, case)
    n = sum(len(g) for g in init)
    noise = [[rng.standard_normal(p.shape) for p in (q for g in init for q in g)] for _ in range(STEPS)]

    spec = optgen.load(case.spec)
    ref = Reference(spec, [{"params": [p.copy() for p in g], **case.shared, **hp} for g, hp in zip(init, case.groups)])
    other = (NumpyDriver if case.make is SETAdam else TorchDriver)(case, init)
    base_lrs = [hp["lr"] for hp in case.groups]

    for t in range(1, STEPS + 1):
        for gi, lr0 in enumerate(base_lrs):
            ref.param_groups[gi]["lr"] = lr0 * lr_schedule(t)
            other.set_lr(gi, lr0 * lr_schedule(t))
        skip = 1 if case.skip_every and t % case.skip_every == 0 else None
        ref.step([None if i == skip else noise[t - 1][i] + 0.5 * p for i, p in enumerate(ref.params)])
        other.step([None if i == skip else noise[t - 1][i] + 0.5 * p for i, p in enumerate(other.params())])

    ours, theirs = [np.asarray(p) for p in ref.params], other.params()
    assert len(ours) == len(theirs) == n
    failures = []
    for i, (a, b, p0) in enumerate(zip(ours, theirs, init[0] + init[1])):
        d = max_rel_diff(a, b)
        if not d <= RTOL:
            failures.append(f"param {i} {b.shape}: max rel diff {d:.3g}")
        moved = float(np.max(np.abs(b - p0)))
        assert moved > 1e-6 * max(1.0, float(np.max(np.abs(p0)))), f"param {i} barely moved ({moved:.3g})"

    compared = set()
    for i in range(n):
        ref_state, other_state = ref.state[i], other.state(i)
        if case.make.__module__.startswith("torch.optim"):
            missing = set(other_state) - set(ref_state)
            assert not missing, f"param {i}: torch state keys {sorted(missing)} missing from optgen's state"
        for key, a, b in _state_pairs(case, ref_state, other_state):
            compared.add(key)
            d = max_rel_diff(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
            if not d <= RTOL:
                failures.append(f"state {key!r} of param {i}: max rel diff {d:.3g}")
    assert compared - {"step"}, "no state was compared"
    assert not failures, f"{case.id} vs {case.make.__module__}.{case.make.__name__}:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- constructors
# Reference keywords a spec does not model (see the spec's notes), and spec keywords the
# reference does not have.
NOT_MODELLED = {
    "lamb": {"rectify", "degenerated_to_sgd", "n_sma_threshold"},
    "muon": {"adjust_lr_fn"},
}
# inherited from adam.yaml, torch's AdamW has no such keyword; Muon's adjust_lr_fn (a string)
# is the option match_rms_adamw, and torch always runs Newton-Schulz in bfloat16
EXTRA = {"adamw": {"decoupled_weight_decay"}, "muon": {"match_rms_adamw", "bf16_newton_schulz"}}
# defaults a spec cannot write (see its notes): Prodigy's beta3=None (sqrt(beta2)) is beta3 < 0,
# its growth_rate=inf is 1e300 (a spec's defaults are finite; d * 1e300 exceeds any d_max)
OTHER_DEFAULT = {"prodigy": {"beta3": -1.0, "growth_rate": 1e300}}
NOT_KEYWORDS = {"self", "params", "foreach", "maximize", "capturable", "differentiable", "fused"}


def _parity_defaults(parity: str) -> dict:
    if parity == "independent":
        return dict(SETAdam.defaults)
    module, _, name = parity.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k not in NOT_KEYWORDS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def test_every_catalog_spec_has_a_parity_case():
    assert set(catalog.names()) - {c.spec for c in CASES} == set()


@pytest.mark.parametrize("name", catalog.names())
def test_constructor_keywords_and_defaults_match_reference(name):
    spec = optgen.load(name)
    ours = {k: h.default_value() for k, h in spec.hyperparameters.items() if h.captured is None}
    ours.update({k: o.default for k, o in spec.options.items()})
    theirs = _parity_defaults(spec.parity)
    assert set(ours) - EXTRA.get(name, set()) == set(theirs) - NOT_MODELLED.get(name, set())
    # positional order: hyperparameters, and options, in the reference's order
    order = [k for k in theirs if k in ours]
    assert [k for k in order if k in spec.hyperparameters] == [k for k in spec.hyperparameters if k in theirs]
    assert [k for k in order if k in spec.options] == [k for k in spec.options if k in theirs]
    for key in set(ours) & set(theirs):
        want = tuple(theirs[key]) if isinstance(theirs[key], (tuple, list)) else theirs[key]
        want = OTHER_DEFAULT.get(name, {}).get(key, want)
        assert ours[key] == want and isinstance(ours[key], bool) == isinstance(want, bool), (
            f"{name}.{key}: default {ours[key]!r}, {spec.parity} has {want!r}"
        )
