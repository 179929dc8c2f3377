"""The LaTeX backend: every document compiles with pdflatex and says what the spec says;
hostile spec text is printed literally and cannot read files or break the document."""

from __future__ import annotations

import re
import shutil
import time
import types
import unicodedata
import zlib

import pytest

import optgen
from optgen import catalog
from optgen.backends import latex
from optgen.backends.latex import claims
from optgen.backends.latex.pdf import compile_in, compile_pdf, pdf_text
from optgen.cli import main
from optgen.texcheck import tex_problem

needs_tex = pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
    reason="pdflatex or pdftotext is not installed (Debian: texlive-latex-base texlive-latex-recommended poppler-utils)",
)
SHEET_SECONDS = 60


@pytest.fixture(scope="module")
def specs():
    return [optgen.load(name) for name in catalog.names()]


def flat(text: str) -> str:
    """PDF text with all whitespace removed (pdftotext breaks lines where TeX did), composed
    (an accent drawn over a letter comes out as a combining mark)."""
    return unicodedata.normalize("NFC", re.sub(r"\s+", "", text))


def pdf_streams(pdf: bytes) -> bytes:
    """Every stream of a PDF, inflated where it is compressed."""
    out = []
    for match in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.DOTALL):
        try:
            out.append(zlib.decompress(match.group(1)))
        except zlib.error:
            out.append(match.group(1))
    return b"\n".join(out)


# --------------------------------------------------------------------------- catalog
@needs_tex
def test_catalog_sheet_compiles_in_time_and_names_every_algorithm(specs):
    start = time.perf_counter()
    pdf = compile_pdf(latex.render_index(specs)[latex.SHEET])
    seconds = time.perf_counter() - start
    assert seconds < SHEET_SECONDS, f"the sheet took {seconds:.1f}s"
    text = "\n".join(pdf_text(pdf))
    for spec in specs:
        assert re.search(rf"^\s*\d+\s+{re.escape(spec.name)}\s*$", text, re.MULTILINE), f"no section for {spec.name}"
    assert "??" not in text, "an unresolved page reference"


@needs_tex
@pytest.mark.parametrize("name", catalog.names())
def test_each_spec_document_compiles_and_names_its_algorithm(name, tmp_path):
    spec = optgen.load(name)
    ((filename, tex),) = latex.render(spec).items()
    assert filename == f"{name}.tex"
    pdf = compile_in(tex, tmp_path).read_bytes()
    text = "\n".join(pdf_text(pdf))
    assert spec.name in text
    assert "mktexpk" not in (tmp_path / "doc.log").read_text(errors="replace"), "a bitmap font was generated"


def test_render_spec_is_the_public_latex():
    spec = optgen.load("adam")
    assert optgen.latex(spec) == latex.render(spec)["adam.tex"]


# --------------------------------------------------------------------------- content
def test_box_has_time_indices_reductions_and_conditionals():
    adam = optgen.latex("adam")
    assert r"m_{t} \leftarrow \beta_1 m_{t-1} + \left(1 - \beta_1\right) g_{t}" in adam
    assert r"\textbf{if}\ \textit{amsgrad}" in adam and r"\textbf{else}" in adam
    assert r"\textbf{return}\ \theta_{t}" in adam
    setadam = optgen.latex("setadam")
    assert r"\sum_{i} v_{t}" in setadam and r"\min_{i} \mathrm{denom}" in setadam
    assert r"\operatorname{numel}(\theta)" in setadam
    lars = optgen.latex("lars")
    assert r"\left\lVert \theta_{t-1} \right\rVert" in lars
    assert r"\begin{cases}" in lars and r"\operatorname{ndim}(\theta) > 1" in lars
    adan = optgen.latex("adan")
    assert r"\left\lVert g_{t} \right\rVert_{\mathcal{P}}" in adan  # the cross-parameter norm
    assert r"g_{\mathrm{prev},t}" in adan and r"g_{\mathrm{prev},t-1}" in adan


def test_equations_number_reassignments_and_specialise_options():
    eq = latex.algorithm.align_env(optgen.load("nadam"))
    assert r"{\theta_{t}}' &= \theta_{t-1}" in eq  # the first of two parameter updates
    assert r"\theta_{t} &= {\theta_{t}}' -" in eq
    assert r"\textit" not in eq  # no option left: the defaults are applied
    amsgrad = latex.algorithm.align_env(optgen.load("adam"), {"amsgrad": True, "decoupled_weight_decay": True})
    assert r"v_{t}^{\max} &= \max\left(v_{t}, v_{t-1}^{\max}\right)" in amsgrad


