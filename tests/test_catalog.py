"""The catalog as a whole: it loads, checks quickly, and generated/ is fresh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import optgen
from optgen import catalog
from optgen.lower import lower_all

NAMES = catalog.names()
EXPECTED = {
    "sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "nadam",
    "radam",
    "adamax",
    "adabound",
    "adan",
    "setadam",
    "adabelief",
    "padam",
    "lion",
    "lamb",
    "lars",
}


def test_catalog_has_every_seed_algorithm():
    assert EXPECTED <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete_and_named_after_its_file(name):
    spec = optgen.load(name)
    assert spec.name.lower() == name, "the class name lowercased is the file name (optgen.optimizers relies on it)"
    assert spec.summary and spec.paper and spec.parity
    for h in spec.hyperparameters.values():
        assert h.captured or all(d is None or h.range.contains(d) for d in h.default)  # None: `none: dtype_eps`
        assert all(h.tex), f"{name}: hyperparameter {h.key} has no tex symbol"
    report = optgen.check(spec)
    assert report.ok, [str(f) for f in report.findings]
    assert lower_all(spec)


def test_check_of_the_whole_catalog_passes_from_the_command_line():
    """Speed is measured by the command's own summary line ("checked N spec(s) in ..."), not
    asserted here: timings on a shared 2-core machine are noise."""
    result = subprocess.run([sys.executable, "-m", "optgen.cli", "check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checked {len(catalog.names())} spec(s)" in result.stdout


def test_generated_files_are_fresh():
    """A build in a bare environment (no venv on PATH, nothing but the interpreter) writes
    exactly the committed files: what `optgen build` writes never depends on PATH or shell."""
    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C"}
    bare.update({k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ})  # a worktree's checkout
    result = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "build", "--check"], capture_output=True, text=True, check=False, env=bare
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nrun `optgen build` and commit generated/"


def test_show_prints_phases_and_hoisted_scalars():
    from optgen.lower import lower
    from optgen.show import show

    text = show(lower(optgen.load("setadam")))
    assert "host scalars" in text and "pass 1 of 2 (reduction pass)" in text and "pass 2 of 2 (update pass)" in text
    assert "the map is monotone, so one reduction pass fewer" in text
