"""The front door's promise, as a property: a spec that `optgen check` accepts compiles on
every path (for-loop, foreach, fused Triton) and matches the float64 Reference; a spec it
refuses gets findings with a location. Specs come from two sources: catalog specs mutated
at the expression level (functions, subexpressions, scopes, inits) and random expression
soups over the spec vocabulary.

Bounded: a few dozen examples each (every example compiles and runs three paths)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import optgen
from optgen import catalog
from optgen.errors import SpecError
from optgen.parse import loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_runner import run_paths

# No shrinking: each example compiles a module and runs three paths, so shrinking would take
# minutes; the failing spec is printed whole instead.
SETTINGS = settings(
    max_examples=int(os.environ.get("OPTGEN_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    print_blob=True,
)

SPECS = {n: yaml.safe_load(catalog.path_of(n).read_text()) for n in catalog.names()}
SPECS = {n: d for n, d in SPECS.items() if "extends" not in d}

UNARY = ["sqrt", "abs", "sign", "exp", "log"]
BINARY = ["maximum", "minimum"]
REDUCE = ["sum", "mean", "norm", "amin", "amax"]


def holds(text: str) -> None:
    """check ok => every path runs and matches the Reference; check not ok => located."""
    try:
        spec = loads(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.loc is not None, str(exc)
        return
    report = optgen.check(spec)
    if not report.ok:
        for f in report.findings:
            assert f.loc is not None and f.loc.line >= 1, str(f)
        return
    assert run_paths(spec) == {"forloop": None, "foreach": None, "fused": None}


# --------------------------------------------------------------------------- mutations
class _Rewrite(ast.NodeTransformer):
    """Rewrites the `target`-th node (in walk order) that `pick` accepts with `make`."""

    def __init__(self, target: int, pick, make):
        self.target, self.pick, self.make, self.seen = target, pick, make, -1

    def visit(self, node):
        if self.pick(node):
            self.seen += 1
            if self.seen == self.target:
                return self.make(node)
        return super().visit(node)


def _mutate_line(line: str, draw) -> str:
    """One expression-level change to an assignment line (other lines are kept)."""
    indent = line[: len(line) - len(line.lstrip())]
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:
        return line
    if not tree.body or not isinstance(tree.body[0], (ast.Assign, ast.AugAssign)):
        return line
    kind = draw(st.sampled_from(["func", "swap", "replace", "wrap", "binop"]))
    k = draw(st.integers(0, 6))
    leaf_names = [n.id for n in ast.walk(tree.body[0].value) if isinstance(n, ast.Name)] or ["grad"]

    def call_named(names):
        return lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names

    if kind == "func":
        for group in (UNARY, BINARY, REDUCE):
            new = draw(st.sampled_from(group))
            tree = _Rewrite(k, call_named(group), lambda n, new=new: ast.Call(ast.Name(new), n.args, [])).visit(tree)
    elif kind == "swap":

        def swap(n):
            n.left, n.right = n.right, n.left
            return n

        tree = _Rewrite(k, lambda n: isinstance(n, ast.BinOp) and not isinstance(n.op, ast.Pow), swap).visit(tree)
    elif kind == "replace":
        name = draw(st.sampled_from(leaf_names + ["grad", "param", "step", "lr", "1", "0.5"]))
        new = ast.parse(name, mode="eval").body
        tree = _Rewrite(k, lambda n: isinstance(n, (ast.Name, ast.Constant)), lambda n: new).visit(tree)
    elif kind == "wrap":
        fn = draw(st.sampled_from(UNARY + REDUCE))
        arg = "abs" if fn in ("sqrt", "log") else None

        def wrap(n):
            inner = ast.Call(ast.Name(arg), [n], []) if arg else n
            return ast.Call(ast.Name(fn), [inner], [])

        tree = _Rewrite(k, lambda n: isinstance(n, ast.Name), wrap).visit(tree)
    else:
        op = draw(st.sampled_from([ast.Add(), ast.Sub(), ast.Mult(), ast.Div()]))
        tree = _Rewrite(k, lambda n: isinstance(n, ast.BinOp), lambda n: ast.BinOp(n.left, op, n.right)).visit(tree)
    return indent + ast.unparse(ast.fix_missing_locations(tree))


@st.composite
def mutated_catalog_spec(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    doc = yaml.safe_load(yaml.safe_dump(SPECS[name]))
    doc.pop("claims", None)  # a mutated spec does not keep its parent's theorems
    lines = doc["update"].rstrip("\n").split("\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = _mutate_line(lines[i], draw)
    doc["update"] = "\n".join(lines) + "\n"
    states = doc.get("state") or {}
    if states and draw(st.booleans()):
        s = draw(st.sampled_from(sorted(states)))
        decl = dict(states[s] or {})
        change = draw(st.sampled_from(["scope", "init"]))
        if change == "scope":
            decl["scope"] = "element" if decl.get("scope") == "tensor" else "tensor"
        else:
            decl["init"] = draw(st.sampled_from([0, 1, "grad", "param", "lr", "abs(grad)"]))
        states[s] = decl
    options = {o: draw(st.booleans()) for o in doc.get("options") or {}}
    return yaml.safe_dump(doc, sort_keys=False), options


@SETTINGS
@given(mutated_catalog_spec())
def test_mutated_catalog_specs_that_check_run_right(case):
    text, _options = case
    holds(text)


# --------------------------------------------------------------------------- soups
ELEMENT_LEAVES = ["grad", "param", "m", "v"]
SCALAR_LEAVES = ["lr", "beta1", "beta2", "step", "s", "0.5", "2"]


def _expr(draw, depth: int, element: bool) -> str:
    leaves = ELEMENT_LEAVES + SCALAR_LEAVES if element else SCALAR_LEAVES
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(leaves))
    kind = draw(st.sampled_from(["bin", "bin", "unary", "binary", "where", "reduce", "clamp", "pow"]))

    def sub():
        return _expr(draw, depth - 1, element)

    if kind == "bin":
        return f"({sub()} {draw(st.sampled_from(['+', '-', '*', '/']))} {sub()})"
    if kind == "unary":
        fn = draw(st.sampled_from(UNARY))
        return (
            f"{fn}(1 + abs({sub()}))"
            if fn in ("sqrt", "log")
            else f"{fn}({sub()} / 10)"
            if fn == "exp"
            else f"{fn}({sub()})"
        )
    if kind == "binary":
        return f"{draw(st.sampled_from(BINARY))}({sub()}, {sub()})"
    if kind == "where":
        return f"where({sub()} > {sub()}, {sub()}, {sub()})"
    if kind == "clamp":
        return f"clamp({sub()}, -1, 1)"
    if kind == "pow":
        return f"{sub()}**2"
    inner = _expr(draw, depth - 1, True)
    return f"{draw(st.sampled_from(REDUCE))}({draw(st.sampled_from(ELEMENT_LEAVES))} * {inner})"


@st.composite
def expression_soup(draw):
    m = _expr(draw, 3, True)
    v = _expr(draw, 2, True)
    s = _expr(draw, 2, False)
    d = _expr(draw, 3, True)
    s_scope = draw(st.sampled_from(["tensor", "element"]))
    update = (  # every state's old value reaches param (else check refuses the soup)
        f"d = {d}\nparam = param - lr * clamp(d + m * s + v, -10, 10)\nm = beta1 * m + {m}\nv = {v}\ns = {s}\n"
    )
    doc = {
        "name": "Soup",
        "summary": "an expression soup.",
        "parity": "independent",
        "hyperparameters": {
            "lr": {"default": 0.01, "range": "(0, inf)"},
            "betas": {"default": [0.9, 0.99], "names": ["beta1", "beta2"], "range": "[0, 1)"},
        },
        "state": {
            "m": {"init": 0},
            "v": {"init": draw(st.sampled_from([0, 1, "grad", "abs(param)"]))},
            "s": {"init": draw(st.sampled_from([0, 1, "lr"])), "scope": s_scope},
        },
        "update": update,
    }
    return yaml.safe_dump(doc, sort_keys=False)


@SETTINGS
@given(expression_soup())
def test_expression_soups_that_check_run_right(text):
    holds(text)
