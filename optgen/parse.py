"""Stage 1, parse: YAML text -> Spec.

Expressions are parsed with `ast` and converted node by node into SymPy. Nothing from a
spec is evaluated: a node kind that is not in the small vocabulary below is an error with
its location."""

from __future__ import annotations

import ast
import difflib
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import sympy

from . import catalog, limits, shapes
from .errors import Loc, SpecError, SpecErrors
from .expr import (
    AXIS_REDUCTIONS,
    COLS_SYMBOL,
    ELEMENTWISE_FUNCS,
    FUNCTIONS,
    GRAD,
    MATRIX_FUNC_NAMES,
    NDIM_SYMBOL,
    NUMEL_SYMBOL,
    PARAM,
    REDUCTION_FUNCS,
    ROWS_SYMBOL,
    STEP,
    STEP_SYMBOL,
    TENSOR_SHAPE_FUNCS,
    GlobalSum,
    ReduceMax,
    ReduceMin,
    ReduceSum,
    name_problem,
    symbol,
)
from .matrix import SHAPE_QUERIES, BFloat16, MatrixProduct, Transposed
from .modes import parse_modes
from .spec import Assign, Hyperparameter, If, InputDecl, Interval, Option, Repeat, Spec, StateDecl, TensorIf
from .texcheck import tex_problem
from .yamlpos import Node, load_yaml, scalar_text_origin

TOP_KEYS = {
    "name",
    "summary",
    "paper",
    "parity",
    "notes",
    "extends",
    "hyperparameters",
    "inputs",
    "options",
    "state",
    "update",
    "update_replace",
    "claims",
    "gradient_at",
    "tex",
    "step",
    "modes",
}
STEP_COUNTS = ("per_tensor", "per_group")  # `step:` how `step` is counted
# the param group keys a generated class sets besides its hyperparameters and group states
GROUP_KEYS = frozenset({"params", "maximize", "foreach", "fused", "state_dtype", "train_mode", "differentiable"})
HYPER_KEYS = {"default", "range", "tex", "names", "captured", "doc", "tensor", "none"}
TENSOR_RULES = ("accept", "not_with_foreach")  # a hyperparameter given as a 1-element tensor
STATE_KEYS = {"init", "scope", "tex", "when", "key", "doc", "shape", "ndim"}
INPUT_KEYS = {"tex", "doc"}
OPTION_KEYS = {"default", "doc"}
MAX_SOURCE = 200_000
MAX_EXPONENT = 64
MAX_INT = 10**15


# --------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Program text plus, for each of its lines, where that line starts in a file."""

    text: str
    origins: list[Loc]

    def loc(self, lineno: int, col: int) -> Loc:
        origin = self.origins[min(max(lineno, 1), len(self.origins)) - 1]
        return Loc(origin.file, origin.line, origin.col + col)


def source_of(node: Node) -> Source:
    text = node.value
    line, col = scalar_text_origin(node)
    n = max(1, text.count("\n") + 1)
    if node.style in ("|", ">"):
        return Source(text, [Loc(node.loc.file, line + i, col) for i in range(n)])
    return Source(text, [Loc(node.loc.file, line, col)] + [Loc(node.loc.file, line + i, 1) for i in range(1, n)])


# --------------------------------------------------------------------------- helpers
def _expect(node: Node, kind, what: str):
    if not isinstance(node.value, kind) or (kind in (int, float, (int, float)) and isinstance(node.value, bool)):
        raise SpecError(node.loc, f"expected {what}, got {_describe(node.value)}")
    return node.value


def _describe(value) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text {value!r}" if len(value) < 40 else "text"
    return f"{type(value).__name__} {value!r}"


def _text(node: Node | None, what: str) -> str:
    if node is None:
        return ""
    return _expect(node, str, what)


def _check_keys(node: Node, allowed: set[str], where: str) -> None:
    known = ", ".join(sorted(allowed))
    errors = []
    for key, key_loc in (node.key_locs or {}).items():
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            rest = f"{hint} (expected one of: {known})" if hint else f"; expected one of: {known}"
            errors.append(SpecError(key_loc, f"unknown key {key!r} in {where}{rest}"))
    if errors:
        raise SpecErrors.of(errors)


def did_you_mean(name: str, candidates) -> str:
    """`; did you mean `exp_avg`?` for a misspelled name, or nothing."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return f"; did you mean `{close[0]}`?" if close else ""


class Collector:
    """The independent errors of one spec, so that a run reports them all: each `with
    collector.each():` block is one independent thing (a hyperparameter, a state, a line of
    the update); an error in it ends that block only."""

    def __init__(self):
        self.errors: list[SpecError] = []

    @contextmanager
    def each(self):
        try:
            yield
        except SpecError as exc:
            self.errors.append(exc)

    def add(self, error: SpecError) -> None:
        self.errors.append(error)

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecErrors.of(self.errors)


def _check_name(name: str, loc: Loc, what: str) -> None:
    problem = name_problem(name)
    if problem:
        raise SpecError(loc, f"{what}: {problem}")


# YAML 1.1 (PyYAML) reads `1e-3` as text: a float needs a dot there. A numeral is a number
# wherever a number is expected.
_NUMERAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def number_value(value):
    """`value` as an int or float when it is one or is written as a numeral (`1e-3`),
    else None. Booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and _NUMERAL.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    return None


def _number(node: Node, what: str) -> float:
    value = number_value(node.value)
    if value is None:
        raise SpecError(node.loc, f"expected a number for {what}, got {_describe(node.value)}")
    if not math.isfinite(value):
        raise SpecError(node.loc, f"{what} must be finite")
    return float(value)


_RANGE = re.compile(
    r"^\s*([\[(])\s*(-?inf|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*,"
    r"\s*(-?inf|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([\])])\s*$"
)


def parse_range(node: Node) -> Interval:
    text = _expect(node, str, 'a range such as "(0, inf)" or "[0, 1)"')
    m = _RANGE.match(text)
    if not m:
        raise SpecError(node.loc, f'bad range {text!r}: expected an interval such as "(0, inf)" or "[0, 1)"')
    lo, hi = float(m.group(2)), float(m.group(3))  # the regex admits only numerals and inf
    if lo > hi:
        raise SpecError(node.loc, f"bad range {text!r}: lower bound above upper bound")
    return Interval(lo, hi, m.group(1) == "(", m.group(4) == ")")


def assumptions_for(interval: Interval) -> dict:
    if interval.lo > 0 or (interval.lo == 0 and interval.lo_open):
        return {"positive": True}
    if interval.lo >= 0:
        return {"nonnegative": True}
    return {}


