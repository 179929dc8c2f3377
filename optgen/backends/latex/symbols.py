"""LaTeX names for spec symbols: the spec's `tex` fields first, then a default from the name.

State symbols carry a time index (m_{t-1} before their update in a step, m_t after it), so
a symbol's LaTeX is split into base, subscript and superscript, and the index is merged
into the subscript."""

from __future__ import annotations

import re

from ...texcheck import GREEK

# a name word that is a Greek letter prints as the letter (beta1 -> \\beta_{1})
PARAM_TEX, GRAD_TEX, STEP_TEX = r"\theta", "g", "t"
_GREEK_DIGITS = re.compile(r"^([A-Za-z]+?)(\d+)$")


def escape_name(name: str) -> str:
    """An identifier inside \\mathrm{...}: only `_` needs escaping."""
    return name.replace("_", r"\_")


def _greek(word: str) -> str | None:
    """\\beta for `beta`, \\beta_{1} for `beta1`, None for a word that is not Greek."""
    if word in GREEK:
        return "\\" + word
    match = _GREEK_DIGITS.match(word)
    if match and match.group(1) in GREEK:
        return f"\\{match.group(1)}_{{{match.group(2)}}}"
    return None


def default_tex(name: str) -> str:
    """`beta1` -> \\beta_{1}, `rho_inf` -> \\rho_{\\mathrm{inf}}, `mu_t` -> \\mu_{t},
    anything else -> \\mathrm{name}."""
    greek = _greek(name)
    if greek:
        return greek
    head, _, rest = name.partition("_")
    base = _greek(head)
    if base and rest and "_" not in base:
        sub = rest if len(rest) == 1 or rest.isdigit() else rf"\mathrm{{{escape_name(rest)}}}"
        return f"{base}_{{{sub}}}"
    return rf"\mathrm{{{escape_name(name)}}}"


def _group_end(tex: str, i: int) -> int:
    """The index just past the group or token starting at tex[i]."""
    if tex[i] == "{":
        depth = 0
        for j in range(i, len(tex)):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return j + 1
        return len(tex)
    if tex[i] == "\\":
        match = re.match(r"\\([A-Za-z]+|.)", tex[i:])
        return i + len(match.group(0))
    return i + 1


def split_scripts(tex: str) -> tuple[str, str | None, str | None] | None:
    """`v^{\\max}` -> ("v", None, "\\max"); `g_{\\mathrm{prev}}` -> ("g", "\\mathrm{prev}", None).
    None for a fragment whose scripts are not trailing."""
    i, base_end, sub, sup = 0, None, None, None
    while i < len(tex):
        if tex[i] in "_^" and i > 0:
            if base_end is None:
                base_end = i
            j = i + 1
            while j < len(tex) and tex[j] == " ":
                j += 1
            if j >= len(tex):
                return None
            end = _group_end(tex, j)
            body = tex[j + 1 : end - 1] if tex[j] == "{" else tex[j:end]
            if tex[i] == "_" and sub is None:
                sub = body
            elif tex[i] == "^" and sup is None:
                sup = body
            else:
                return None
            i = end
        elif base_end is not None:
            return None  # text after the scripts
        else:
            i = _group_end(tex, i)
    return (tex if base_end is None else tex[:base_end]), sub, sup


def with_index(tex: str, index: str) -> str:
    """The symbol `tex` with `index` added to its subscript: m -> m_{t}, g_{a} -> g_{a,t}."""
    parts = split_scripts(tex)
    base, sub, sup = parts if parts is not None else (f"{{{tex}}}", None, None)
    sub = index if sub is None else f"{sub},{index}"
    return f"{base}_{{{sub}}}" + (f"^{{{sup}}}" if sup is not None else "")
