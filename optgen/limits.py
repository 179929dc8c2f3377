"""Budgets on what a spec may ask of the compiler, so that hostile input is answered with a
located error in bounded time and memory instead of a hang (a spec is untrusted input).

YAML budgets (size, depth, alias expansion) live in yamlpos.py; these are the ones on
expressions and programs, checked while parsing:

    tree_problem(tree, text) -> (ast node, message) | None   # size, depth, identifiers
    power_problem(base, exponent) -> message | None           # before SymPy computes it
    constant_problem(expr) -> message | None                  # every constant stays a float64
"""

from __future__ import annotations

import ast

import sympy

from .expr import REDUCTIONS

MAX_EXPR_NODES = 1_000  # syntax nodes in one statement or expression
MAX_PROGRAM_NODES = 3_000  # in one update program
MAX_EXPR_DEPTH = 100  # nesting of one expression (the converter recurses on it)
MAX_CONSTANT_BITS = 1_100  # numerator/denominator of an exact constant (float64 needs < 1100)
MAX_FLOAT = 1.7976931348623157e308
MAX_OPTIONS = 6  # options: 2**6 = 64 specialisations are compiled and checked
MAX_WORK = 32_000  # specialisations x update-program nodes (the catalog's largest: 6,624)
MAX_INPUTS = 8  # extra per-element inputs of step(): each is one more array every kernel reads
MAX_EXTENDS = 16  # length of an `extends` chain
MAX_INLINED = 500  # nodes of a value with earlier values substituted in (grows exponentially)
MAX_REPEAT = 100  # iterations of one `for _ in range(k):` loop (torch.optim.Muon refuses ns_steps >= 100)


def tree_problem(tree: ast.AST, text: str) -> tuple[ast.AST, str] | None:
    """The first node of a parsed program or expression that is over a budget, or whose name
    is not plain ASCII in the source (Python folds `ｐａｒａｍ` to `param`), with the reason."""
    lines = text.split("\n")
    total = 0
    sizes: dict[int, int] = {}
    stack: list[tuple[ast.AST, int, ast.AST | None]] = [(tree, 0, None)]
    while stack:  # iterative: a deep tree must not exhaust the Python stack here
        node, depth, root = stack.pop()
        total += 1
        if total > MAX_PROGRAM_NODES:
            return node, f"the program is too large (more than {MAX_PROGRAM_NODES} syntax nodes)"
        if isinstance(node, ast.stmt) or root is None:
            root, depth = node, 0
        sizes[id(root)] = sizes.get(id(root), 0) + 1
        if sizes[id(root)] > MAX_EXPR_NODES:
            return root, f"this expression is too large (more than {MAX_EXPR_NODES} syntax nodes)"
        if depth > MAX_EXPR_DEPTH:
            return node, f"this expression is nested too deeply (more than {MAX_EXPR_DEPTH} levels)"
        if isinstance(node, ast.Name):
            problem = _name_problem(node, lines)
            if problem:
                return node, problem
        stack.extend((child, depth + 1, root) for child in ast.iter_child_nodes(node) if not isinstance(child, _MARKS))
    return None


# operator and context markers: shared, position-less nodes, not counted
_MARKS = (ast.expr_context, ast.operator, ast.boolop, ast.cmpop, ast.unaryop)


def _name_problem(node: ast.Name, lines: list[str]) -> str | None:
    """Names are read from the source as written: `ast` NFKC-normalises identifiers."""
    line = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
    written = line.encode("utf-8")[node.col_offset : node.end_col_offset].decode("utf-8", "replace")
    if not written.isascii() or written != node.id:
        return f"name {written!r} is not plain ASCII; write identifiers with the letters a-z, A-Z, digits and _"
    return None


def power_problem(base: sympy.Expr, exponent: sympy.Expr) -> str | None:
    """Refuse a power of exact constants whose result would not fit the constant budget,
    before SymPy computes it exactly (((2**64)**64)**64 has 2**18 bits)."""
    if not (base.is_Rational and exponent.is_Integer) or base == 0:
        return None
    bits = max(abs(base.p).bit_length(), base.q.bit_length()) * abs(int(exponent))
    if bits > MAX_CONSTANT_BITS:
        return f"this constant is too large (about 2**{bits}); a constant must fit a float64"
    return None


def constant_problem(expr) -> str | None:
    """Every constant subexpression is kept within float64's range, so that comparing or
    evaluating one later (SymPy does, deciding where() and Max) stays cheap. Checked at every
    node as it is built, so the evaluation here only ever sees bounded parts."""
    if not isinstance(expr, sympy.Expr) or expr.free_symbols:
        return None
    if expr.is_Rational:
        if max(abs(expr.p).bit_length(), expr.q.bit_length()) > MAX_CONSTANT_BITS:
            return "this constant is too large; a constant must fit a float64"
        return None
    if expr.has(*REDUCTIONS):
        return None  # a reduction of a constant: refused where it is built
    value = expr.evalf(20)
    if not value.is_Number or not (abs(value) <= MAX_FLOAT):
        return "this constant is not a finite float64 number"
    return None


def program_size(tree: ast.AST) -> int:
    return sum(1 for node in ast.walk(tree) if not isinstance(node, _MARKS))


def option_over_budget(options: int, program_nodes: int) -> int | None:
    """The index of the first option that takes the work (each specialisation is lowered,
    checked and emitted) over MAX_WORK, or None."""
    for i in range(options):
        if 2 ** (i + 1) * program_nodes > MAX_WORK:
            return i
    return None