def test_every_branch_assigns_the_same_states():
    # Lamb decays the weights under two of three option cases: the third must say θ_t = θ_{t-1}.
    box = latex.algorithm.box_lines(optgen.load("lamb"))
    i = next(i for i, line in enumerate(box) if r"\textbf{else if}" in line)
    assert box[i + 2].endswith(r"\textbf{else}") and box[i + 3].endswith(r"\theta_{t} \leftarrow \theta_{t-1}")


@pytest.mark.parametrize(
    ("name", "tex"),
    [
        ("beta1", r"\beta_{1}"),
        ("rho_inf", r"\rho_{\mathrm{inf}}"),
        ("rho_t", r"\rho_{t}"),
        ("exp_avg", r"\mathrm{exp\_avg}"),
    ],
)
def test_default_symbols(name, tex):
    assert latex.symbols.default_tex(name) == tex


@pytest.mark.parametrize(
    ("tex", "indexed"),
    [
        ("m", "m_{t}"),
        (r"v^{\max}", r"v_{t}^{\max}"),
        (r"g_{\mathrm{prev}}", r"g_{\mathrm{prev},t}"),
        (r"\hat{v}", r"\hat{v}_{t}"),
    ],
)
def test_time_index_joins_the_subscript(tex, indexed):
    assert latex.symbols.with_index(tex, "t") == indexed


# --------------------------------------------------------------------------- safety
HOSTILE = {
    "summary": r"S \input{/etc/passwd} $5 & 10% #1 a_b {c} x^2 ~y back\slash \\ end",
    "paper": r"P \end{document} \def\x{y} \catcode`\{=12 <a>|b|",
    "parity": r"torch.optim.Evil\relax",
    "notes": r"N \write18{touch /tmp/optgen-pwned} \makeatletter \@input{/etc/hostname} $$x$$ ^^5c",
}
HOSTILE_TEX = {
    "lr": r"\pdfobj file {/etc/passwd}\pdfrefobj\pdflastobj",  # a list of forbidden commands misses it
    "beta1": r"^^5cinput^^7b/etc/passwd^^7d",  # ^^5c is a backslash to TeX
    "exp_avg": "x_1_2",  # a double subscript would stop pdflatex
}
SAFE_TEX = {"lr": r"\gamma", "beta1": r"\beta_1", "exp_avg": "m"}


