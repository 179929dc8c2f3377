"""Free text from a spec (name, summary, citation, notes) made safe for LaTeX.

Every character that means something to TeX is replaced by a command that prints it, so
no spec text can open a file, define a macro or break the document. Characters the
default (OT1) fonts cannot print become `?`."""

from __future__ import annotations

import unicodedata

# The default (OT1) roman font has no glyph for these: they print from the typewriter font,
# whose ASCII glyphs come out of the PDF as the characters themselves.
LITERAL = r"\optgenchar"  # defined in the preamble: {\ttfamily\char#1\relax}
_TYPEWRITER = "\\{}$^~_<>|`"
_SPECIAL = {c: rf"{LITERAL}{{{ord(c)}}}" for c in _TYPEWRITER}
_SPECIAL.update({"&": r"\&", "%": r"\%", "#": r"\#", "-": "-{}"})  # -{}: no -- ligature from text
_UNICODE = {
    "\u2013": "--",
    "\u2014": "---",
    "\u2018": "`",
    "\u2019": "'",
    "\u201c": "``",
    "\u201d": "''",
    "\u2026": r"\ldots{}",
    "\u00a0": "~",
    "\u00d7": r"$\times$",
    "\u00df": r"\ss{}",
    "\u00e6": r"\ae{}",
    "\u00c6": r"\AE{}",
    "\u00f8": r"\o{}",
    "\u00d8": r"\O{}",
    "\u0142": r"\l{}",
    "\u0141": r"\L{}",
    "\u0131": r"\i{}",
}
# Combining marks -> the accent command that draws them over a letter.
_ACCENTS = {
    "\u0300": "`",
    "\u0301": "'",
    "\u0302": "^",
    "\u0303": "~",
    "\u0304": "=",
    "\u0306": "u",
    "\u0307": ".",
    "\u0308": '"',
    "\u030a": "r",
    "\u030b": "H",
    "\u030c": "v",
    "\u0327": "c",
    "\u0328": "k",
}


def _accented(char: str) -> str:
    """`é` -> \\'{e}; `?` for a character with no OT1 rendering."""
    base, *marks = unicodedata.normalize("NFD", char)
    if not (base.isascii() and base.isalpha()) or not marks or any(m not in _ACCENTS for m in marks):
        return "?"
    out = base
    for mark in marks:
        out = f"\\{_ACCENTS[mark]}{{{out}}}"
    return "{" + out + "}"


def escape(text: str) -> str:
    """`text` as LaTeX that prints it literally (straight double quotes become curly ones)."""
    out = []
    quotes = 0
    for char in text:
        if char == '"':
            out.append("``" if quotes % 2 == 0 else "''")
            quotes += 1
        elif char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char in _UNICODE:
            out.append(_UNICODE[char])
        elif char.isascii():
            out.append(char if char.isprintable() else " ")
        else:
            out.append(_accented(char))
    return "".join(out)
