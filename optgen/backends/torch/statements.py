"""Python statements as data: lines and blocks, rendered with indentation, and merged across
option settings so that a compile-time option reads as an `if` around what it changes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Line:
    text: str


@dataclass
class Block:
    header: str  # "if amsgrad:", "for i, param in enumerate(params):"
    body: list
    orelse: list = field(default_factory=list)


def render(stmts: list, indent: int) -> str:
    pad = "    " * indent
    out = []
    for s in stmts:
        if isinstance(s, Line):
            out.append(pad + s.text)
            continue
        s = _join_conditions(s)
        out.append(pad + s.header)
        out.append(render(s.body or [Line("pass")], indent + 1))
        orelse = s.orelse
        # else: if ... reads as elif
        while len(orelse) == 1 and isinstance(orelse[0], Block) and orelse[0].header.startswith("if "):
            inner = _join_conditions(orelse[0])
            out.append(pad + "el" + inner.header)
            out.append(render(inner.body or [Line("pass")], indent + 1))
            orelse = inner.orelse
        if orelse:
            out.append(pad + "else:")
            out.append(render(orelse, indent + 1))
    return "\n".join(out)


def _join_conditions(block: Block) -> Block:
    """`if a:` holding only `if b:` reads as `if a and b:`."""
    while (
        block.header.startswith("if ")
        and not block.orelse
        and len(block.body) == 1
        and isinstance(block.body[0], Block)
        and block.body[0].header.startswith("if ")
        and not block.body[0].orelse
    ):
        inner = block.body[0]
        block = Block(f"if {_operand(block.header[3:-1])} and {_operand(inner.header[3:-1])}:", inner.body)
    return block


def _operand(cond: str) -> str:
    return f"({cond})" if " or " in cond else cond


def merge_variants(variants: list[tuple[dict, list]], options: list[str]) -> list:
    """One statement list for every setting of the options: the statements that differ
    between settings go under `if option:` / `else:`."""
    if len(variants) == 1:
        return variants[0][1]
    option, rest = options[0], options[1:]
    on = [(o, s) for o, s in variants if o[option]]
    off = [(o, s) for o, s in variants if not o[option]]
    if not on or not off:
        return merge_variants(on or off, rest)
    return merge_two(merge_variants(on, rest), merge_variants(off, rest), option)


def _key(s):
    return ("line", s.text) if isinstance(s, Line) else ("block", s.header)


def merge_two(a: list, b: list, cond: str) -> list:
    """Statements a (when cond holds) and b (when not) as one list."""
    if a == b:
        return list(a)
    n, m = len(a), len(b)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i][j] = lcs[i + 1][j + 1] + 1 if _key(a[i]) == _key(b[j]) else max(lcs[i + 1][j], lcs[i][j + 1])
    out, i, j, run_a, run_b = [], 0, 0, [], []

    def flush():
        if run_a or run_b:
            out.append(_option_block(cond, list(run_a), list(run_b)))
            run_a.clear()
            run_b.clear()

    while i < n and j < m:
        if _key(a[i]) == _key(b[j]):
            flush()
            if isinstance(a[i], Block):
                out.append(
                    Block(a[i].header, merge_two(a[i].body, b[j].body, cond), merge_two(a[i].orelse, b[j].orelse, cond))
                )
            else:
                out.append(a[i])
            i, j = i + 1, j + 1
        elif lcs[i + 1][j] >= lcs[i][j + 1]:
            run_a.append(a[i])
            i += 1
        else:
            run_b.append(b[j])
            j += 1
    run_a.extend(a[i:])
    run_b.extend(b[j:])
    flush()
    return out


def _option_block(cond: str, on: list, off: list) -> Block:
    if not on:
        return Block(f"if not {cond}:", off)
    return Block(f"if {cond}:", on, off)
