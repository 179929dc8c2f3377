"""A bounded loop in LaTeX prints as a paper writes it: the statement that runs it is one
function application (O <- NS_k(O)), and the function is defined once, below the
algorithm, from the loop's own body."""

from __future__ import annotations

import re
import shutil

import pytest

import optgen
from optgen.backends import latex
from optgen.backends.latex import algorithm
from optgen.backends.latex.pdf import compile_in, pdf_text

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")

NS_APPLY = r"O \leftarrow \mathrm{NS}_{k}(O)"
NS_DEFINITION = (
    r"\mathrm{NS}_{k}(O)\text{: }k\text{ times }O \leftarrow a O + \left(b A + c A^{2}\right)\,O,"
    r"\ \text{with }A = O\,O^{\top}"
)

HEADER = """
name: {name}
summary: a synthetic spec with a bounded loop.
paper: none
parity: independent
hyperparameters:
  lr:          {{default: 0.1, range: "(0, inf)", tex: '\\gamma'}}
  eps:         {{default: 1.0e-3, range: "(0, inf)", tex: '\\epsilon'}}
  power_iters: {{default: 3, range: "[0, 10]", tex: n}}
options:
  damped: false
state:
  m: {{init: 0, tex: m}}
update: |
"""

# a power iteration on the Gram matrix of the momentum: its own body, its own name (Power_n)
POWER = """
  m = 0.9 * m + grad
  V = m
  for _ in range(power_iters):
      W = m @ (m.T @ V)
      V = W / maximum(norm(W), eps)
  param = param - lr * V
tex: {V: v, W: w}
"""

# two loops with literal counts (a generic name, numbered), one with an `if` in its body
TWO_LOOPS = """
  m = 0.9 * m + grad
  V = m
  for _ in range(4):
      V = 0.5 * V + V @ (V.T @ V)
  U = m
  for _ in range(2):
      if damped:
          U = 0.5 * U @ (U.T @ m)
      else:
          U = U @ (U.T @ m)
  param = param - lr * (V + U)
tex: {V: v, U: u}
"""


def _spec(tmp_path, name: str, body: str):
    path = tmp_path / f"{name.lower()}.yaml"
    path.write_text(HEADER.format(name=name) + body)
    return optgen.load(path)


def test_muon_box_applies_ns_once_and_defines_it_once():
    box = "\n".join(algorithm.box_lines(optgen.load("muon")))
    assert box.count(NS_APPLY) == 1
    assert box.count(r"\textit{where } " + NS_DEFINITION) == 1
    assert box.count(r"\mathrm{NS}_{k}") == 2  # the application and the definition, nothing else
    assert r"\textbf{repeat}" not in box and r"A \leftarrow" not in box  # no loop body in the algorithm


def test_muon_equations_apply_ns_to_the_oriented_value_and_define_it_after_where():
    equations = algorithm.align_env(optgen.load("muon"))
    # the value after the orientation `where` (its primes depend on how often O was assigned)
    applied = re.search(r"\{O\}('+) &= \\mathrm\{NS\}_\{k\}\(\{O\}('+)\)", equations)
    assert applied and len(applied[1]) == len(applied[2]) + 1
    head, _, tail = equations.partition(r"\intertext{where}")
    assert r"\mathrm{NS}_{k}(O) &" + NS_DEFINITION.removeprefix(r"\mathrm{NS}_{k}(O)") in tail
    assert r"A &=" not in head and r"\mathrm{NS}" not in tail.replace(r"\mathrm{NS}_{k}(O) &", "", 1)


def test_muon_docstring_has_the_function_and_its_definition():
    import optgen.optimizers

    doc = optgen.optimizers.Muon.__doc__
    assert NS_APPLY in doc and NS_DEFINITION in doc


def test_a_power_iteration_prints_its_own_body_and_name(tmp_path):
    spec = _spec(tmp_path, "PowerDemo", POWER)
    box = "\n".join(algorithm.box_lines(spec))
    assert r"v \leftarrow \mathrm{Power}_{n}(v)" in box
    # w is read twice: a named clause; the body's own operations, not Muon's polynomial
    definition = (
        r"\textit{where } \mathrm{Power}_{n}(v)\text{: }n\text{ times }"
        r"v \leftarrow \frac{w}{\max\left(\epsilon, \left\lVert w \right\rVert\right)},"
        r"\ \text{with }w = m_{t}\,m_{t}^{\top}\,v"
    )
    assert box.count(definition) == 1, box
    assert r"\mathrm{NS}" not in box and "A^{2}" not in box
    equations = algorithm.align_env(spec)
    assert r"{v}' &= \mathrm{Power}_{n}(v)" in equations
    assert r"\intertext{where}" in equations and r"w = m_{t}\,m_{t}^{\top}\,v" in equations


def test_two_loops_get_two_functions_and_an_if_body_prints_as_rows(tmp_path):
    spec = _spec(tmp_path, "TwoLoops", TWO_LOOPS)
    box = "\n".join(algorithm.box_lines(spec))
    assert r"v \leftarrow \mathrm{Iter}_{4}(v)" in box
    assert r"u \leftarrow \mathrm{Iter2}_{2}(u)" in box
    assert r"\mathrm{Iter}_{4}(v)\text{: }4\text{ times }v \leftarrow 0.5 v + v\,v^{\top}\,v" in box
    # the loop with an option inside is defined by its rows, the `if` kept
    lines = box.split("\n")
    head = lines.index(r"\textit{where } \mathrm{Iter2}_{2}(u)\text{: }2\text{ times}")
    assert lines[head + 1].endswith(r"\textbf{if}\ \textit{damped}")
    assert lines[head + 2].endswith(r"u \leftarrow 0.5 u\,u^{\top}\,m_{t}")
    assert lines[head + 3].endswith(r"\textbf{else}")
    # the equations choose the default (damped = false): one line
    equations = algorithm.align_env(spec)
    assert r"\mathrm{Iter2}_{2}(u) &\text{: }2\text{ times }u \leftarrow u\,u^{\top}\,m_{t}" in equations


@needs_tex
@pytest.mark.parametrize("which", ["muon", "PowerDemo", "TwoLoops"])
def test_the_documents_compile(which, tmp_path):
    bodies = {"PowerDemo": POWER, "TwoLoops": TWO_LOOPS}
    spec = optgen.load(which) if which == "muon" else _spec(tmp_path, which, bodies[which])
    out = tmp_path / "tex"
    out.mkdir()
    text = "".join(pdf_text(compile_in(latex.render_spec(spec), out).read_bytes()))
    assert "times" in text and "where" in text


# a loop whose body never reads the value it carries (it only assigns it): the value is the
# one assigned before the loop, not the temporary
UNREAD = """
  m = 0.9 * m + grad
  V = m
  for _ in range(power_iters):
      W = m @ m.T
      V = W @ m
  param = param - lr * V
tex: {V: v, W: w}
"""


def test_a_loop_that_only_assigns_its_value_applies_to_that_value(tmp_path):
    spec = _spec(tmp_path, "Unread", UNREAD)
    box = "\n".join(algorithm.box_lines(spec))
    assert r"v \leftarrow \mathrm{Power}_{n}(v)" in box
    assert r"\mathrm{Power}_{n}(v)\text{: }n\text{ times }v \leftarrow m_{t}\,m_{t}^{\top}\,m_{t}" in box
