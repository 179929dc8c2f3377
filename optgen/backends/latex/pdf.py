"""Running pdflatex on generated documents, locked down.

pdflatex runs in a fresh temporary folder with shell escape off and kpathsea's paranoid
file settings (no absolute paths, no `..`, no dot files, for reading or writing), so even
a document that tried could not read /etc/passwd or write outside its folder. Fonts are
never generated (mktexpk off): the documents use only the Type 1 Computer Modern fonts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import config

PDFLATEX_FLAGS = ["-interaction=nonstopmode", "-no-shell-escape", "-halt-on-error", "-recorder"]


class LatexError(RuntimeError):
    """pdflatex failed; the message ends with the log's last lines."""


def pdflatex() -> str | None:
    """The pdflatex executable, or None where TeX is not installed."""
    return shutil.which("pdflatex")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "openin_any": "p",
            "openout_any": "p",
            "shell_escape": "f",
            "MKTEXPK": "0",
            "MKTEXTFM": "0",
            "MKTEXMF": "0",
            "SOURCE_DATE_EPOCH": "0",
            "FORCE_SOURCE_DATE": "1",
        }
    )
    env.pop("TEXINPUTS", None)
    return env


def compile_in(tex: str, folder: Path, runs: int = 1, stem: str = "doc") -> Path:
    """Compile `tex` in `folder` (which should be empty); the PDF's path. The folder keeps
    the .log and the .fls (the files pdflatex opened) for whoever wants to look."""
    exe = pdflatex()
    if exe is None:
        raise LatexError("pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended)")
    source = folder / f"{stem}.tex"
    source.write_text(tex, encoding="utf-8")
    for _ in range(runs):
        try:
            done = subprocess.run(
                [exe, *PDFLATEX_FLAGS, source.name],
                check=False,
                cwd=folder,
                env=_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=config.PDFLATEX_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise LatexError(f"pdflatex took more than {config.PDFLATEX_TIMEOUT_S}s") from None
        if done.returncode != 0:
            log = folder / f"{stem}.log"
            tail = (
                log.read_text(errors="replace")[-3000:]
                if log.exists()
                else done.stdout.decode(errors="replace")[-3000:]
            )
            raise LatexError(f"pdflatex failed (exit {done.returncode}):\n{tail}")
    return folder / f"{stem}.pdf"


def compile_pdf(tex: str, runs: int = 2) -> bytes:
    """The PDF of a document (two runs, so that page references resolve)."""
    with tempfile.TemporaryDirectory(prefix="optgen-latex-") as tmp:
        return compile_in(tex, Path(tmp), runs).read_bytes()


def page_png(pdf: bytes, page: int, dpi: int = config.PNG_DPI) -> bytes:
    """One page of a PDF as PNG bytes (poppler's pdftoppm)."""
    exe = shutil.which("pdftoppm")
    if exe is None:
        raise LatexError("pdftoppm is not installed (Debian: poppler-utils)")
    with tempfile.TemporaryDirectory(prefix="optgen-png-") as tmp:
        path = Path(tmp) / "doc.pdf"
        path.write_bytes(pdf)
        subprocess.run(
            [exe, "-r", str(dpi), "-png", "-f", str(page), "-l", str(page), "-singlefile", path.name, "page"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=60,
        )
        return (Path(tmp) / "page.png").read_bytes()


def pdf_text(pdf: bytes) -> list[str]:
    """The text of each page (poppler's pdftotext)."""
    exe = shutil.which("pdftotext")
    if exe is None:
        raise LatexError("pdftotext is not installed (Debian: poppler-utils)")
    done = subprocess.run([exe, "-layout", "-", "-"], input=pdf, capture_output=True, check=True, timeout=60)
    return done.stdout.decode("utf-8", errors="replace").split("\f")
