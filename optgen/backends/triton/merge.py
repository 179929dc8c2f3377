"""Merge the straight-line code of several settings into one body with compile-time guards.

Each setting (a tuple of flag values) contributes a list of lines. The merge is a common
supersequence built by longest-common-subsequence alignment, each line labelled with the
settings that run it; so restricting the merged body to one setting gives back exactly its
lines, in order. Labels become guards: the smallest sum of products over the flags that
covers the line's settings (settings that never run this kernel are don't-cares), printed as
`if AMSGRAD:` blocks, with `else:` when two neighbouring blocks are complements.
"""

from __future__ import annotations

import itertools

import sympy
from sympy.logic import SOPform


def merge(sequences: list[tuple[tuple, list[str]]]) -> list[tuple[str, frozenset]]:
    merged: list[tuple[str, frozenset]] = []
    for key, lines in sequences:
        merged = _merge_one(merged, key, lines)
    return merged


def _merge_one(merged, key, lines):
    n, m = len(merged), len(lines)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if merged[i][0] == lines[j]:
                lcs[i][j] = lcs[i + 1][j + 1] + 1
            else:
                lcs[i][j] = max(lcs[i + 1][j], lcs[i][j + 1])
    out, i, j = [], 0, 0
    while i < n or j < m:
        if i < n and j < m and merged[i][0] == lines[j]:
            out.append((lines[j], merged[i][1] | {key}))
            i, j = i + 1, j + 1
        elif i < n and (j == m or lcs[i + 1][j] >= lcs[i][j + 1]):
            out.append(merged[i])
            i += 1
        else:
            out.append((lines[j], frozenset({key})))
            j += 1
    return out


class Guarded:
    """Prints merged lines under guards. `flags` name the positions of a setting's key;
    `names` are how the code spells them (AMSGRAD); `care` are the settings that run this code."""

    def __init__(self, flags: list[str], names: list[str], care: set[tuple], indent: str = "    "):
        self.symbols = [sympy.Symbol(n) for n in names]
        self.care = frozenset(care)
        every = set(itertools.product((False, True), repeat=len(flags)))
        self.dontcare = [list(map(int, k)) for k in every - self.care]
        self.indent = indent

    def condition(self, settings: frozenset, excluded: frozenset = frozenset()):
        """The simplest guard true on `settings`; `excluded` settings (taken by an earlier
        branch of an if/elif chain) may go either way."""
        if settings >= self.care - excluded:
            return sympy.true
        dontcare = self.dontcare + [list(map(int, k)) for k in excluded]
        return SOPform(self.symbols, [list(map(int, k)) for k in settings & self.care], dontcare)

    def lines(self, merged: list[tuple[str, frozenset]]) -> list[str]:
        blocks: list[tuple[frozenset, list[str]]] = []
        for text, settings in merged:
            settings = settings & self.care
            if blocks and blocks[-1][0] == settings:
                blocks[-1][1].append(text)
            else:
                blocks.append((settings, [text]))
        out: list[str] = []
        chain: frozenset | None = None  # settings covered by the open if/elif chain
        for settings, body in blocks:
            cond = self.condition(settings)
            if cond == sympy.true:
                out += body
                chain = None
                continue
            if chain is not None and not (chain & settings):
                covered = chain | settings
                out.append("else:" if covered == self.care else f"elif {self.python(self.condition(settings, chain))}:")
                chain = None if covered == self.care else covered
            else:
                out.append(f"if {self.python(cond)}:")
                chain = settings
            out += [self.indent + line for line in body]
        return out

    def python(self, cond) -> str:
        """A sum of products as a Python condition, flags in declaration order:
        `WEIGHT_DECOUPLE and not FIXED_DECAY`, `A or (B and C)`."""
        rank = {s: i for i, s in enumerate(self.symbols)}

        def literal(a) -> str:
            return f"not {a.args[0].name}" if isinstance(a, sympy.Not) else a.name

        def product(a) -> str:
            lits = (
                sorted(a.args, key=lambda x: rank[x.args[0] if isinstance(x, sympy.Not) else x])
                if isinstance(a, sympy.And)
                else [a]
            )
            return " and ".join(literal(x) for x in lits)

        terms = [product(a) for a in cond.args] if isinstance(cond, sympy.Or) else [product(cond)]
        return " or ".join(f"({t})" if " and " in t and len(terms) > 1 else t for t in terms)
