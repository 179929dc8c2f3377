"""Validation of the LaTeX fragments a spec supplies (`tex:` fields).

A tex field is pasted into documents that pdflatex compiles, so it must not be able to
read or write files, redefine macros or unbalance the document."""

from __future__ import annotations

import re

# Control sequences that touch files, the shell, catcodes or definitions.
_FORBIDDEN = {
    "input", "include", "includeonly", "write", "immediate", "openin", "openout", "read",
    "readline", "catcode", "def", "edef", "gdef", "xdef", "let", "futurelet", "newcommand",
    "renewcommand", "providecommand", "DeclareRobustCommand", "newenvironment",
    "renewenvironment", "csname", "endcsname", "expandafter", "special", "closein",
    "closeout", "newread", "newwrite", "usepackage", "RequirePackage", "documentclass",
    "begin", "end", "makeatletter", "makeatother", "uppercase", "lowercase", "scantokens",
    "endinput", "jobname", "input@path", "verbatiminput", "pdfprimitive", "directlua",
    "ShellEscape", "write18", "outer", "long", "global", "afterassignment", "aftergroup",
    "mathcode", "lccode", "uccode", "sfcode", "delcode", "endlinechar", "newlinechar",
    "escapechar", "errmessage", "message", "typeout", "loop", "repeat", "halign", "valign",
    "char", "chardef", "mathchardef", "countdef", "dimendef", "toksdef", "the", "showthe",
}
_CS = re.compile(r"\\([A-Za-z@]+|.)")
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
    depth = 0
    for ch in tex:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return "unbalanced braces: a '}' closes nothing"
    if depth:
        return "unbalanced braces: a '{' is never closed"
    for match in _CS.finditer(tex):
        name = match.group(1)
        if name in _FORBIDDEN or "@" in name:
            return f"control sequence \\{name} is not allowed in a tex field"
    if tex.endswith("\\"):
        return "a tex field may not end with a backslash"
    return None
