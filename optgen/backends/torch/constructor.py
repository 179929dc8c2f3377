"""Hyperparameters as the class takes and reads them: constructor keywords, the range
checks each param group passes, and the group's values unpacked for the update."""

from __future__ import annotations

from ...expr import GRAD, PARAM
from ...spec import Spec
from .docstring import default_text, type_of
from .prepare import plural
from .printer import number


def ctor_args(spec: Spec) -> list[str]:
    out = [f"{k}: {type_of(h)} = {default_text(h)}" for k, h in spec.hyperparameters.items() if h.captured is None]
    return out + [f"{opt.public}: bool = {opt.default}" for opt in spec.options.values()]


def validation(spec: Spec, public: Spec) -> list[str]:
    """Range checks, reading each value under its Python name; messages name it as the spec."""
    lines = []
    for (key, h), shown in zip(spec.hyperparameters.items(), public.hyperparameters.values()):
        if h.captured is not None:
            continue
        checks = []
        for i, (name, label) in enumerate(zip(h.names, shown.names)):
            test = _range_test(name, h.range)
            if test is None:
                continue
            if h.none is not None and h.default[i] is None:
                test = f"({name} is None or {test})"
            label = f"{label} ({key}[{i}])" if h.is_tuple else label
            checks.append(f"if not {test}:")
            checks += _raise(f'f"Invalid {label}: {{{name}!r}}', f'(expected a value in {h.range})"')
        if checks:  # a value of any range (Muon's ns_coefficients) is not read here
            lines += [f'{", ".join(h.names)} = param_group["{key}"]', *checks]
    return lines


def _raise(head: str, tail: str) -> list[str]:
    """raise ValueError(message), the message split in two literals when one line is too long."""
    if len(head) + len(tail) < 72:
        return [f"    raise ValueError({head} {tail})"]
    return ["    raise ValueError(", f'        {head} "', f'        "{tail}', "    )"]


def _range_test(name: str, interval) -> str | None:
    parts = []
    if interval.lo != float("-inf"):
        parts.append(f"{number(interval.lo)} {'<' if interval.lo_open else '<='} ")
    parts.append(name)
    if interval.hi != float("inf"):
        parts.append(f" {'<' if interval.hi_open else '<='} {number(interval.hi)}")
    return "".join(parts) if len(parts) > 1 else None


def unpack(spec: Spec) -> list[str]:
    """Tuple hyperparameters into their names; a None component (`none: dtype_eps`) becomes
    the machine epsilon of the group's first parameter's dtype, as torch.optim.Adafactor's
    eps1=None does."""
    lines = []
    for k, h in spec.hyperparameters.items():
        if h.is_tuple:
            lines.append(f'{", ".join(h.names)} = group["{k}"]')
        for name, value in zip(h.names, h.default):
            if h.none is not None and value is None:
                if not h.is_tuple:
                    lines.append(f'{name} = group["{k}"]')
                lines += [f"if {name} is None and params:", f"    {name} = torch.finfo(params[0].dtype).eps"]
    return lines


def group_text(spec: Spec):
    """Hyperparameters and options as read from a param group."""
    texts = {o: f'group["{opt.public}"]' for o, opt in spec.options.items()}
    for key, h in spec.hyperparameters.items():
        for i, name in enumerate(h.names):
            texts[name] = f'group["{key}"][{i}]' if h.is_tuple else f'group["{key}"]'
    texts.update({PARAM: "p", GRAD: "grad", "numel": "p.numel()", "ndim": "p.ndim"})
    texts.update({name: f"{plural(name)}[-1]" for name in spec.inputs})  # appended before the states
    return lambda name: texts.get(name, name)
