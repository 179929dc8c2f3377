"""Independent float64 NumPy oracles for algorithms without a public implementation.

Written from the formulas in ALGORITHMS.md, not from the catalog specs, so that a spec (or
the interpreter running it) is checked against a second, separate reading of the paper.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np


class SETAdam:
    """SET-Adam (Zhang 2023, arXiv:2302.01029), one parameter tensor = one layer.

    The second moment v of each layer is
      S: down-scaled by cos^2 of the angle between v and the all-ones vector,
      E: eps-embedded, w = sqrt(v_scaled / (1 - beta2^t) + eps),
      T: down-translated, w_tilde = w - tau * min(w),
    and p <- p - lr / (1 - beta1^t) * m / w_tilde.

    Weight decay: L2 on the gradient, or with decoupled_weight_decay=True the AdamW form
    p <- p * (1 - lr * weight_decay) (the keyword and default as in torch.optim.Adam).

    Interface as optgen's reference interpreter: param_groups are dicts with "params" (a list
    of float64 arrays, updated in place) and hyperparameters; step(grads) takes one gradient
    per parameter in group order (None skips it); state[i] is the i-th parameter's state.
    """

    defaults = MappingProxyType(
        {
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "tau": 0.5,
            "decoupled_weight_decay": False,
        }
    )

    def __init__(self, param_groups, **defaults):
        unknown = set(defaults) - set(self.defaults)
        if unknown:
            raise TypeError(f"unknown keywords: {sorted(unknown)}")
        self.param_groups = []
        for group in param_groups:
            group = {**self.defaults, **defaults, **group}
            group["params"] = [np.array(p, dtype=np.float64) for p in group["params"]]
            self.param_groups.append(group)
        self.state = [{} for _ in self.params]

    @property
    def params(self) -> list[np.ndarray]:
        return [p for group in self.param_groups for p in group["params"]]

    def step(self, grads) -> None:
        index = 0
        for group in self.param_groups:
            lr, eps, tau, wd = group["lr"], group["eps"], group["tau"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                g, state = grads[index], self.state[index]
                index += 1
                if g is None:
                    continue
                g = np.array(g, dtype=np.float64)
                if not state:
                    state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
                state["step"] += 1
                t = state["step"]

                if group["decoupled_weight_decay"]:
                    p *= 1.0 - lr * wd
                else:
                    g = g + wd * p

                m = state["exp_avg"] = beta1 * state["exp_avg"] + (1.0 - beta1) * g
                v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * g * g

                # S: cos of the angle between the layer's v and the all-ones vector of its size.
                # An all-zero v has no angle: cos^2 := 1 there (no down-scaling; the scaled v
                # is 0 for any finite value, so the step stays finite).
                flat = v.reshape(-1)
                ones = np.ones_like(flat)
                norm = np.linalg.norm(flat)
                cos_sq = (np.dot(flat, ones) / (norm * np.linalg.norm(ones))) ** 2 if norm > 0 else 1.0
                v_scaled = cos_sq * v
                # E: eps inside the square root, with v's bias correction.
                w = np.sqrt(v_scaled / (1.0 - beta2**t) + eps)
                # T: subtract a fraction of the layer's smallest entry.
                w_tilde = w - tau * np.min(w)

                p -= lr / (1.0 - beta1**t) * m / w_tilde


def max_rel_diff(actual, expected) -> float:
    """max |actual - expected| over the tensor, relative to max |expected| (0 when both are 0)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != {expected.shape}")
    if not (np.all(np.isfinite(actual)) and np.all(np.isfinite(expected))):
        return float("inf")
    diff = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0.0 else float("inf")


def newton_schulz_in_input_dtype(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz without its cast to bfloat16: the same
    operations (transpose when tall, norm clamped at eps, addmm twice per step) in the
    gradient's own dtype, so that torch.optim.Muon can be compared in float64."""
    import torch

    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.T if tall else grad
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def muon_in_input_dtype():
    """torch.optim.Muon whose Newton-Schulz step keeps the input dtype, for as long as its
    step() runs (a subclass: nothing else is patched)."""
    from unittest import mock

    import torch
    import torch.optim._muon as muon_module

    class MuonInInputDtype(torch.optim.Muon):
        def step(self, closure=None):
            with mock.patch.object(muon_module, "_zeropower_via_newtonschulz", newton_schulz_in_input_dtype):
                return super().step(closure)

    return MuonInInputDtype
