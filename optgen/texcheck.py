"""Validation of the LaTeX fragments a spec supplies (`tex:` fields).

A tex field is pasted into documents that pdflatex compiles, so it must not be able to read
or write files, embed PDF objects, redefine macros or stop the document. A list of what is
forbidden cannot be complete (`\\pdfobj file {...}` and `^^5cinput` slip past one), so a
field must stay inside a small math vocabulary: Greek letters, a few symbols, one- and
two-argument accents and fonts, and well-formed sub- and superscripts."""

from __future__ import annotations

import re

_ALLOWED_CHARS = re.compile(r"^[A-Za-z0-9\\{}_^ ,.'()\[\]|+\-*/=<>!:;]*$")


def tex_problem(tex: str) -> str | None:
    """Why `tex` is not a safe math fragment, or None."""
    if not isinstance(tex, str):
        return "a tex field must be text"
    if len(tex) > 200:
        return "a tex field is at most 200 characters"
    if not _ALLOWED_CHARS.match(tex):
        bad = sorted({c for c in tex if not _ALLOWED_CHARS.match(c)})
        return f"character(s) {''.join(bad)!r} are not allowed in a tex field"
    if tex.endswith("\\"):
        return "a tex field may not end with a backslash"
    return tex_field_problem(tex)


GREEK = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "pi",
    "varpi",
    "rho",
    "varrho",
    "sigma",
    "varsigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Pi",
    "Sigma",
    "Upsilon",
    "Phi",
    "Psi",
    "Omega",
]
SYMBOLS = [
    "infty",
    "prime",
    "ast",
    "star",
    "cdot",
    "circ",
    "dagger",
    "ell",
    "partial",
    "nabla",
    "max",
    "min",
    "sup",
    "inf",
    "log",
    "exp",
    "lim",
    "top",
    "bot",
    "perp",
    "odot",
    "oplus",
    "otimes",
    "times",
    "pm",
    "mp",
    "sharp",
    "flat",
    "natural",
    "hbar",
    "imath",
    "jmath",
]
ONE_ARGUMENT = [
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathtt",
    "mathcal",
    "mathbb",
    "mathfrak",
    "boldsymbol",
    "hat",
    "bar",
    "tilde",
    "widehat",
    "widetilde",
    "check",
    "breve",
    "dot",
    "ddot",
    "vec",
    "overline",
    "underline",
    "operatorname",
]
TWO_ARGUMENTS = {"frac", "tfrac", "dfrac"}
SPACING = set(",;:! |{}")  # \, \; \: \! \  \| \{ \}

_TOKEN = re.compile(r"\\([A-Za-z]+|.)|(\s+)|(.)", re.DOTALL)


def _tokens(tex: str) -> list[str]:
    out = []
    for match in _TOKEN.finditer(tex):
        if match.group(2) is None:
            out.append(match.group(0))
    return out


def _argument_end(tokens: list[str], i: int) -> int | None:
    """The index past one argument (a group or a single token) starting at tokens[i]."""
    if i >= len(tokens) or tokens[i] in ("}", "_", "^", "'"):
        return None
    if tokens[i] != "{":
        return i + 1
    depth = 0
    for j in range(i, len(tokens)):
        depth += {"{": 1, "}": -1}.get(tokens[j], 0)
        if depth == 0:
            return j + 1
    return None


def tex_field_problem(tex: str) -> str | None:
    """Why `tex` is not in the backend's math vocabulary, or None."""
    if "^^" in tex:
        return "`^^` character codes are not allowed"
    tokens = _tokens(tex)
    scripts: list[set[str]] = [set()]  # per group level: the scripts the current atom has
    for i, tok in enumerate(tokens):
        if tok.startswith("\\") and len(tok) > 1:
            name = tok[1:]
            if name in ONE_ARGUMENT or name in TWO_ARGUMENTS:
                end = _argument_end(tokens, i + 1)
                if end is None or (name in TWO_ARGUMENTS and _argument_end(tokens, end) is None):
                    return f"\\{name} is missing its argument"
            elif name not in GREEK and name not in SYMBOLS and name not in SPACING:
                return f"control sequence \\{name} is not in the math vocabulary allowed in a tex field"
        if tok in ("_", "^", "'"):
            kind = "_" if tok == "_" else "^"
            if kind in scripts[-1] and not (tok == "^" and "'" in scripts[-1] and "^^" not in scripts[-1]):
                return "a double subscript or superscript"
            if tok != "'" and _argument_end(tokens, i + 1) is None:
                return f"`{tok}` is missing what it applies to"
            scripts[-1] |= {kind, "'"} if tok == "'" else {kind}
            if tok == "^" and "'" in scripts[-1]:
                scripts[-1].add("^^")
        elif tok == "{":
            scripts.append(set())
        elif tok == "}":
            scripts.pop()
            if not scripts:
                return "unbalanced braces"
        elif not (i and tokens[i - 1] in ("_", "^")):
            scripts[-1] = set()  # a new atom
    return None if len(scripts) == 1 else "unbalanced braces"
