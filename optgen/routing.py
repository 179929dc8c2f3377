"""Routing by param group: one optimizer whose groups each follow one of several update
rules, as Muon is used in practice (Muon for the 2-D hidden weights, AdamW for embeddings,
the head, biases and norm weights: KellerJordan's MuonWithAuxAdam and Moonlight's Muon
choose per param group with `use_muon`).

    opt = Routed(
        [
            {"params": hidden_matrices, "use_muon": True, "lr": 0.02},
            {"params": embeddings_head_and_vectors, "use_muon": False, "lr": 3e-4},
        ],
        rules={True: optgen.optimizers.Muon, False: optgen.optimizers.AdamW},
    )

Each group is given to the rule its `key` names, with that rule's defaults (`defaults=`
overrides them per rule); every group dict is shared, so a LR scheduler on `opt` drives
every rule. There is one `step()`, one `state` and one `state_dict()` (the group's key is
saved with it, so a checkpoint reloads each group into its own rule). `split_by_shape`
makes the usual partition from a model's parameters: matrices (ndim >= 2) but the ones
named in `exclude`, and the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class Routed(Optimizer):
    def __init__(
        self,
        params: Iterable[dict],
        rules: dict[Any, type[Optimizer]],
        key: str = "use_muon",
        defaults: dict[Any, dict] | None = None,
    ):
        groups = [dict(g) for g in params]
        for i, group in enumerate(groups):
            if key not in group:
                raise ValueError(f"param group {i} has no `{key}`: it must say which rule updates it")
            if group[key] not in rules:
                raise ValueError(f"param group {i}: `{key}`={group[key]!r} names no rule; rules: {list(rules)}")
        self.key, self.rules, self.rule_defaults = key, dict(rules), dict(defaults or {})
        super().__init__(groups, {})
        self._build_inner()

    def _build_inner(self) -> None:
        """One optimizer per rule over that rule's groups (the same dicts), sharing `state`."""
        self.inner: dict[Any, Optimizer] = {}
        for rule, cls in self.rules.items():
            groups = [g for g in self.param_groups if g[self.key] == rule]
            if not groups:
                continue
            opt = cls(groups, **self.rule_defaults.get(rule, {}))
            opt.param_groups = groups  # the same dicts: the rule's defaults were filled in
            opt.state = self.state
            self.inner[rule] = opt

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner.values():
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._build_inner()  # torch made new group dicts and a new state: point the rules at them

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if getattr(self, "inner", None) is not None:
            self._build_inner()


def split_by_shape(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], exclude: Iterable[str] = ()):
    """(matrices, others): parameters with ndim >= 2 not named in `exclude` (substrings, such
    as "embed" or "lm_head"), and every other parameter."""
    exclude = tuple(exclude)
    matrices, others = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        (matrices if p.ndim >= 2 and not any(e in name for e in exclude) else others).append(p)
    return matrices, others
