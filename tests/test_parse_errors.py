"""Bad specs are refused with `file:line:col: message`, exit 2, no traceback, nothing run."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import optgen
from optgen.errors import SpecError
from optgen.parse import loads

BASE = textwrap.dedent(
    """\
    name: Tiny
    summary: A tiny momentum method.
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)"}
      betas: {default: [0.9, 0.99], names: [beta1, beta2], range: "[0, 1)"}
    options:
      flip: false
    state:
      buf: {init: 0}
    update: |
      buf = beta1 * buf + (1 - beta1) * grad
      if flip:
          step_dir = -buf
      else:
          step_dir = buf
      param = param - lr * beta2 * step_dir
    """
)


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        loads(text, "t.yaml")
    return info.value


def test_base_spec_loads_and_checks():
    spec = loads(BASE, "t.yaml")
    assert optgen.check(spec).ok


@pytest.mark.parametrize(
    "old, new, line, col, words",
    [
        (
            "param = param - lr * beta2 * step_dir",
            "param = param - lr * gamma * step_dir",
            17,
            24,
            "unknown name `gamma`",
        ),
        ("buf = beta1 * buf", "buf = beta1 * sqrt(buf, 2)", 12, 17, "sqrt() takes 1 argument, got 2"),
        ("buf = beta1 * buf", "buf = beta1 * foo(buf)", 12, 17, "unknown function `foo`"),
        ('range: "(0, inf)"', 'range: "(0, inf"', 5, 29, "bad range"),
        ("summary: A tiny", "summry: A tiny", 2, 1, "unknown key 'summry'"),
        ("lr: {default: 0.1,", "lr: {default: fast,", 5, 17, "expected a number"),
        ("buf: {init: 0}", "sqrt: {init: 0}", 10, 3, "shadows the built-in function `sqrt`"),
        ("buf: {init: 0}", "class: {init: 0}", 10, 3, "is a Python keyword"),
        ("      step_dir = buf", "      lr = buf", 16, 7, "`lr` is a hyperparameter and cannot be assigned"),
        ("  flip: false", "  flip: 3", 8, 9, "must be true or false"),
        ("  if flip:", "  if beta1:", 13, 6, "`if` takes an option"),
        ("buf = beta1 * buf", "buf = beta1 & buf", 12, 9, "operator & is not allowed"),
        ("buf = beta1 * buf", "buf = beta1.real * buf", 12, 9, "attribute `.real` is not allowed"),
        ("buf = beta1 * buf", "buf = beta1 * buf[0]", 12, 17, "indexing"),
        ("buf = beta1 * buf", "buf = 2**100000 * buf", 12, 9, "exponent 100000 is too large"),
        ("buf = beta1 * buf", "buf = beta1 / 0 * buf", 12, 9, "division by zero"),
        ("buf = beta1 * buf", "buf = sqrt(-1) * buf", 12, 9, "not a finite real number"),
        ("buf = beta1 * buf", "buf = beta1 * * buf", 12, 17, "syntax error"),
        ("  lr: {default: 0.1", "  lr: {default: 0.1, names: [a, a]", 5, 29, "1 default value(s) but 2 name(s)"),
    ],
)
def test_errors_point_at_the_offending_thing(old, new, line, col, words):
    assert old in BASE, old
    err = error_of(BASE.replace(old, new, 1))
    assert words in err.message, err.message
    assert (err.loc.file, err.loc.line, err.loc.col) == ("t.yaml", line, col), str(err)
    assert re.match(r"^t\.yaml:\d+:\d+: ", str(err))


def test_duplicate_names_are_refused():
    err = error_of(BASE.replace("  buf: {init: 0}", "  buf: {init: 0}\n  lr: {init: 0}"))
    assert "duplicate name `lr`" in err.message and err.loc.line == 11


def test_duplicate_yaml_keys_are_refused():
    err = error_of(BASE.replace("summary: A tiny", "paper: x\npaper: y\nsummary: A tiny"))
    assert "duplicate key 'paper'" in err.message and err.loc.line == 3


def test_hostile_expression_runs_nothing(tmp_path: Path):
    marker = tmp_path / "pwned"
    hostile = BASE.replace("buf = beta1 * buf", f"buf = __import__('os').system('touch {marker}') * buf")
    spec_file = tmp_path / "hostile.yaml"
    spec_file.write_text(hostile)
    result = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "check", str(spec_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.match(rf"^{re.escape(str(spec_file))}:12:\d+: ", result.stderr), result.stderr
    assert not marker.exists()


def test_yaml_tags_and_merge_keys_are_refused():
    err = error_of(
        BASE.replace("summary: A tiny momentum method.", "summary: !!python/object/apply:os.system ['true']")
    )
    assert "tag" in err.message and err.loc.line == 2
    err = error_of(BASE.replace("  lr: {default: 0.1", "  base: &b {default: 0.1}\n  lr: {<<: *b, default: 0.1"))
    assert "merge keys" in err.message


def test_extends_cycle_and_missing_parent(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: A\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: B\n")
    with pytest.raises(SpecError) as info:
        optgen.load(tmp_path / "a.yaml")
    assert "cyclic `extends`" in info.value.message and info.value.loc.line == 1
    (tmp_path / "c.yaml").write_text("name: C\nextends: nosuchspec\n")
    with pytest.raises(SpecError) as info:
        optgen.load(tmp_path / "c.yaml")
    assert "no catalog spec named 'nosuchspec'" in info.value.message and info.value.loc.line == 2


def test_extends_overrides_and_update_replace(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(
        textwrap.dedent(
            """\
            extends: base.yaml
            name: Child
            hyperparameters:
              lr: {default: 0.5, range: "(0, inf)"}
            update_replace:
              - old: "param = param - lr * beta2 * step_dir"
                new: "param = param - lr * step_dir"
            """
        )
    )
    child = optgen.load(tmp_path / "child.yaml")
    assert child.name == "Child" and child.hyperparameters["lr"].default == (0.5,)
    report = optgen.check(child)
    assert report.ok, [str(f) for f in report.findings]
    (tmp_path / "bad.yaml").write_text(
        "extends: base.yaml\nname: Bad\nupdate_replace:\n  - old: nothing like this\n    new: x = 1\n"
    )
    with pytest.raises(SpecError) as info:
        optgen.load(tmp_path / "bad.yaml")
    assert "no line of the parent's update reads" in info.value.message and info.value.loc.line == 4


def test_error_inside_replaced_line_points_at_the_child(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text(
        'extends: base.yaml\nname: Child\nupdate_replace:\n  - old: "param = param - lr * beta2 * step_dir"\n    new: "param = param - lr * nope"\n'
    )
    with pytest.raises(SpecError) as info:
        optgen.load(tmp_path / "child.yaml")
    assert "unknown name `nope`" in info.value.message
    assert info.value.loc.file.endswith("child.yaml") and info.value.loc.line == 5


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("      step_dir = buf\n", "      pass\n", "`step_dir` is used before it is assigned"),
        ("param = param - lr * beta2 * step_dir", "param = param - lr * beta2 * grad", "state `buf` never influences"),
        ("  flip: false", "  flip: false\n  unused: true", "option `unused` is never used"),
        ('{default: 0.1, range: "(0, inf)"}', '{default: -0.1, range: "(0, inf)"}', "outside its range"),
    ],
)
def test_checker_findings_carry_locations(old, new, words):
    assert old in BASE
    report = optgen.check(loads(BASE.replace(old, new, 1), "t.yaml"))
    assert not report.ok
    messages = [f for f in report.findings if words in f.message]
    assert messages, [str(f) for f in report.findings]
    assert messages[0].loc is not None and messages[0].loc.file == "t.yaml" and messages[0].loc.line > 0


def test_cli_exit_codes(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    unused = tmp_path / "unused.yaml"
    unused.write_text(BASE.replace("param = param - lr * beta2 * step_dir", "param = param - lr * beta2 * grad"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("lr * beta2", "lr * betaX"))
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "optgen.cli", *a], capture_output=True, text=True, check=False
    )
    claims_too_much = tmp_path / "too_much.yaml"
    claims_too_much.write_text("extends: adamw\nname: TooMuch\nclaims:\n  - equivalent_to: adam\n    expect: proven\n")
    assert run("check", str(good)).returncode == 0
    refused = run("check", str(unused))  # a located refusal: the spec is bad input
    assert refused.returncode == 2 and "unused.yaml:" in refused.stdout, refused.stdout + refused.stderr
    assert run("check", str(claims_too_much)).returncode == 1  # a claim's verdict is not what it expects
    result = run("check", str(bad))
    assert result.returncode == 2 and "unknown name `betaX`" in result.stderr and "Traceback" not in result.stderr


def test_global_norm_of_a_per_tensor_reduction_is_refused_where_it_stands():
    """A global_norm of a state runs since issue 10 item 3 (tests/test_scalars.py); one of a
    per-tensor reduction cannot (it would need every tensor's pass first)."""
    text = BASE.replace(
        "param = param - lr * beta2 * step_dir", "param = param - lr * beta2 * step_dir / global_norm(buf - sum(buf))"
    )
    report = optgen.check(loads(text, "t.yaml"))
    found = [f for f in report.findings if "may not read a per-tensor reduction" in f.message]
    assert found and found[0].loc.line == 17, [str(f) for f in report.findings]
