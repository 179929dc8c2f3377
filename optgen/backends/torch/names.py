"""Python names for a spec's identifiers in the generated module.

A spec may name a hyperparameter, option, state or value anything a spec allows (`zip`,
`keys`, `super`, `param_group`, `m_list` beside a state `m`). The generated module keeps
those names where they are free and renames the rest (`zip` -> `zip_`) consistently: the
constructor keywords, param_group keys and state_dict keys stay the spec's (they are the
public surface), only the Python identifiers change.

What is not free is found mechanically, never listed by hand: Python's keywords, the
builtins, and every identifier the module binds or reads for itself, found by rendering the
spec with placeholder names and walking the rendered module's syntax tree.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import keyword
from collections.abc import Callable

import sympy

from ...lower import lower
from ...spec import Assign, If, Repeat, Spec, TensorIf
from .prepare import plural

PLACEHOLDER = "optgen_placeholder_"


def identifiers(spec: Spec) -> list[str]:
    """The spec's names that become Python identifiers: states and assigned values first
    (they also name lists, `exp_avgs`), then options and hyperparameters."""
    out = list(spec.state) + list(spec.inputs)
    for name in _assigned(spec.update):
        if name not in out and name not in ("param", "grad"):
            out.append(name)
    out += list(spec.options)
    out += [n for h in spec.hyperparameters.values() for n in h.names]
    return list(dict.fromkeys(out))


def _assigned(statements) -> list[str]:
    out = []
    for st in statements:
        if isinstance(st, Assign):
            out.append(st.target)
        elif isinstance(st, (If, TensorIf)):
            out += _assigned(st.body) + _assigned(st.orelse)
    return out


def placeholders(spec: Spec) -> dict[str, str]:
    return {name: f"{PLACEHOLDER}{i}" for i, name in enumerate(identifiers(spec))}


def module_names(text: str, call_keywords: bool = False) -> set[str]:
    """Every identifier the rendered module binds or reads, other than the placeholders,
    with Python's keywords and builtins; call_keywords=True adds the keyword arguments its
    calls pass (a Triton launch's `num_warps=` must not meet a kernel argument of that name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if call_keywords and isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    names = {n for n in names if not n.startswith(PLACEHOLDER)}
    return names | set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)


def own_keywords(text: str) -> set[str]:
    """The keyword-only arguments of the rendered class's constructor (maximize, foreach...)."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return {a.arg for a in node.args.kwonlyargs}
    return set()


def python_names(
    spec: Spec, taken: set[str], derived: Callable[[str], set[str]] = lambda name: {plural(name)}
) -> dict[str, str]:
    """Spec name -> Python name: the spec's own where it, and the names the module derives
    from it (the list `exp_avgs`; a Triton pointer `exp_avg_ptr`), are free; else the first
    free of name_, name__, ..."""
    claimed = set(taken)
    out = {}
    for name in identifiers(spec):
        candidate = name
        while candidate in claimed or derived(candidate) & claimed:
            candidate += "_"
        out[name] = candidate
        claimed |= {candidate} | derived(candidate)
    return out


def public_globals(public: Spec, local: Spec, names: dict[str, str]) -> dict[str, str]:
    """Cross-parameter reduction of `local` (the spec renamed by `names`) -> its name when
    lowered from `public`: the key the torch class and the Triton module exchange it by (a
    name missing from the map is its own key). Matched by what each reduces (its argument
    down to the program's inputs), not by name or order, which renaming may change."""
    out: dict[str, str] = {}
    if all(k == v for k, v in names.items()):
        return out
    rename = _renamer(names)
    for mine, combo in zip(local.option_combinations(), public.option_combinations()):
        ours, theirs = lower(local, mine), lower(public, combo)
        public_sums = theirs.reductions("global")
        keys = {rename(_full(theirs, g.expr)): g.name for g in public_sums}
        for i, g in enumerate(ours.reductions("global")):
            # by position only if lowering wrote the same sum differently under other names
            out[g.name] = keys.get(_full(ours, g.expr), public_sums[i].name)
    return out


def _full(program, expr):
    """expr with every value it reads substituted, down to the program's inputs."""
    by_name = program.by_name
    for _ in range(len(program.values) + 1):
        table = {s: by_name[s.name].expr for s in expr.free_symbols if s.name in by_name}
        if not table:
            return expr
        expr = expr.xreplace(table)
    return expr


def renamed(spec: Spec, names: dict[str, str], public: bool = True) -> Spec:
    """The spec with its identifiers renamed. public=True keeps the constructor keywords,
    group keys and state keys; public=False renames those too (the placeholder render)."""
    if all(k == v for k, v in names.items()):
        return spec
    rename = _renamer(names)

    def name(n: str) -> str:
        return names.get(n, n)

    hypers = {}
    for key, h in spec.hyperparameters.items():
        new_key = key if public else name(key) if not h.is_tuple else f"{PLACEHOLDER}key_{len(hypers)}"
        hypers[new_key] = dataclasses.replace(h, key=new_key, names=[name(n) for n in h.names], tuple_key=h.is_tuple)
    options = {
        name(o): dataclasses.replace(opt, name=name(o), key=(opt.public if public else name(o)))
        for o, opt in spec.options.items()
    }
    states = {
        name(s): dataclasses.replace(
            d,
            name=name(s),
            init=rename(d.init),
            key=d.key if public else name(s),
            when=_condition(d.when, name),
        )
        for s, d in spec.state.items()
    }
    inputs = {
        name(n): dataclasses.replace(d, name=name(n), key=d.public if public else name(n))
        for n, d in spec.inputs.items()
    }
    return dataclasses.replace(
        spec,
        hyperparameters=hypers,
        options=options,
        state=states,
        inputs=inputs,
        update=[_statement(st, rename, name) for st in spec.update],
        symbols={name(n): rename(sym) for n, sym in spec.symbols.items()},
        tex_symbols={name(n): t for n, t in spec.tex_symbols.items()},
        locations={name(n): loc for n, loc in spec.locations.items()},
        modes=spec.modes.renamed(rename, name) if spec.modes is not None else None,
    )


def _renamer(names: dict[str, str]) -> Callable:
    """Rename symbols by name (each keeps its assumptions)."""

    def rename(expr):
        if not isinstance(expr, sympy.Basic):
            return expr
        table = {
            s: sympy.Symbol(names[s.name], **s.assumptions0)
            for s in expr.atoms(sympy.Symbol)
            if names.get(s.name, s.name) != s.name
        }
        return expr.xreplace(table) if table else expr

    return rename


def _statement(st, rename, name):
    if isinstance(st, Assign):
        return dataclasses.replace(st, target=name(st.target), expr=rename(st.expr))
    if isinstance(st, Repeat):
        return dataclasses.replace(st, count=rename(st.count), body=[_statement(s, rename, name) for s in st.body])
    return dataclasses.replace(
        st,
        cond=rename(st.cond) if isinstance(st, TensorIf) else _condition(st.cond, name),
        body=[_statement(s, rename, name) for s in st.body],
        orelse=[_statement(s, rename, name) for s in st.orelse],
    )


def _condition(cond, name):
    if cond is None:
        return None
    if isinstance(cond, str):
        return name(cond)
    op, arg = cond
    if op == "not":
        return (op, _condition(arg, name))
    return (op, [_condition(c, name) for c in arg])
