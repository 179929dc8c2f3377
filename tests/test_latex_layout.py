"""Paper-ready LaTeX: algorithm boxes never split across pages, no heading is the last line
of a page, one spec gets no title page, a spec's .tex can be \\input into a paper (the box
alone), and the README picture is sharp."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

import optgen
from optgen import catalog
from optgen.backends import latex
from optgen.backends.latex.pdf import compile_in, compile_pdf, pdf_text

needs_tex = pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
    reason="pdflatex or pdftotext is not installed (Debian: texlive-latex-base texlive-latex-recommended poppler-utils)",
)
ROOT = Path(__file__).resolve().parent.parent
HEADINGS = ("Algorithm", "Equations")


def _box_page(pages: list[str], name: str) -> int:
    """The page of `name`'s box: its first rule's line (`input:`) and its `return` must be on it."""
    starts = [i for i, text in enumerate(pages) if re.search(rf"^\s*\d+\s+{re.escape(name)}\s*$", text, re.MULTILINE)]
    assert starts, f"no section for {name}"
    i = starts[0]
    # the box may start on the section's page or the next (when the minipage did not fit)
    for page in (i, i + 1):
        text = pages[page] if page < len(pages) else ""
        found = re.search(r"\binput\s*:", text)
        if found:
            after = text[found.start() :]
            assert re.search(r"\breturn\b", after), f"{name}'s box is split across pages {page + 1} and {page + 2}"
            return page
    raise AssertionError(f"{name}'s box not found near page {i + 1}")


@needs_tex
def test_boxes_whole_and_no_orphaned_headings():
    specs = [optgen.load(name) for name in catalog.names()]
    pages = pdf_text(compile_pdf(latex.render_sheet(specs)))
    for spec in specs:
        _box_page(pages, spec.name)
    for number, text in enumerate(pages, start=1):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        body = [line for line in lines if not re.fullmatch(r"\d+", line)]  # the page number
        if body:
            assert not body[-1].startswith(HEADINGS), f"page {number} ends with the heading {body[-1]!r}"


@needs_tex
def test_one_spec_has_no_title_page():
    pages = [p for p in pdf_text(compile_pdf(latex.render_sheet([optgen.load("adam")]))) if p.strip()]
    assert "formula sheet" not in pages[0]
    assert re.search(r"^\s*1\s+Adam\s*$", pages[0], re.MULTILINE)  # the algorithm starts on page 1
    assert len(pages) <= 2


@needs_tex
def test_spec_tex_inputs_into_a_paper_as_the_box_alone(tmp_path):
    (tmp_path / "lamb.tex").write_text(latex.render(optgen.load("lamb"))["lamb.tex"])
    paper = r"""\documentclass{article}
\usepackage{amsmath,amssymb}
\begin{document}
Our method builds on LAMB:

\input{lamb}

And the text goes on.
\end{document}"""
    pdf = compile_in(paper, tmp_path, stem="paper").read_bytes()
    text = "\n".join(pdf_text(pdf))
    assert "Our method builds on LAMB" in text and "And the text goes on." in text
    assert text.count("Algorithm: Lamb") == 1
    assert "return" in text
    assert "Hyperparameter" not in text and "Equations" not in text  # the box only
    standalone = "\n".join(
        pdf_text(
            compile_in(
                latex.render_spec(optgen.load("lamb")),
                tmp_path / "alone" if (tmp_path / "alone").mkdir() is None else None,
            ).read_bytes()
        )
    )
    assert "Hyperparameter" in standalone and "Equations" in standalone


def test_readme_picture_is_at_least_150_dpi():
    png = (ROOT / "docs" / "formula-sheet.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    # an A4 page (210 x 297 mm) at 150 dpi is 1240 x 1754 pixels
    assert width >= 1240 and height >= 1754, (width, height)
