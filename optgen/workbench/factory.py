"""Optimizers for a model, the way timm's `create_optimizer_v2` and pytorch_optimizer's
`create_optimizer` build them:

    opt = optgen.create_optimizer(model, "adamw", lr=3e-4, weight_decay=0.05)
    opt = optgen.create_optimizer(model, "my_spec.yaml", lr=1e-3, betas=(0.9, 0.99))

With weight decay, a model's parameters are split into two groups: biases, other 1-D
parameters (norm scales, embeddings' gains) and the parameters of normalisation layers get
weight_decay 0, as do names matching `no_weight_decay` and those a model lists in its own
`no_weight_decay()` (timm's convention); `overrides` sets other hyperparameters per name
pattern (e.g. a larger lr for the head).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import catalog
from ..errors import SpecError

# Module types whose parameters never decay (their weights are scales, not projections).
_NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")


def available() -> list[str]:
    """The catalog names create_optimizer and `optgen compare` accept ("adam", "adamw", ...)."""
    return catalog.names()


def optimizer_class(name_or_path: str | Path) -> type:
    """The optimizer class for a catalog name (its committed, compiled class) or a spec path
    (compiled now, in memory)."""
    from .. import load, optimizers

    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and catalog.path_of(text) is not None:
        classes = {name.lower(): name for name in optimizers.__all__}
        if text.lower() in classes:
            return getattr(optimizers, classes[text.lower()])
    from .. import compile as compile_spec

    return compile_spec(load(Path(text) if isinstance(name_or_path, Path) else text))


def create_optimizer(
    model_or_params,
    name_or_path: str | Path,
    lr: float | None = None,
    weight_decay: float | None = None,
    no_weight_decay: Iterable[str] = ("bias", "norm"),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **hyperparameters,
):
    """An optimizer over a model's parameters (or an iterable of tensors or param groups).

    lr, weight_decay: None keeps the spec's default. no_weight_decay: substrings of parameter
    names (case-insensitive) that get weight_decay 0, besides 1-D parameters and norm layers'
    parameters. overrides: {fnmatch pattern of a parameter name: {hyperparameter: value}},
    the first matching pattern wins. Other keywords go to the optimizer's constructor.
    Splitting and overrides need a model (names); given tensors or groups, they pass as they are.
    """
    cls = optimizer_class(name_or_path)
    accepted = _keywords(cls)
    given = {"lr": lr, "weight_decay": weight_decay, **hyperparameters}
    unknown = sorted(k for k, v in given.items() if k not in accepted and v is not None)
    for group in (overrides or {}).values():
        unknown += sorted(k for k in group if k not in accepted)
    if unknown:
        raise TypeError(
            f"{cls.__name__} has no hyperparameter {', '.join(map(repr, unknown))}; it takes {', '.join(accepted)}"
        )
    defaults = {k: v for k, v in given.items() if v is not None}
    decay = defaults.get("weight_decay", accepted.get("weight_decay", 0.0))
    if _is_module(model_or_params):
        groups = param_groups(model_or_params, bool(decay), no_weight_decay, overrides)
    else:
        if overrides:
            raise TypeError("overrides need parameter names: pass the model, not its parameters")
        groups = list(model_or_params)
    return cls(groups, **defaults)


def param_groups(model, decay: bool, no_weight_decay: Iterable[str] = ("bias", "norm"), overrides=None) -> list[dict]:
    """The param groups of a model: one per (override pattern, decays) pair that has
    parameters, in a stable order; the no-decay groups carry weight_decay 0."""
    patterns = [p.lower() for p in no_weight_decay]
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    groups: dict[tuple[str | None, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = decay and not (
            param.ndim <= 1 or id(param) in norm_params or name in skip or any(p in name.lower() for p in patterns)
        )
        pattern = next((p for p in (overrides or {}) if fnmatch.fnmatchcase(name, p)), None)
        group = groups.setdefault((pattern, decays), {"params": [], **(overrides or {}).get(pattern, {})})
        if not decays and decay:
            group["weight_decay"] = 0.0
        group["params"].append(param)
    return list(groups.values())


def _keywords(cls) -> dict[str, Any]:
    """The constructor's hyperparameters and their defaults."""
    signature = inspect.signature(cls.__init__)
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _is_module(obj) -> bool:
    return hasattr(obj, "named_parameters") and hasattr(obj, "modules")


def _is_norm(module) -> bool:
    return any(t in type(module).__name__ for t in _NORM_TYPES)


# --------------------------------------------------------------------------- spec arguments
def parse_spec_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """`adam:lr=1e-3,betas=(0.9,0.99)` -> ("adam", {"lr": 0.001, "betas": (0.9, 0.99)}).
    Values are numbers, true/false, or parenthesised tuples of numbers; never evaluated."""
    name, sep, rest = arg.partition(":")
    if not name:
        raise SpecError(None, f"{arg!r}: expected SPEC or SPEC:name=value,...")
    hyper: dict[str, Any] = {}
    for item in _split_top(rest) if sep else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise SpecError(None, f"{arg!r}: expected name=value, got {item!r}")
        hyper[key] = _value(value.strip(), arg)
    return name, hyper


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _value(text: str, arg: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.startswith("(") and text.endswith(")"):
        return tuple(_number(part.strip(), arg) for part in text[1:-1].split(",") if part.strip())
    return _number(text, arg)


def _number(text: str, arg: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise SpecError(None, f"{arg!r}: {text!r} is not a number, true/false or (a, b)") from None