def hostile_yaml(tex: dict = SAFE_TEX) -> str:
    def quoted(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    fields = "\n".join(f"{key}: {quoted(value)}" for key, value in HOSTILE.items())
    return f"""name: Evil_Opt_
{fields}
hyperparameters:
  lr: {{default: 1.0e-3, range: "(0, inf)", tex: {quoted(tex["lr"])}, doc: 'D \\input{{/etc/passwd}} & more'}}
  beta1: {{default: 0.9, range: "[0, 1)", tex: {quoted(tex["beta1"])}}}
options:
  sneaky: {{default: false, doc: 'a \\verb|x| doc'}}
state:
  exp_avg: {{init: 0, tex: {quoted(tex["exp_avg"])}}}
update: |
  exp_avg = beta1 * exp_avg + (1 - beta1) * grad
  if sneaky:
      param = param - lr * exp_avg
  else:
      param = param - lr * grad
"""


@pytest.mark.parametrize("name", sorted(HOSTILE_TEX))
def test_hostile_tex_fields_are_refused_where_they_stand(name):
    text = hostile_yaml({**SAFE_TEX, name: HOSTILE_TEX[name]})
    with pytest.raises(optgen.SpecError) as info:
        optgen.load(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.lstrip().startswith(f"{name}:"))
    assert info.value.loc.line == line and f"tex for `{name}`" in info.value.message


@needs_tex
def test_hostile_spec_is_printed_literally_and_reads_no_file(tmp_path):
    spec = optgen.load(hostile_yaml())
    pdf = compile_in(optgen.latex(spec), tmp_path).read_bytes()
    text = flat("\n".join(pdf_text(pdf)))
    assert "Evil_Opt_" in text
    for value in (*HOSTILE.values(), r"D \input{/etc/passwd} & more", r"a \verb|x| doc"):
        assert flat(value).replace("`", "\u2018") in text, value
    opened = (tmp_path / "doc.fls").read_text()
    assert "/etc/passwd" not in opened and "/etc/hostname" not in opened and "pwned" not in opened
    assert b"root:" not in pdf_streams(pdf)


@needs_tex
def test_every_printable_character_survives(tmp_path):
    chars = "".join(chr(c) for c in range(33, 127) if chr(c) not in "\"'`-")
    spec = optgen.load("adam")
    spec.summary = chars + " Müller Ç ł — é中"
    pdf = compile_in(optgen.latex(spec), tmp_path).read_bytes()
    text = flat("\n".join(pdf_text(pdf)))
    assert chars in text
    assert "MüllerÇ" in text and "—é?" in text  # 中 has no glyph in the default fonts


def test_escape_leaves_no_active_character():
    from optgen.backends.latex.text import escape

    out = escape("".join(chr(c) for c in range(0x250)) + "\\input{x}")
    out = re.sub(r"\\optgenchar\{\d+\}|\\[&%#]|\\(?:ss|ae|AE|o|O|l|L|i|ldots)\{\}|\$\\times\$", "", out)
    accent = re.compile(r"\\[`'^\"~=.uvHcrk]\{[^{}\\]*\}")
    while accent.search(out):
        out = accent.sub("", out)
    assert not set(out) & set("\\$&%#^_"), sorted(set(out) & set("\\$&%#^_"))
    depth = 0
    for char in out:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0


@pytest.mark.parametrize(
    "field", ["G_{\\max}", "\\Pi", "\\alpha^*", "\\bar{g}", "g_{\\mathrm{prev}}", "s^{\\max}", "x'^2", "\\frac{a}{b}"]
)
def test_safe_tex_fields_are_kept(field):
    assert tex_problem(field) is None


@pytest.mark.parametrize(
    "field",
    [
        *HOSTILE_TEX.values(),
        "\\InputIfFileExists{/etc/passwd}{}{}",
        "x^2^3",
        "x_",
        "\\mathrm",
        "a \\\\ b",
        "\\left(",
        "{x",
    ],
)
def test_unsafe_tex_fields_are_refused(field):
    assert tex_problem(field) is not None


# --------------------------------------------------------------------------- claims
class FakeResult:
    def __init__(self, status, expect="proven"):
        self.proof = types.SimpleNamespace(status=status)
        self.expect = expect


def test_claims_render_only_when_the_verdict_is_expected(monkeypatch):
    spec = optgen.load(catalog.specs_dir() / "forms" / "adan_nme.yaml")
    assert spec.claims, "the NME form carries a claim"
    monkeypatch.setattr(claims, "prover", lambda: lambda s: [FakeResult("proven")])
    (prop,) = claims.propositions(spec)
    assert prop.statement.startswith("AdanNME is the same algorithm as AdanAGD")
    assert (r"\theta", r"\theta - \gamma \left(1 - \beta_1\right) m") in prop.mapping  # lr is \gamma
    monkeypatch.setattr(claims, "prover", lambda: lambda s: [FakeResult("unknown")])
    assert claims.propositions(spec) == []
    monkeypatch.setattr(claims, "prover", lambda: None)
    assert claims.propositions(spec) is None


def test_claims_of_the_catalog_through_the_prover():
    pytest.importorskip("optgen.prover")
    statements = [p.statement for p in claims.propositions(optgen.load("adamw"))]
    assert any(s.startswith("AdamW is not the same algorithm as Adam") for s in statements)
    assert "With $\\lambda = 0$, AdamW is the same algorithm as Adam." in statements
    (limit, *_) = claims.propositions(optgen.load("adabound"))
    assert r"\lim_{t \to \infty} \eta_l = \gamma^*" in limit.statement  # lower_bound is \eta_l, final_lr \gamma^*


# --------------------------------------------------------------------------- cli
def test_doc_writes_tex(tmp_path):
    out = tmp_path / "sheet.tex"
    assert main(["doc", "adam", "sgd", "-o", str(out)]) == 0
    text = out.read_text()
    assert r"\section{Adam}" in text and r"\section{SGD}" in text and "Adan" not in text


@needs_tex
def test_doc_writes_pdf(tmp_path):
    out = tmp_path / "sheet.pdf"
    assert main(["doc", "lion", "-o", str(out)]) == 0
    assert "Lion" in "\n".join(pdf_text(out.read_bytes()))


def test_doc_refuses_other_suffixes(tmp_path):
    assert main(["doc", "adam", "-o", str(tmp_path / "sheet.docx")]) == 2
