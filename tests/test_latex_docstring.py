"""The docstring math: one `.. math::` block per spec, safe inside a raw docstring."""

import ast

import pytest

import optgen
from optgen import catalog
from optgen.backends.latex.docstring import math_rst


@pytest.mark.parametrize("name", catalog.names())
def test_math_rst_is_a_math_block_that_fits_a_raw_docstring(name):
    spec = optgen.load(name)
    rst = math_rst(spec, indent="    ")
    assert rst.startswith("    .. math::\n")
    assert r"\begin{aligned}" in rst and rst.rstrip().endswith(r"\end{aligned}")
    source = f'def f():\n    r"""Doc.\n\n{rst}\n    """\n'
    doc = ast.get_docstring(ast.parse(source).body[0], clean=False)
    assert r"\leftarrow" in doc and r"\theta_{t}" in doc


def test_adam_box_has_time_indices_and_options():
    rst = math_rst(optgen.load("adam"))
    assert r"m_{t} \leftarrow \beta_1 m_{t-1} + \left(1 - \beta_1\right) g_{t}" in rst
    assert r"\textbf{if}\ \textit{amsgrad}" in rst
    assert r"v_{t}^{\max} \leftarrow \max\left(v_{t}, v_{t-1}^{\max}\right)" in rst