# --------------------------------------------------------------------------- extends
def _merge(parent: Node, child: Node) -> Node:
    """The child's keys override the parent's; hyperparameters/options/state merge by entry."""
    merged = dict(parent.value)
    key_locs = dict(parent.key_locs or {})
    for key, value in child.value.items():
        if key == "extends":
            continue
        key_locs[key] = child.key_locs[key]
        if (
            key in ("hyperparameters", "inputs", "options", "state", "tex")
            and key in merged
            and isinstance(value.value, dict)
        ):
            base = merged[key]
            entries = dict(base.value) if isinstance(base.value, dict) else {}
            entry_locs = dict(base.key_locs or {})
            for name, entry in value.value.items():
                if entry.value is None:
                    entries.pop(name, None)
                    entry_locs.pop(name, None)
                else:
                    entries[name] = entry
                    entry_locs[name] = value.key_locs[name]
            merged[key] = Node(entries, value.loc, key_locs=entry_locs)
        elif key == "update":
            merged.pop("update_replace", None)
            merged[key] = value
        else:
            merged[key] = value
    merged.pop("extends", None)
    if "claims" not in child.value:
        merged.pop("claims", None)  # the parent's claims name the parent's states and values
    return Node(merged, child.loc, key_locs=key_locs)


_CATALOG_NAME = re.compile(r"^(forms/)?[A-Za-z0-9_]+$")


def _resolve_parent(extends: Node, here: Path | None) -> Path:
    """A catalog name (`adam`, `forms/adam_textbook`) or a spec file in the extending spec's
    own folder (`base.yaml`): never a path elsewhere, so a spec cannot read other files."""
    name = _expect(extends, str, "a catalog name or the file name of a spec beside this one for `extends`")
    if name.endswith((".yaml", ".yml")):
        if here is None:
            raise SpecError(extends.loc, f"`extends: {name}`: a spec given as text can extend only catalog names")
        if "/" in name or "\\" in name or name.startswith("."):
            raise SpecError(extends.loc, f"`extends: {name}`: expected the name of a spec file in the same folder")
        folder = here.parent.resolve()
        path = (here.parent / name).resolve()
        if path.parent != folder:
            raise SpecError(extends.loc, f"`extends: {name}`: the file links outside this spec's folder")
        if not path.is_file():
            raise SpecError(extends.loc, f"`extends: {name}`: no such spec file in {folder}")
        return path
    path = None
    if _CATALOG_NAME.match(name):
        path = catalog.path_of(name) if "/" not in name else catalog.specs_dir() / f"{name.lower()}.yaml"
    if path is None or not path.is_file():
        raise SpecError(
            extends.loc, f"`extends: {name}`: no catalog spec named {name!r}; known: {', '.join(catalog.names())}"
        )
    return path


def _load_tree(text: str, file: str, path: Path | None, chain: tuple, texts: list[str]) -> tuple[Node, Source | None]:
    """The merged node tree of a spec and its ancestors, and its update source."""
    if len(text) > MAX_SOURCE:
        raise SpecError(Loc(file, 1, 1), f"spec is larger than {MAX_SOURCE} characters")
    texts.append(text)
    node = load_yaml(text, file)
    _check_keys(node, TOP_KEYS, "the spec")
    extends = node.value.get("extends")
    if extends is None:
        return node, _update_source(node, None)
    if len(chain) >= limits.MAX_EXTENDS:
        raise SpecError(extends.loc, f"`extends` chain is longer than {limits.MAX_EXTENDS} specs")
    parent_path = _resolve_parent(extends, path)
    if parent_path in chain:
        cycle = " -> ".join(p.name for p in (*chain, parent_path))
        raise SpecError(extends.loc, f"cyclic `extends`: {cycle}")
    try:
        parent_text = parent_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise SpecError(extends.loc, f"`extends`: cannot read {parent_path.name} as UTF-8 text") from None
    parent, parent_source = _load_tree(parent_text, str(parent_path), parent_path, (*chain, parent_path), texts)
    merged = _merge(parent, node)
    return merged, _update_source(node, parent_source)


def _update_source(node: Node, parent: Source | None) -> Source | None:
    own = node.value.get("update")
    if own is not None:
        _expect(own, str, "the update program as text (use `update: |`)")
        return source_of(own)
    replace = node.value.get("update_replace")
    if replace is None:
        return parent
    if parent is None:
        raise SpecError(replace.loc, "`update_replace` needs a parent spec with an `update` (`extends:`)")
    return _apply_replacements(parent, replace)


def _apply_replacements(parent: Source, replace: Node) -> Source:
    lines = parent.text.split("\n")
    origins = list(parent.origins)
    for item in _expect(replace, list, "a list of {old: ..., new: ...} for `update_replace`"):
        _expect(item, dict, "a mapping {old: ..., new: ...}")
        _check_keys(item, {"old", "new"}, "an update_replace entry")
        if "old" not in item.value or "new" not in item.value:
            raise SpecError(item.loc, "an update_replace entry needs both `old` and `new`")
        old = _expect(item.value["old"], str, "the line to replace").strip()
        new_node = item.value["new"]
        new = _expect(new_node, str, "the replacement line(s)")
        hits = [i for i, line in enumerate(lines) if line.strip() == old]
        if len(hits) != 1:
            found = "no line" if not hits else f"{len(hits)} lines"
            raise SpecError(item.value["old"].loc, f"update_replace: {found} of the parent's update reads {old!r}")
        i = hits[0]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        new_lines = [indent + l if l.strip() else l for l in new.strip("\n").split("\n")]
        new_origin = source_of(new_node).origins
        lines[i : i + 1] = new_lines
        origins[i : i + 1] = [
            Loc(o.file, o.line, max(1, o.col - len(indent)))
            for o in (new_origin + new_origin[-1:] * len(new_lines))[: len(new_lines)]
        ]
    return Source("\n".join(lines), origins)


