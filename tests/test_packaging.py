"""Triton is optional: a CPU-only install (no triton) builds, checks, compiles and steps
(fused=True on CPU runs the C++ kernels), and the Triton path says what to install. Run in a subprocess where `import triton` fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BLOCK_TRITON = """
import importlib.abc, sys

class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTriton())
for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
    del sys.modules[name]
"""

WITHOUT_TRITON = """
import sys
import torch
import optgen
from optgen.cli import main

out = sys.argv[1]
assert main(["check", "adam", "adan"]) == 0
assert main(["build", "adam", "lamb", "--out", out]) == 0  # every backend renders, Triton's included

spec = optgen.load(optgen.catalog.specs_dir() / "adan.yaml")
for cls in (optgen.optimizers.Adam, optgen.compile(spec)):
    for foreach in (False, True):
        p = torch.ones(5, requires_grad=True)
        opt = cls([p], lr=0.1, foreach=foreach)
        for _ in range(3):
            opt.zero_grad()
            (p * p).sum().backward()
            opt.step()
        assert p.abs().max() < 1, (cls, foreach)

for cls in (optgen.optimizers.Adam, optgen.compile(spec)):  # CPU tensors: the C++ kernels, no triton
    p, q = torch.ones(5, requires_grad=True), torch.ones(5, requires_grad=True)
    p.grad, q.grad = torch.arange(5.0), torch.arange(5.0)
    cls([p], lr=0.1, fused=True).step()
    cls([q], lr=0.1, foreach=True).step()
    assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), (cls, p, q)

import os
os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors on the Triton path (as a GPU would be): needs triton
for cls in (optgen.optimizers.Adam, optgen.compile(spec)):
    p = torch.ones(5, requires_grad=True)
    p.grad = torch.ones(5)
    try:
        cls([p], lr=0.1, fused=True).step()
    except ModuleNotFoundError as exc:
        print("FUSED:", exc)
    else:
        raise AssertionError("fused=True stepped on the Triton path without triton")
print("TRITON IMPORTED:", "triton" in sys.modules)
"""


def test_cpu_install_without_triton(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(BLOCK_TRITON) + textwrap.dedent(WITHOUT_TRITON))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / "generated"
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fused = [line for line in result.stdout.splitlines() if line.startswith("FUSED:")]
    assert len(fused) == 2
    for line in fused:
        assert "triton is not installed" in line and "pip install 'optgen[triton]'" in line
    assert "TRITON IMPORTED: False" in result.stdout
    assert (out / "triton" / "adam.py").is_file() and (out / "triton" / "lamb.py").is_file()


def test_triton_is_an_extra_not_a_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("triton")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("triton") for d in extras["triton"])
    assert {"matplotlib", "scikit-learn"} <= {d.split(">")[0].split("=")[0] for d in extras["workbench"]}
