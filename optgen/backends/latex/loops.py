"""Bounded loops (`for _ in range(k):`) as a paper prints them: the statement that runs the
loop is one function application, `O <- NS_k(O)`, and the function is defined once below
the algorithm from the loop's own body: `NS_k(O): k times O <- aO + (bA + cA^2)O, with
A = O O^T`.

The function's name comes from the loop count: an integer hyperparameter named
`<words>_steps` (or `_iters`, `_iterations`) names it after its words (`ns_steps` -> NS,
`power_iters` -> Power); any other count gives Iter. The subscript is the count's symbol."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from ...spec import Assign, If, Repeat, Spec

_COUNT_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*?)_(?:steps|iters|iterations)$")
GENERIC = "Iter"
ACRONYM = 3  # a word of at most this many letters is an acronym: ns -> NS


def carried(body: list, known) -> str:
    """The value a loop carries from one iteration to the next: the one read before the
    body assigns it, else the one of its targets assigned before the loop (in `known`); the
    checker made sure there is exactly one (optgen/matrix.py)."""
    assigned = _targets(body)
    found: list[str] = []

    def visit(stmts: list, written: set[str]) -> set[str]:
        for stmt in stmts:
            if isinstance(stmt, Assign):
                found.extend(s.name for s in stmt.expr.free_symbols if s.name in assigned - written)
                written = written | {stmt.target}
            elif isinstance(stmt, If):  # each branch starts from what was written before it
                written = visit(stmt.body, written) & visit(stmt.orelse, written)
        return written

    visit(body, set())
    return found[0] if found else next(name for name in assigned if name in known)


def _targets(stmts: list) -> set[str]:
    out: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, Assign):
            out.add(stmt.target)
        elif isinstance(stmt, If):
            out |= _targets(stmt.body) | _targets(stmt.orelse)
    return out


def all_loops(statements: list) -> list[Repeat]:
    """Every loop of the update, in program order (under any option)."""
    out: list[Repeat] = []
    for stmt in statements:
        if isinstance(stmt, Repeat):
            out.append(stmt)
        elif isinstance(stmt, If):
            out += all_loops(stmt.body) + all_loops(stmt.orelse)
    return out


def _word(count: sympy.Expr) -> str:
    match = _COUNT_NAME.match(count.name) if isinstance(count, sympy.Symbol) else None
    if not match:
        return GENERIC
    words = match.group(1).split("_")
    return "-".join(w.upper() if len(w) <= ACRONYM else w.capitalize() for w in words)


@dataclass(frozen=True)
class LoopNames:
    """The function name (without its subscript) of each loop of a spec: the same word for
    two loops gets a number (Iter, Iter2), so that every definition names one function."""

    words: dict  # the loop's location -> its word

    @classmethod
    def of(cls, spec: Spec) -> LoopNames:
        words: dict = {}
        seen: dict[str, int] = {}
        for loop in all_loops(spec.update):
            word = _word(loop.count)
            seen[word] = seen.get(word, 0) + 1
            words[loop.loc] = word if seen[word] == 1 else f"{word}{seen[word]}"
        return cls(words)

    def function(self, loop: Repeat, count_tex: str) -> str:
        return rf"\mathrm{{{self.words[loop.loc]}}}_{{{count_tex}}}"


def occurrences(expr: sympy.Basic, name: str) -> int:
    return sum(1 for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Symbol) and node.name == name)


def inlined(body: list[Assign], var: str) -> tuple[list[tuple[str, sympy.Expr]], sympy.Expr] | None:
    """The body as `var <- expr, with t = ...`: a temporary assigned once and read once is
    substituted where it is read (the polynomial is spelled out), one read more often stays a
    named clause. None when the body assigns a name twice (then it prints as it is)."""
    targets = [a.target for a in body]
    if len(set(targets)) != len(targets) or targets[-1] != var:
        return None
    later = lambda i, name: sum(occurrences(a.expr, name) for a in body[i + 1 :])
    subs: dict[sympy.Symbol, sympy.Expr] = {}
    clauses: list[tuple[str, sympy.Expr]] = []
    for i, stmt in enumerate(body[:-1]):
        expr = stmt.expr.xreplace(subs)
        if later(i, stmt.target) == 1:
            subs.update({s: expr for s in _symbols_named(body[i + 1 :], stmt.target)})
        else:
            clauses.append((stmt.target, expr))
    return clauses, body[-1].expr.xreplace(subs)


def _symbols_named(stmts: list[Assign], name: str) -> set[sympy.Symbol]:
    return {s for a in stmts for s in a.expr.free_symbols if s.name == name}
