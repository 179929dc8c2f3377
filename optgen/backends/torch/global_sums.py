"""Cross-parameter reductions (a global gradient norm, Prodigy's sums): the helper that
sums one over a group's tensors, and when a group needs it (the option settings that read
it, less a hyperparameter at 0 that switches it off)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy
from sympy.logic.boolalg import simplify_logic
from sympy.logic.inference import satisfiable

from ...errors import CompileError
from ...expr import GRAD, PARAM
from ...spec import Spec
from . import cross
from .constructor import group_text
from .prepare import Prepared
from .printer import TensorPrinter

if TYPE_CHECKING:
    from .module import Variant


@dataclass
class GlobalFunction:
    """A cross-parameter reduction: the class sums it over every group before updating."""

    name: str
    helper: str
    doc: str
    needed_group: str
    needed_local: str
    group_kwargs: str
    local_kwargs: str
    helper_signature: str
    helper_body: str
    # staged (reads states, group states or step): the lists the helper takes after params
    # and grads, as the class and the functional pass them
    helper_lists: str = ""
    staged: bool = False


def global_functions(spec: Spec, variants: list[Variant]) -> list[GlobalFunction]:
    staged = _staged_globals(spec, variants)
    found: dict[str, tuple] = {}
    for v in variants:
        for g in v.prepared.globals:
            if g.name in staged:
                continue
            if g.name in found and found[g.name][0] != g.arg:
                raise CompileError(spec.loc, f"the cross-parameter reduction {g.name} differs between option settings")
            found.setdefault(g.name, (g.arg, []))[1].append(v)
    out = []
    for name, (arg, users) in found.items():
        condition = _needed(name, users)
        hypers = sorted({s.name for s in arg.free_symbols} - {PARAM, GRAD}, key=list(spec.scalar_hypers).index)
        even = _even_in_grad(arg)
        kw = hypers + ([] if even else ["maximize"])
        group_kw = [
            f'{h}=group["{_hyper_key(spec, h)}"]'
            + (f"[{_hyper_index(spec, h)}]" if spec.scalar_hypers[h][0].is_tuple else "")
            for h in hypers
        ]
        group_kw += [] if even else ['maximize=group["maximize"]']
        out.append(
            GlobalFunction(
                name=name,
                helper=f"_partial_{name}",
                doc=f"The sum of {arg}",
                needed_group=_spell(condition, group_text(spec)),
                needed_local=_local_condition(condition),
                group_kwargs="".join(f", {k}" for k in group_kw),
                local_kwargs="".join(f", {k}={k}" for k in kw),
                helper_signature=(
                    "".join([", *"] + [f", {h}: float" for h in hypers] + ([] if even else [", maximize: bool"]))
                )
                if kw
                else "",
                helper_body=_global_body(arg, even),
            )
        )
    return out + list(staged.values())


def _staged_globals(spec: Spec, variants: list[Variant]) -> dict[str, GlobalFunction]:
    """The sums over all parameters that read states, group states or step (cross.py): the
    argument may differ between option settings (the helper then takes those options)."""
    found: dict[str, list] = {}
    users: dict[str, list] = {}
    for v in variants:
        for g in v.prepared.globals:
            if any(cross.is_staged(spec, w.arg) for w in v.prepared.globals if w.name == g.name):
                arms = found.setdefault(g.name, [])
                for arg, settings in arms:
                    if arg == g.arg:
                        settings.append(v.options)
                        break
                else:
                    arms.append((g.arg, [v.options]))
                users.setdefault(g.name, []).append(v)
    out = {}
    for name, arms in found.items():
        args = [a for a, _ in arms]
        conditions = cross.arms(arms, lambda c: c)
        options = sorted({x.name for c, _ in conditions[:-1] for x in c.free_symbols})
        scalars = cross.staged_scalars(spec, args) + options
        even = all(_even_in_grad(a) for a in args)
        kw = scalars + ([] if even else ["maximize"])
        condition = _needed(name, users[name])
        lists = cross.staged_lists(spec, args)
        group_kw = [_group_value(spec, n) for n in scalars] + ([] if even else ['maximize=group["maximize"]'])
        out[name] = GlobalFunction(
            name=name,
            helper=f"_partial_{name}",
            doc=f"The sum of {args[0]}" if len(args) == 1 else f"The sum of {name}'s argument (per option setting)",
            needed_group=_spell(condition, group_text(spec)),
            needed_local=_local_condition(condition),
            group_kwargs="".join(f", {k}" for k in group_kw),
            local_kwargs="".join(f", {k}={k}" for k in kw),
            helper_signature="".join(
                [", *"]
                + [f", {n}: bool" if n in spec.options else f", {n}: float" for n in scalars]
                + ([] if even else [", maximize: bool"])
            )
            if kw
            else "",
            helper_body=cross.staged_body(spec, [(_spell(c, lambda o: o), a) for c, a in conditions], even),
            helper_lists=", ".join(lists[2:]),
            staged=True,
        )
    return out


def _group_value(spec: Spec, name: str) -> str:
    """`name=group[...]`: a hyperparameter, option or group state as the class reads it."""
    if name in spec.options:
        return f'{name}=group["{spec.options[name].public}"]'
    if name in spec.state:
        return f'{name}=group["{spec.state[name].key}"]'
    return f'{name}=group["{_hyper_key(spec, name)}"]' + (
        f"[{_hyper_index(spec, name)}]" if spec.scalar_hypers[name][0].is_tuple else ""
    )


def _hyper_key(spec: Spec, name: str) -> str:
    return spec.scalar_hypers[name][0].key


def _hyper_index(spec: Spec, name: str) -> int:
    return spec.scalar_hypers[name][1]


def _even_in_grad(arg) -> bool:
    g = sympy.Symbol(GRAD, real=True)
    grads = [s for s in arg.free_symbols if s.name == GRAD]
    return not grads or sympy.simplify(arg.xreplace({grads[0]: -g}) - arg.xreplace({grads[0]: g})) == 0


def _global_body(arg, even: bool) -> str:
    for name, lst in ((GRAD, "grads"), (PARAM, "params")):
        if isinstance(arg, sympy.Pow) and arg.exp == 2 and arg.base.is_Symbol and arg.base.name == name:
            return f"    return torch.stack(torch._foreach_norm({lst})).square().sum()"
    printer = TensorPrinter(lambda n: n, lambda e: not ({x.name for x in e.free_symbols} & {PARAM, GRAD}))
    lines = [] if even else ["    if maximize:", "        grads = torch._foreach_neg(grads)"]
    lines.append(
        f"    return torch.stack([({printer.doprint(arg)}).sum() for param, grad in zip(params, grads)]).sum()"
    )
    return "\n".join(lines)


def _local_condition(condition) -> str:
    """`condition` as the functional's `if sum is None and <condition> and params:` reads it:
    parenthesized when it is an `or`."""
    text = _spell(condition, lambda o: o)
    return f"({text})" if " or " in text else text


def _needed(name: str, users: list[Variant]):
    """When a param group needs the reduction: the option settings that have it, and the
    hyperparameters that switch it off at 0 (Adan's max_grad_norm)."""
    terms = []
    for v in users:
        literals = [sympy.Symbol(o) if on else sympy.Not(sympy.Symbol(o)) for o, on in v.options.items()]
        kills = [sympy.Symbol(f"nonzero__{h}") for h in _killers(v.prepared, name)]
        terms.append(sympy.And(*literals, *kills))
    condition = sympy.Or(*terms)
    # every setting: True (simplify_logic may leave `a | ~a` as it is)
    return sympy.true if not satisfiable(sympy.Not(condition)) else simplify_logic(condition, form="dnf")


def _killers(p: Prepared, name: str) -> list[str]:
    out = []
    spec = p.program.spec
    for h, (hp, _) in spec.scalar_hypers.items():
        if hp.captured is not None or not hp.range.contains(0.0) or h not in p.kinds:
            continue
        table = {h: sympy.Integer(0)}
        for v in p.values:
            if p.kinds[v.name] in ("uniform", "device_uniform"):
                e = v.expr.xreplace({s: table[s.name] for s in v.expr.free_symbols if s.name in table})
                if e.is_number:
                    table[v.name] = e
        live = set(p.program.outputs.values()) | set(p.program.group_outputs.values())
        for v in reversed(p.values):
            if v.name in live and v.name not in table:
                e = v.expr.xreplace({s: table[s.name] for s in v.expr.free_symbols if s.name in table})
                live |= {s.name for s in e.free_symbols}
        if name not in live:
            out.append(h)
    return out


def _spell(cond, option_text) -> str:
    if cond is sympy.true:
        return "True"
    if cond is sympy.false:
        return "False"
    if isinstance(cond, sympy.Symbol):
        if cond.name.startswith("nonzero__"):
            h = cond.name[len("nonzero__") :]
            return f"{option_text(h)} != 0"
        return option_text(cond.name)
    if isinstance(cond, sympy.Not):
        return f"not {_spell(cond.args[0], option_text)}"
    op = " and " if isinstance(cond, sympy.And) else " or "
    parts = [_spell(a, option_text) for a in sorted(cond.args, key=str)]
    if isinstance(cond, sympy.Or):
        parts = [f"({p})" if " and " in p else p for p in parts]
    return op.join(parts)
