"""docs/tutorial.md runs as written: its YAML files are written, its `$ optgen ...` commands
run (exit 0) and its Python blocks execute, in order, in an empty folder."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from optgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str, str]]:
    """(language, info after it, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(TUTORIAL.read_text())]


def test_tutorial_has_each_kind_of_block():
    kinds = [lang for lang, _, _ in blocks()]
    assert kinds.count("python") >= 3 and kinds.count("console") >= 4 and "yaml" in kinds


def test_the_example_is_the_tutorials_spec():
    (body,) = [body for lang, info, body in blocks() if lang == "yaml"]
    assert body == (ROOT / "docs" / "examples" / "yogi.yaml").read_text()


def test_tutorial_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    pytest.importorskip("pytorch_optimizer")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    ran = 0
    for lang, info, body in blocks():
        if lang == "yaml":
            (name,) = re.findall(r"file=(\S+)", info)
            (tmp_path / name).write_text(body)
        elif lang == "console":
            for line in body.splitlines():
                assert line.startswith("$ optgen "), line
                argv = shlex.split(line[len("$ optgen ") :])
                assert main(argv) == 0, line
                ran += 1
        elif lang == "python":
            exec(compile(body, f"{TUTORIAL}:block", "exec"), namespace)  # noqa: S102 - this repository's own page
            ran += 1
    assert ran >= 8
    assert (tmp_path / "yogi-sheet.tex").read_text().count(r"\section") >= 1