# --------------------------------------------------------------------------- expressions
class ExprConverter:
    """Converts an `ast` expression to SymPy, resolving names against a symbol table."""

    def __init__(self, source: Source, symbols: dict[str, sympy.Symbol], options: set[str], context: str):
        self.source = source
        self.symbols = symbols
        self.options = options
        self.context = context
        # values that are not host scalars: operands `%` and `//` refuse
        self.tensor_names = {PARAM, GRAD, NUMEL_SYMBOL.name, NDIM_SYMBOL.name, ROWS_SYMBOL.name, COLS_SYMBOL.name}

    def loc(self, node: ast.AST) -> Loc:
        return self.source.loc(getattr(node, "lineno", 1), getattr(node, "col_offset", 0))

    def error(self, node: ast.AST, message: str) -> SpecError:
        return SpecError(self.loc(node), message)

    def convert(self, node: ast.AST, condition: bool = False) -> sympy.Basic:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.error(node, f"{_node_name(node)} is not allowed in {self.context}")
        result = method(node, condition) if method.__code__.co_argcount == 3 else method(node)
        if isinstance(result, sympy.Expr) and (
            result.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) or result.has(sympy.I)
        ):
            raise self.error(node, f"this expression is not a finite real number ({_short(result)})")
        problem = limits.constant_problem(result)
        if problem:
            raise self.error(node, problem)
        return result

    def _Constant(self, node: ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(node, f"expected a number, got {value!r}")
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise self.error(node, f"integer {value} is too large")
            return sympy.Integer(value)
        if not math.isfinite(value):
            raise self.error(node, "numbers must be finite")
        frac = Fraction(repr(value))  # the decimal as written, exact
        return sympy.Rational(frac.numerator, frac.denominator)

    def _Name(self, node: ast.Name):
        name = node.id
        if name in self.options:
            raise self.error(node, f"option `{name}` is a compile-time switch; use it in an `if`, not in an expression")
        if name in FUNCTIONS:
            raise self.error(node, f"`{name}` is a function; call it as {name}(...)")
        if name not in self.symbols:
            hint = did_you_mean(name, [*self.symbols, *FUNCTIONS])
            raise self.error(
                node,
                f"unknown name `{name}`{hint or '; expected a hyperparameter, a state, a value assigned in the update, or param/grad/step'}",
            )
        return self.symbols[name]

    def _BinOp(self, node: ast.BinOp):
        left, right = self.convert(node.left), self.convert(node.right)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            if right == 0:
                raise self.error(node, "division by zero")
            return left / right
        if op in (ast.Mod, ast.FloorDiv):
            return self._integer_op(node, op, left, right)
        if op is ast.MatMult:
            return MatrixProduct(left, right)
        if op is ast.Pow:
            if right.is_Number and abs(right) > MAX_EXPONENT:
                raise self.error(node, f"exponent {right} is too large (at most {MAX_EXPONENT})")
            problem = limits.power_problem(left, right)
            if problem:
                raise self.error(node, problem)
            if left == 0 and right.is_Number and right <= 0:
                raise self.error(node, "zero to a non-positive power")
            return left**right
        raise self.error(node, f"operator {_OPS.get(op, op.__name__)} is not allowed; expected + - * / ** % // @")

    def _integer_op(self, node: ast.BinOp, op, left, right):
        """`%` and `//` (floored, as Python's) for every-k schedules: `step % k == 0`. Host
        arithmetic only: their operands may read hyperparameters, `step` and constants (a
        value assigned in the update is checked when the program is lowered)."""
        sign = _OPS[op]
        for side, value in (("left", left), ("right", right)):
            tensors = sorted(s.name for s in value.free_symbols if s.name in self.tensor_names)
            if tensors:
                raise self.error(
                    node,
                    f"`{sign}` takes host values (hyperparameters, step, numbers); its {side} operand reads `{tensors[0]}`",
                )
        if right == 0:
            raise self.error(node, f"`{sign}` by zero")
        return sympy.Mod(left, right) if op is ast.Mod else sympy.floor(left / right)

    def _Attribute(self, node: ast.Attribute):
        """`A.T` is transpose(A); no other attribute exists."""
        if node.attr != "T":
            raise self.error(node, f"attribute `.{node.attr}` is not allowed; the only attribute is `.T` (transpose)")
        return Transposed(self.convert(node.value))

    def _matrix_call(self, node: ast.Call, name: str):
        """matmul(A, B), transpose(A), bfloat16(A) and the shape queries rows(param), cols(param)."""
        arity = {"matmul": 2, "transpose": 1}.get(name, 1)
        if node.keywords or len(node.args) != arity:
            raise self.error(node, f"{name}() takes {arity} positional argument{'s' if arity > 1 else ''}")
        if name in SHAPE_QUERIES:
            arg = node.args[0]
            if not (isinstance(arg, ast.Name) and arg.id in (PARAM, GRAD)):
                raise self.error(arg, f"{name}() takes `param` (the tensor whose matrix view it measures)")
            return SHAPE_QUERIES[name]
        args = [self.convert(a) for a in node.args]
        if name == "bfloat16":
            return BFloat16(*args)
        return MatrixProduct(*args) if name == "matmul" else Transposed(*args)

    def _UnaryOp(self, node: ast.UnaryOp, condition: bool):
        if isinstance(node.op, ast.USub):
            return -self.convert(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.convert(node.operand)
        if isinstance(node.op, ast.Not) and condition:
            return sympy.Not(self.convert(node.operand, condition=True))
        raise self.error(node, f"operator {_OPS.get(type(node.op), type(node.op).__name__)} is not allowed here")

    def _Compare(self, node: ast.Compare, condition: bool):
        if not condition:
            raise self.error(node, "a comparison is allowed only as the condition of where(...)")
        if len(node.ops) != 1:
            raise self.error(node, "chained comparisons are not allowed; use `and`")
        left, right = self.convert(node.left), self.convert(node.comparators[0])
        rel = _RELATIONS.get(type(node.ops[0]))
        if rel is None:
            raise self.error(node, "expected one of < <= > >= == !=")
        return rel(left, right)

    def _BoolOp(self, node: ast.BoolOp, condition: bool):
        if not condition:
            raise self.error(node, "`and`/`or` are allowed only in the condition of where(...)")
        parts = [self.convert(v, condition=True) for v in node.values]
        return sympy.And(*parts) if isinstance(node.op, ast.And) else sympy.Or(*parts)

    def _Call(self, node: ast.Call):
        if not isinstance(node.func, ast.Name):
            raise self.error(
                node, f"{_node_name(node.func)} cannot be called; expected a built-in function such as sqrt(x)"
            )
        name = node.func.id
        if name in MATRIX_FUNC_NAMES:
            return self._matrix_call(node, name)
        if name not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            hint = did_you_mean(name, FUNCTIONS)
            raise self.error(node.func, f"unknown function `{name}`{hint or '; expected one of: ' + known}")
        if node.keywords and name in AXIS_REDUCTIONS and name in REDUCTION_FUNCS:
            return self._axis_reduction(node, name)
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.error(node, f"{name}() takes positional arguments only")
        lo, hi = ELEMENTWISE_FUNCS.get(name) or (
            (REDUCTION_FUNCS.get(name),) * 2 if name in REDUCTION_FUNCS else (1, 1)
        )
        if not lo <= len(node.args) <= hi:
            raise self.error(node, f"{name}() takes {lo} argument{'s' if lo > 1 else ''}, got {len(node.args)}")
        if name in TENSOR_SHAPE_FUNCS:
            arg = node.args[0]
            if not (isinstance(arg, ast.Name) and arg.id in (PARAM, GRAD)):
                raise self.error(arg, f"{name}() takes `param` (the tensor whose {name} it is)")
            return {"numel": NUMEL_SYMBOL, "ndim": NDIM_SYMBOL, "rows": ROWS_SYMBOL, "cols": COLS_SYMBOL}[name]
        if name == "where":
            cond = self.convert(node.args[0], condition=True)
            a, b = self.convert(node.args[1]), self.convert(node.args[2])
            if cond is sympy.true:
                return a
            if cond is sympy.false:
                return b
            if not isinstance(cond, (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)):
                raise self.error(node.args[0], "the condition of where(...) must be a comparison")
            return sympy.Piecewise((a, cond), (b, True))
        args = [self.convert(a) for a in node.args]
        if name in REDUCTION_FUNCS and not args[0].free_symbols:
            raise self.error(node, f"{name}() of a constant: a reduction takes a per-element value")
        return _FUNC_BUILDERS[name](*args)

    def _axis_reduction(self, node: ast.Call, name: str):
        """`mean(x, axis=-1)`, `sum(x, axis=(-2, -1))`: a keepdim reduction over trailing axes
        (optgen/shapes.py). Axes count from the end (negative): one spec serves tensors of
        every rank, and torch.optim.Adafactor factors the last two dims of each."""
        if len(node.args) != 1 or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.error(node, f"{name}(x, axis=...) takes one positional argument")
        if len(node.keywords) != 1 or node.keywords[0].arg != "axis":
            raise self.error(node, f"{name}() takes one keyword, `axis=`")
        axis_node = node.keywords[0].value
        items = axis_node.elts if isinstance(axis_node, ast.Tuple) else [axis_node]
        axes = []
        for item in items:
            value = _literal_int(item)
            if value is None or value >= 0 or value < -MAX_AXIS:
                raise self.error(
                    item, f"an axis is a negative integer from -1 (the last dim) to -{MAX_AXIS}, counted from the end"
                )
            if value in axes:
                raise self.error(item, f"axis {value} is given twice")
            axes.append(value)
        if not axes:
            raise self.error(axis_node, "axis=() reduces nothing; give at least one axis")
        arg = self.convert(node.args[0])
        if not arg.free_symbols:
            raise self.error(node, f"{name}() of a constant: a reduction takes a per-element value")
        return AXIS_REDUCTIONS[name](arg, sympy.Tuple(*sorted(axes)))


def _literal_int(node: ast.AST) -> int | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal_int(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


MAX_AXIS = 8
_RANK_RELATIONS = {">=": sympy.Ge, "<=": sympy.Le, "==": sympy.Eq, ">": sympy.Gt, "<": sympy.Lt}


def _short(expr) -> str:
    text = str(expr)
    return text if len(text) < 60 else text[:57] + "..."


def _node_name(node: ast.AST) -> str:
    names = {
        "Attribute": "attribute access (a.b)",
        "Subscript": "indexing (a[i])",
        "Lambda": "a lambda",
        "IfExp": "a conditional expression (use where(c, a, b))",
        "JoinedStr": "an f-string",
        "List": "a list",
        "Tuple": "a tuple",
        "Dict": "a dict",
        "Set": "a set",
        "ListComp": "a comprehension",
        "GeneratorExp": "a generator",
        "DictComp": "a comprehension",
        "SetComp": "a comprehension",
        "Await": "await",
        "Yield": "yield",
        "YieldFrom": "yield",
        "NamedExpr": "an assignment expression (:=)",
        "Starred": "a starred expression",
        "Slice": "a slice",
        "Compare": "a comparison",
        "BoolOp": "and/or",
    }
    return names.get(type(node).__name__, f"`{type(node).__name__}`")


_OPS = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Invert: "~",
    ast.Not: "not",
}
_RELATIONS = {
    ast.Lt: sympy.Lt,
    ast.LtE: sympy.Le,
    ast.Gt: sympy.Gt,
    ast.GtE: sympy.Ge,
    ast.Eq: sympy.Eq,
    ast.NotEq: sympy.Ne,
}
_FUNC_BUILDERS = {
    "sqrt": sympy.sqrt,
    "abs": sympy.Abs,
    "sign": sympy.sign,
    "exp": sympy.exp,
    "log": sympy.log,
    "maximum": sympy.Max,
    "minimum": sympy.Min,
    "clamp": lambda x, lo, hi: sympy.Min(sympy.Max(x, lo), hi),
    "sum": ReduceSum,
    "mean": lambda x: ReduceSum(x) / NUMEL_SYMBOL,
    "norm": lambda x: sympy.sqrt(ReduceSum(x**2)),
    "amin": ReduceMin,
    "amax": ReduceMax,
    "global_norm": lambda x: sympy.sqrt(GlobalSum(x**2)),
    "global_sum": GlobalSum,
}


def parse_python(source: Source, mode: str, what: str) -> ast.AST:
    try:
        tree = ast.parse(source.text, mode=mode)
    except SyntaxError as exc:
        loc = source.loc(exc.lineno or 1, max((exc.offset or 1) - 1, 0))
        raise SpecError(loc, f"syntax error in {what}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise SpecError(source.origins[0], f"cannot parse {what}: {type(exc).__name__}") from None
    problem = limits.tree_problem(tree, source.text)
    if problem:
        node, message = problem
        raise SpecError(source.loc(getattr(node, "lineno", 1), getattr(node, "col_offset", 0)), message)
    return tree


# --------------------------------------------------------------------------- update program
class UpdateParser:
    """The update program: statements, option conditions, SymPy expressions."""

    def __init__(
        self,
        source: Source,
        spec_names: dict,
        options: set[str],
        states: set[str],
        errors: Collector | None = None,
        inputs: set[str] = frozenset(),
    ):
        self.source = source
        self.options = options
        self.states = states
        self.inputs = inputs
        self.hyper_names = spec_names
        self.symbols: dict[str, sympy.Symbol] = {}
        self.owns_errors = errors is None
        self.errors = errors or Collector()  # one error per statement, raised together
        self.unassignable: set[int] = set()  # statements whose target is not a single name

    def parse(self, symbols: dict[str, sympy.Symbol]) -> list:
        tree = parse_python(self.source, "exec", "the update program")
        self.size = limits.program_size(tree)
        self.symbols = symbols
        self._declare_targets(tree.body)
        self.expr = ExprConverter(self.source, symbols, self.options, "the update program")
        self.expr.tensor_names |= self.states | self.inputs
        program = self._block(tree.body)
        if self.owns_errors:
            self.errors.raise_if_any()
        return program

    def _declare_targets(self, body) -> None:
        """Every assigned name is known before any line is converted, also when its line
        has an error, so that a use elsewhere is not reported as unknown."""
        for stmt in body:
            if isinstance(stmt, (ast.Assign, ast.AugAssign)):
                with self.errors.each():
                    self.unassignable.add(id(stmt))
                    node = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
                    if isinstance(stmt, ast.Assign) and (len(stmt.targets) != 1):
                        raise SpecError(
                            self.source.loc(stmt.lineno, stmt.col_offset),
                            "chained assignment (a = b = ...) is not allowed",
                        )
                    if not isinstance(node, ast.Name):
                        raise SpecError(
                            self.source.loc(node.lineno, node.col_offset),
                            f"cannot assign to {_node_name(node)}; expected a name",
                        )
                    self.unassignable.discard(id(stmt))
                    self.symbols.setdefault(node.id, symbol(node.id))
                    self._check_target(node)
            elif isinstance(stmt, ast.If):
                self._declare_targets(stmt.body)
                self._declare_targets(stmt.orelse)
            elif isinstance(stmt, ast.For):
                self._declare_targets(stmt.body)

    def _check_target(self, node: ast.Name) -> None:
        name, loc = node.id, self.source.loc(node.lineno, node.col_offset)
        if name in (PARAM, GRAD) or name in self.states:
            return
        if name == STEP:
            raise SpecError(loc, "`step` is the step count and cannot be assigned")
        if name in self.inputs:
            raise SpecError(
                loc, f"`{name}` is an input of step() and cannot be assigned; name the new value differently"
            )
        if name in self.hyper_names:
            raise SpecError(loc, f"`{name}` is a hyperparameter and cannot be assigned; name the new value differently")
        if name in self.options:
            raise SpecError(loc, f"`{name}` is an option and cannot be assigned")
        problem = name_problem(name)
        if problem:
            raise SpecError(loc, f"bad name for a value: {problem}")

    def _block(self, body) -> list:
        out = []
        for stmt in body:
            if id(stmt) in self.unassignable:
                continue  # reported by _declare_targets
            with self.errors.each():
                self._statement(stmt, out)
        return out

    def _statement(self, stmt: ast.stmt, out: list) -> None:
        loc = self.source.loc(stmt.lineno, stmt.col_offset)
        if isinstance(stmt, ast.Assign):
            target = stmt.targets[0]
            out.append(Assign(target.id, self.expr.convert(stmt.value), loc, loc))
        elif isinstance(stmt, ast.AugAssign):
            rhs = self.expr.convert(stmt.value)
            current = self.symbols[stmt.target.id]
            ops = {
                ast.Add: lambda a, b: a + b,
                ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b,
                ast.Div: lambda a, b: a / b,
            }
            op = ops.get(type(stmt.op))
            if op is None:
                raise SpecError(
                    loc, f"augmented operator {_OPS.get(type(stmt.op), '?')}= is not allowed; expected += -= *= /="
                )
            out.append(Assign(stmt.target.id, op(current, rhs), loc, loc))
        elif isinstance(stmt, ast.If) and _is_rank_test(stmt.test):
            cond = self.rank_condition(stmt.test)
            out.append(TensorIf(cond, self._block(stmt.body), self._block(stmt.orelse), loc))
        elif isinstance(stmt, ast.If):
            cond = None
            with self.errors.each():
                cond = self.condition(stmt.test)
            body, orelse = self._block(stmt.body), self._block(stmt.orelse)  # their own errors too
            if cond is not None:
                out.append(If(cond, body, orelse, loc))
        elif isinstance(stmt, ast.For):
            out.append(self.loop(stmt, loc))
        elif isinstance(stmt, ast.Pass):
            return
        else:
            raise SpecError(
                loc,
                f"{_statement_name(stmt)} is not allowed in the update; expected `name = expression` or `if option:`",
            )

    def loop(self, stmt: ast.For, loc: Loc) -> Repeat:
        """`for _ in range(count):` a bounded loop; the count is checked when the program is
        lowered (an integer, or an integer hyperparameter with a bounded range)."""
        it = stmt.iter
        if not (isinstance(stmt.target, ast.Name) and stmt.target.id == "_"):
            raise SpecError(loc, "a loop is written `for _ in range(count):`; its index cannot be read")
        if stmt.orelse or not (
            isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and len(it.args) == 1
        ):
            raise SpecError(loc, "a loop is written `for _ in range(count):` with one count")
        if it.keywords:
            raise SpecError(loc, "range() takes one positional count")
        count = self.expr.convert(it.args[0])
        body = self._block(stmt.body)
        for inner in body:
            if isinstance(inner, Repeat):
                raise SpecError(inner.loc, "loops do not nest")
        return Repeat(count, body, loc)

    def rank_condition(self, node: ast.AST):
        """`ndim(param) >= 2` (comparisons of ndim(param) with integers, and/or/not): a
        per-tensor rule, checked to be one (optgen/shapes.py)."""
        cond = self.expr.convert(node, condition=True)
        try:
            ranks = shapes.guard_of(cond)
        except ValueError:
            raise SpecError(
                self.source.loc(node.lineno, node.col_offset),
                "a per-tensor `if` compares ndim(param) with integers (`if ndim(param) >= 2:`)",
            ) from None
        if not ranks or ranks == shapes.ALL_RANKS:
            raise SpecError(
                self.source.loc(node.lineno, node.col_offset),
                f"this condition is {'never' if not ranks else 'always'} true; drop the `if`",
            )
        return cond

    def condition(self, node: ast.AST):
        loc = self.source.loc(node.lineno, node.col_offset)
        if isinstance(node, ast.Name):
            if node.id not in self.options:
                hint = did_you_mean(node.id, self.options)
                raise SpecError(
                    loc,
                    f"`if` takes an option (compile-time switch); `{node.id}` is not one{hint} (options: {', '.join(sorted(self.options)) or 'none'}). For a run-time choice use where(cond, a, b)",
                )
            return node.id
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", self.condition(node.operand))
        if isinstance(node, ast.BoolOp):
            return ("and" if isinstance(node.op, ast.And) else "or", [self.condition(v) for v in node.values])
        raise SpecError(loc, "an `if` condition must be an option, or not/and/or of options")


def _is_rank_test(node: ast.AST) -> bool:
    """An `if` condition that reads ndim(...): a per-tensor rule, not an option test."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "ndim" for n in ast.walk(node))


def _statement_name(stmt: ast.stmt) -> str:
    return {
        "Expr": "a bare expression",
        "For": "a for loop",
        "While": "a while loop",
        "Import": "import",
        "ImportFrom": "import",
        "FunctionDef": "a function definition",
        "Return": "return",
        "Delete": "del",
        "With": "with",
        "Try": "try",
        "Raise": "raise",
        "Global": "global",
        "Nonlocal": "nonlocal",
        "ClassDef": "a class definition",
        "AnnAssign": "an annotated assignment",
        "Assert": "assert",
        "Match": "match",
    }.get(type(stmt).__name__, type(stmt).__name__)


# --------------------------------------------------------------------------- the spec
TEXT_FIELDS = {
    "summary": "a one-line summary",
    "paper": "a citation",
    "parity": "the parity reference, e.g. torch.optim.Adam",
    "notes": "notes as text",
}


def _assigned(statements: list) -> set[str]:
    out = set()
    for stmt in statements:
        if isinstance(stmt, (If, TensorIf)):
            out |= _assigned(stmt.body) | _assigned(stmt.orelse)
        elif isinstance(stmt, Repeat):
            out |= _assigned(stmt.body)
        else:
            out.add(stmt.target)
    return out


class SpecBuilder:
    def __init__(self, root: Node, update_source: Source | None, path: Path | None, texts: list[str]):
        self.root = root
        self.top = root.value
        self.update_source = update_source
        self.path = path
        self.texts = texts
        self.symbols: dict[str, sympy.Symbol] = {}
        self.tex: dict[str, str] = {}
        self.locations: dict[str, Loc] = {}
        self.errors = Collector()
        self.state_names: set[str] = set()
        self.input_names: set[str] = set()

    def build(self) -> Spec:
        """The Spec, or every independent error of it at once (SpecErrors): each
        hyperparameter, option, state and line of the update is checked on its own, and a
        name whose declaration has an error is still known to the rest (no cascades)."""
        errors = self.errors
        name = None
        with errors.each():
            name_node = self.required("name", "the optimizer's class name")
            name = _expect(name_node, str, "a class name")
            if not name.isidentifier() or not name.isascii() or not name[0].isupper():
                raise SpecError(
                    name_node.loc,
                    f"name {name!r}: expected a class name (an identifier starting with a capital letter)",
                )
        hypers = self.hyperparameters()
        options = self.options()
        self.symbols[STEP] = STEP_SYMBOL
        self.symbols[PARAM] = symbol(PARAM)
        self.symbols[GRAD] = symbol(GRAD)
        inputs = self.inputs()
        states = self.states(options)
        update = None  # stays None when the program cannot be parsed at all
        with errors.each():
            if self.update_source is None:
                raise SpecError(self.root.loc, "missing key `update`: the update program")
            parser = UpdateParser(
                self.update_source, self.scalar_names, set(options), self.state_names, errors, self.input_names
            )
            update = parser.parse(self.symbols)
            over = limits.option_over_budget(len(options), parser.size)
            if over is not None:
                raise SpecError(
                    list(options.values())[over].loc,
                    f"too many options for an update this large: {len(options)} options are {2 ** len(options)} "
                    f"specialisations of {parser.size} syntax nodes each, at most {limits.MAX_WORK} in all",
                )
        modes = None
        with errors.each():
            hyper_names = {n for h in hypers.values() for n in h.names}
            modes = parse_modes(self, self.top.get("modes"), states, hyper_names)
        gradient_at = None
        with errors.each():
            if "gradient_at" in self.top:
                gradient_at = self.point_expr(self.top["gradient_at"], set(states))
        claims = self.top.get("claims")
        with errors.each():
            if claims is not None:
                _expect(claims, list, "a list of claims")
        for key, what in TEXT_FIELDS.items():
            with errors.each():
                _text(self.top.get(key), what)
        if update is not None:  # else which values it assigns is unknown: no second error
            self.value_tex(update)
        errors.raise_if_any()
        return Spec(
            name=name,
            **{key: _text(self.top.get(key), what) for key, what in TEXT_FIELDS.items()},
            hyperparameters=hypers,
            options=options,
            state=states,
            update=update,
            symbols=self.symbols,
            path=self.path,
            loc=self.root.loc,
            claims=claims.value if claims is not None else [],
            tex_symbols=self.tex,
            locations=self.locations,
            source_texts=self.texts,
            gradient_at=gradient_at,
            **self.step_count(hypers, states),
            inputs=inputs,
            modes=modes,
        )

    def value_tex(self, update: list) -> None:
        """The top-level `tex:` map: LaTeX for values the update assigns (bias_correction1:
        'c_1'), checked like every tex field. Hyperparameters and states take theirs in
        their declarations."""
        entries = {}
        with self.errors.each():
            entries = self.entries("tex")
        assigned = _assigned(update) - {PARAM, GRAD}
        section = self.top.get("tex")
        for name, node in entries.items():
            with self.errors.each():
                loc = section.key_locs[name]
                if name in self.state_names | self.input_names or name in self.scalar_names - assigned:
                    kinds = {**dict.fromkeys(self.input_names, "input"), **dict.fromkeys(self.state_names, "state")}
                    what = kinds.get(name, "hyperparameter")
                    article = "an" if what == "input" else "a"
                    raise SpecError(loc, f"`{name}` is {article} {what}: give its tex in its declaration")
                if name not in assigned and loc.file != self.root.loc.file:
                    continue  # a parent's value that this spec's own update no longer has
                if name not in assigned:
                    hint = did_you_mean(name, assigned)
                    raise SpecError(loc, f"`tex:` names `{name}`, which the update never assigns{hint}")
                _expect(node, str, f"LaTeX for `{name}`")
                self.tex_field(node, name)

    def step_count(self, hyperparameters: dict, states: dict) -> dict[str, str]:
        """`step: per_tensor` (default, as torch.optim: a tensor's own number of updates),
        `per_group` (pytorch_optimizer: group["step"], the group's number of step() calls), or
        `{count: per_group, key: k}`: the group's count kept under another param group key,
        the one the reference package uses (schedulefree's group["k"])."""
        node = self.top.get("step")
        if node is None:
            return {"step_count": "per_tensor"}
        if not isinstance(node.value, dict):
            count = _expect(node, str, f"one of {', '.join(STEP_COUNTS)}, or {{count: per_group, key: name}}")
            if count not in STEP_COUNTS:
                raise SpecError(node.loc, f"`step` must be one of {', '.join(STEP_COUNTS)}, not {count!r}")
            return {"step_count": count}
        _check_keys(node, ("count", "key"), "`step`")
        if set(node.value) != {"count", "key"} or node.value["count"].value != "per_group":
            raise SpecError(
                node.loc, "`step` as a mapping is {count: per_group, key: name}: a key names a group's count"
            )
        key_node = node.value["key"]
        key = _expect(key_node, str, "the param group key of the step count")
        if not key.isidentifier() or not key.isascii():
            raise SpecError(key_node.loc, f"step key {key!r} is not an identifier")
        taken = {n for h in hyperparameters.values() for n in (h.key, *h.names)}
        taken |= {st.key for st in states.values()} | GROUP_KEYS
        if key in taken:
            raise SpecError(key_node.loc, f"step key {key!r} is already a key of the param group")
        return {"step_count": "per_group", "step_key": key}

    def required(self, key: str, what: str) -> Node:
        if key not in self.top:
            raise SpecError(self.root.loc, f"missing key `{key}`: {what}")
        return self.top[key]

    def declare(self, name: str, loc: Loc, what: str) -> None:
        _check_name(name, loc, f"bad {what} name")
        if name in self.locations:
            first = self.locations[name]
            raise SpecError(loc, f"duplicate name `{name}`: already declared at line {first.line}")
        self.locations[name] = loc

    def tex_field(self, node: Node | None, name: str) -> None:
        if node is None:
            return
        problem = tex_problem(node.value)
        if problem:
            raise SpecError(node.loc, f"tex for `{name}`: {problem}")
        self.tex[name] = node.value

    def entries(self, key: str) -> dict[str, Node]:
        node = self.top.get(key)
        if node is None:
            return {}
        if node.value is None:
            return {}
        _expect(node, dict, f"a mapping under `{key}`")
        return node.value

    def hyperparameters(self) -> dict[str, Hyperparameter]:
        out = {}
        section = self.top.get("hyperparameters")
        entries = {}
        with self.errors.each():
            entries = self.entries("hyperparameters")
        for key, node in entries.items():
            key_loc = section.key_locs[key]
            with self.errors.each():
                try:
                    _expect(node, dict, f"a mapping for hyperparameter `{key}` (default, range, tex)")
                    _check_keys(node, HYPER_KEYS, f"hyperparameter `{key}`")
                    out[key] = self.hyperparameter(key, key_loc, node.value)
                except SpecError:
                    self.poison(key, node)
                    raise
        return out

    def poison(self, key: str, node: Node) -> None:
        """A hyperparameter with an error still names its values, so that their uses are
        not reported as unknown as well."""
        names = node.value.get("names") if isinstance(node.value, dict) else None
        listed = [n.value for n in names.value] if names is not None and isinstance(names.value, list) else [key]
        for n in listed:
            if isinstance(n, str) and n not in self.symbols:
                self.symbols[n] = symbol(n)

    def default_component(self, node: Node, key: str, fields: dict[str, Node], what: str) -> float | None:
        """A default value; null (None) where `none: dtype_eps` says what None means: the
        machine epsilon of the parameters' dtype, resolved at each step (torch.optim.Adafactor's
        eps1=None)."""
        if node.value is None and "none" in fields:
            if fields["none"].value != "dtype_eps":
                raise SpecError(fields["none"].loc, f"`none` of `{key}`: the one meaning of None is `dtype_eps`")
            return None
        return _number(node, what)

    def hyperparameter(self, key: str, loc: Loc, fields: dict[str, Node]) -> Hyperparameter:
        _check_name(key, loc, "bad hyperparameter name")
        interval = parse_range(fields["range"]) if "range" in fields else Interval(-math.inf, math.inf, True, True)
        captured = None
        if "captured" in fields:
            captured = _expect(fields["captured"], str, "the hyperparameter it is captured from")
            if "default" in fields:
                raise SpecError(fields["default"].loc, f"`{key}` is captured from `{captured}`; it takes no default")
            defaults: list[float] = [math.nan]
            names = [key]
        else:
            if "default" not in fields:
                raise SpecError(loc, f"hyperparameter `{key}` needs a `default`")
            default = fields["default"]
            if isinstance(default.value, list):
                if "names" not in fields:
                    raise SpecError(default.loc, f"tuple hyperparameter `{key}` needs `names` for its components")
                defaults = [self.default_component(d, key, fields, f"a component of `{key}`") for d in default.value]
            else:
                defaults = [self.default_component(default, key, fields, f"the default of `{key}`")]
            names = [key]
            if "names" in fields:
                names_node = fields["names"]
                _expect(names_node, list, "a list of component names")
                names = [_expect(n, str, "a component name") for n in names_node.value]
                if len(names) != len(defaults):
                    raise SpecError(
                        names_node.loc, f"`{key}` has {len(defaults)} default value(s) but {len(names)} name(s)"
                    )
        if captured is None and "names" not in fields:
            self.declare(key, loc, "hyperparameter")
        else:
            if "names" in fields:
                self.declare_key(key, loc)
            for i, n in enumerate(names):
                where = fields["names"].value[i].loc if "names" in fields else loc
                self.declare(n, where, "hyperparameter")
        tex_node = fields.get("tex")
        tex = [None] * len(names)
        if tex_node is not None:
            items = tex_node.value if isinstance(tex_node.value, list) else [tex_node.value]
            if isinstance(tex_node.value, list) != (len(names) > 1 or "names" in fields) or len(items) != len(names):
                raise SpecError(tex_node.loc, f"`tex` of `{key}` must give one symbol per component ({len(names)})")
            for n, item in zip(names, tex_node.value if isinstance(tex_node.value, list) else [tex_node]):
                self.tex_field(item, n)
            tex = [self.tex[n] for n in names]
        for n in names:
            self.symbols[n] = symbol(n, **assumptions_for(interval))
        return Hyperparameter(
            key,
            names,
            tuple(defaults),
            interval,
            tex,
            loc,
            captured,
            _text(fields.get("doc"), "text"),
            self.tensor_rule(key, fields, captured is None and "names" not in fields),
            none="dtype_eps" if None in defaults else None,
        )

    def tensor_rule(self, key: str, fields: dict[str, Node], scalar_keyword: bool) -> str:
        """`tensor:` what a 1-element tensor value does (torch.optim.Adam's lr rule, or accept)."""
        node = fields.get("tensor")
        if node is None:
            return "accept"
        rule = _expect(node, str, f"one of {', '.join(TENSOR_RULES)}")
        if rule not in TENSOR_RULES:
            raise SpecError(node.loc, f"`tensor` of `{key}` must be one of {', '.join(TENSOR_RULES)}, not {rule!r}")
        if not scalar_keyword:
            raise SpecError(node.loc, f"`tensor` applies to a scalar constructor keyword; `{key}` is not one")
        return rule

    def declare_key(self, key: str, loc: Loc) -> None:
        _check_name(key, loc, "bad hyperparameter name")
        self.keys = getattr(self, "keys", {})
        if key in self.keys or key in self.locations:
            raise SpecError(loc, f"duplicate name `{key}`")
        self.keys[key] = loc

    @property
    def scalar_names(self) -> set[str]:
        return {n for n, s in self.symbols.items() if n not in (STEP, PARAM, GRAD) and n not in self.input_names}

    def options(self) -> dict[str, Option]:
        out = {}
        section = self.top.get("options")
        entries = {}
        with self.errors.each():
            entries = self.entries("options")
        for i, (key, node) in enumerate(entries.items()):
            if i == limits.MAX_OPTIONS:
                self.errors.add(
                    SpecError(
                        section.key_locs[key],
                        f"too many options: at most {limits.MAX_OPTIONS} (each is compiled both ways, "
                        f"{2**limits.MAX_OPTIONS} specialisations); make a numeric setting a hyperparameter",
                    )
                )
                break
            with self.errors.each():
                out[key] = Option(key, False, section.key_locs[key])  # known even if it has an error
                out[key] = self.option(key, section.key_locs[key], node)
        return out

    def option(self, key: str, loc: Loc, node: Node) -> Option:
        self.declare(key, loc, "option")
        doc = ""
        if isinstance(node.value, dict):
            _check_keys(node, OPTION_KEYS, f"option `{key}`")
            if "default" not in node.value:
                raise SpecError(node.loc, f"option `{key}` needs a `default` (true or false)")
            doc = _text(node.value.get("doc"), "text")
            node = node.value["default"]
        if not isinstance(node.value, bool):
            raise SpecError(
                node.loc,
                f"option `{key}` must be true or false (a compile-time switch); got {_describe(node.value)}. A numeric setting is a hyperparameter",
            )
        return Option(key, node.value, loc, doc)

    def inputs(self) -> dict[str, InputDecl]:
        """`inputs:` extra per-element values that step() takes as keywords (`hessian=`)."""
        out = {}
        section = self.top.get("inputs")
        entries = {}
        with self.errors.each():
            entries = self.entries("inputs")
        for i, (key, node) in enumerate(entries.items()):
            loc = section.key_locs[key]
            self.symbols[key] = symbol(key)  # known even if its declaration has an error
            self.input_names.add(key)
            with self.errors.each():
                if i == limits.MAX_INPUTS:
                    raise SpecError(loc, f"too many inputs: at most {limits.MAX_INPUTS}")
                self.declare(key, loc, "input")
                fields = {}
                if node.value is not None:
                    _expect(node, dict, f"a mapping for input `{key}` (tex, doc)")
                    _check_keys(node, INPUT_KEYS, f"input `{key}`")
                    fields = node.value
                self.tex_field(fields.get("tex"), key)
                out[key] = InputDecl(key, loc, self.tex.get(key), _text(fields.get("doc"), "text"))
        return out

    def states(self, options: dict[str, Option]) -> dict[str, StateDecl]:
        out = {}
        section = self.top.get("state")
        entries = {}
        with self.errors.each():
            entries = self.entries("state")
        self.state_names = set(entries)  # also those whose declaration has an error
        for key in entries:
            with self.errors.each():
                self.symbols[key] = symbol(key)
                self.declare(key, section.key_locs[key], "state")
        for key, node in entries.items():
            loc = section.key_locs[key]
            with self.errors.each():
                if not isinstance(node.value, dict):
                    raise SpecError(node.loc, f"expected a mapping for state `{key}` (init, scope, tex, when, key)")
                _check_keys(node, STATE_KEYS, f"state `{key}`")
                out[key] = self.state(key, loc, node.value, set(options))
        keys = [s.key for s in out.values()]
        for s in out.values():
            if keys.count(s.key) > 1 or s.key == "step":
                self.errors.add(
                    SpecError(s.loc, f"state key {s.key!r} is used twice (`step` is kept by the optimizer)")
                )
        return out

    def state(self, key: str, loc: Loc, fields: dict[str, Node], options: set[str]) -> StateDecl:
        init = sympy.Integer(0)
        if "init" in fields:
            init = self.init_expr(fields["init"], key)
        scope = "element"
        if "scope" in fields:
            scope = _expect(fields["scope"], str, "`element`, `tensor` or `group`")
            if scope not in ("element", "tensor", "group"):
                raise SpecError(fields["scope"].loc, f"scope must be `element`, `tensor` or `group`, got {scope!r}")
        when = None
        if "when" in fields:
            text = _expect(fields["when"], str, "an option, or `not option`")
            src = source_of(fields["when"])
            tree = parse_python(Source(text, src.origins), "eval", f"`when` of `{key}`")
            when = UpdateParser(src, set(), options, set()).condition(tree.body)
        state_key = key
        if "key" in fields:
            state_key = _expect(fields["key"], str, "the state-dict key")
            if not state_key.isidentifier():
                raise SpecError(fields["key"].loc, f"state key {state_key!r} is not an identifier")
        self.tex_field(fields.get("tex"), key)
        axes, ranks = self.state_shape(key, fields, scope)
        return StateDecl(key, init, scope, loc, state_key, self.tex.get(key), when, axes, ranks)

    def state_shape(self, key: str, fields: dict[str, Node], scope: str) -> tuple[frozenset, frozenset | None]:
        """`shape: {reduce: [-1]}` (the reduced trailing axes, keepdim) and `ndim: ">= 2"` (the
        ranks of the tensors that have the state); see optgen/shapes.py."""
        axes: set[int] = set()
        if "shape" in fields:
            node = fields["shape"]
            if not isinstance(node.value, dict) or set(node.value) != {"reduce"}:
                raise SpecError(node.loc, f"shape of `{key}`: expected {{reduce: [axis, ...]}}")
            items = node.value["reduce"]
            if not isinstance(items.value, list) or not items.value:
                raise SpecError(items.loc, f"shape of `{key}`: `reduce` takes a list of negative axes, e.g. [-1]")
            for item in items.value:
                value = item.value
                if isinstance(value, bool) or not isinstance(value, int) or not -MAX_AXIS <= value < 0 or value in axes:
                    raise SpecError(item.loc, f"shape of `{key}`: an axis is a distinct integer from -1 to -{MAX_AXIS}")
                axes.add(value)
            if scope != "element":
                raise SpecError(node.loc, f"state `{key}` is per tensor (scope: tensor) and cannot have a shape")
        ranks = None
        if "ndim" in fields:
            node = fields["ndim"]
            text = _expect(node, str, 'a comparison such as ">= 2"')
            match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(\d)\s*", text)
            if match is None:
                raise SpecError(node.loc, f'ndim of `{key}`: expected a comparison with a digit, such as ">= 2"')
            cond = _RANK_RELATIONS[match.group(1)](NDIM_SYMBOL, int(match.group(2)))
            ranks = shapes.guard_of(cond)
            if not ranks:
                raise SpecError(node.loc, f"ndim of `{key}`: no tensor has ndim {text}")
        if axes and (ranks or shapes.ALL_RANKS) & set(range(shapes.min_rank(axes))):
            raise SpecError(
                fields["shape"].loc,
                f"state `{key}` is reduced over axis {shapes.format_axes(axes)}, which a tensor of fewer than "
                f'{shapes.min_rank(axes)} dims lacks; declare `ndim: ">= {shapes.min_rank(axes)}"`',
            )
        return frozenset(axes), ranks

    def point_expr(self, node: Node, states: set[str]) -> sympy.Expr:
        """`gradient_at`: the point where the gradient is taken, from param, states and
        hyperparameters (the extrapolated point of Nesterov-style paper forms)."""
        _expect(node, str, "an expression for the point where the gradient is taken")
        src = source_of(node)
        tree = parse_python(src, "eval", "`gradient_at`")
        allowed = {n: s for n, s in self.symbols.items() if n != GRAD and n not in self.input_names}
        return ExprConverter(src, allowed, set(), "`gradient_at` (param, states, hyperparameters, step)").convert(
            tree.body
        )

    def init_expr(self, node: Node, key: str) -> sympy.Expr:
        value = node.value
        if isinstance(value, bool) or value is None:
            raise SpecError(node.loc, f"init of `{key}`: expected a number or an expression, got {_describe(value)}")
        if number_value(value) is not None:
            value = number_value(value)
            if not math.isfinite(value):
                raise SpecError(node.loc, f"init of `{key}` must be finite")
            frac = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
            return sympy.Rational(frac.numerator, frac.denominator)
        src = source_of(node)
        tree = parse_python(src, "eval", f"the init of `{key}`")
        states = set(self.entries("state")) - self.input_names  # a clash is reported once, at the state
        allowed = {n: s for n, s in self.symbols.items() if n not in states and n != STEP}
        what = "constants, hyperparameters, param, grad and inputs"
        conv = ExprConverter(src, allowed, set(), f"the init of `{key}` ({what})")
        conv.tensor_names |= self.input_names
        return conv.convert(tree.body)


def loads(text: str, file: str = "<spec>", path: Path | None = None) -> Spec:
    """Parse spec text; `file` names it in error messages, `path` anchors relative `extends`."""
    texts: list[str] = []
    chain = (path.resolve(),) if path else ()
    root, update_source = _load_tree(text, file, path, chain, texts)
    spec = SpecBuilder(root, update_source, path, texts).build()
    if path is not None and catalog.is_catalog_path(path):
        spec.catalog_name = path.stem
    return spec


def load_path(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(Loc(str(path), 1, 1), "no such spec file") from None
    except UnicodeDecodeError as exc:
        raise SpecError(Loc(str(path), 1, 1), f"spec is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise SpecError(Loc(str(path), 1, 1), f"cannot read spec: {exc.strerror}") from None
    return loads(text, str(path), path)
