"""Property tests: random and mutated specs either load or raise SpecError with a location;
the checker then either reports or raises SpecError. Nothing else escapes."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optgen
from optgen import catalog
from optgen.errors import SpecError
from optgen.parse import loads

CATALOG_TEXTS = [
    catalog.path_of(n).read_text() for n in catalog.names() if "extends:" not in catalog.path_of(n).read_text()
]
TOKENS = [
    "grad",
    "param",
    "step",
    "lr",
    "beta1",
    "sqrt(",
    "sum(",
    "norm(",
    "where(",
    "global_norm(",
    ")",
    "(",
    "*",
    "**",
    "/",
    "+",
    "-",
    "=",
    ":",
    " ",
    "\n",
    "    ",
    "if ",
    "else:",
    "not ",
    "0",
    "1e-8",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    '"',
    "&a",
    "*a",
    "!!python/name:os.system",
    "<<",
    "__import__",
    ".",
    "#",
    "\t",
    "\\",
    "inf",
    "nan",
    "amin(",
    "clamp(",
    "numel(param)",
    "exp_avg",
    "init:",
    "scope: tensor",
    "when:",
    "key:",
    "extends: adam",
    "names:",
]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_and_check(text: str) -> None:
    try:
        spec = loads(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.loc is not None and exc.loc.file.endswith(".yaml") and exc.loc.line >= 1 and exc.loc.col >= 1, str(
            exc
        )
        assert str(exc).startswith(f"{exc.loc}: ")
        return
    try:
        report = optgen.check(spec)
    except SpecError as exc:
        assert exc.loc is not None, str(exc)
        return
    for finding in report.findings:
        assert finding.message


@st.composite
def mutated_spec(draw):
    text = draw(st.sampled_from(CATALOG_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "dupline", "dropline", "swap"]))
        lines = text.split("\n")
        if kind in ("dupline", "dropline", "swap") and len(lines) > 2:
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if kind == "dupline":
                lines.insert(i, lines[i])
            elif kind == "dropline":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
            continue
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        token = draw(st.sampled_from(TOKENS) | st.text(string.printable, max_size=3))
        if kind == "insert":
            text = text[:pos] + token + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)) :]
        else:
            text = text[:pos] + token + text[pos + len(token) :]
    return text


@SETTINGS
@given(mutated_spec())
def test_mutated_catalog_specs_load_or_fail_cleanly(text):
    load_and_check(text)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12))
yaml_values = st.recursive(
    yaml_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=12,
)


@st.composite
def random_spec(draw):
    import yaml

    doc = {
        "name": draw(st.sampled_from(["Opt", "opt", "X1", "", "Opt Two"])),
        "hyperparameters": draw(st.one_of(yaml_values, st.just({"lr": {"default": 0.1, "range": "(0, inf)"}}))),
        "state": draw(st.one_of(yaml_values, st.just({"m": {"init": 0}}))),
        "update": draw(
            st.one_of(
                st.text(alphabet="".join(TOKENS[:40]) + "mab", max_size=60),
                st.just("m = m + grad\nparam = param - lr * m\n"),
            )
        ),
    }
    if draw(st.booleans()):
        doc[draw(st.text(max_size=6))] = draw(yaml_values)
    return yaml.safe_dump(doc, allow_unicode=True)


@SETTINGS
@given(random_spec())
def test_random_specs_load_or_fail_cleanly(text):
    load_and_check(text)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_cleanly(text):
    load_and_check(text)
