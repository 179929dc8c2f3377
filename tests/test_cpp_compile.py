"""Compiling the C++ kernels: the per-user cache (digest names, verification before loading,
atomic replacement under concurrent compiles), the ISA flags in the key, the error without a
compiler, and `optgen build` never compiling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpp_harness import _cpu_kernels, needs_compiler  # noqa: F401

import optgen
from optgen.backends import cpp
from optgen.backends.cpp import compiler, runtime
from optgen.errors import SetupError

ROOT = Path(__file__).resolve().parent.parent


def _source(name: str = "lion", dtype: str = "torch.float32") -> str:
    spec = optgen.load(name)
    return cpp.source(spec, spec.default_options(), {"param": dtype})


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    folder = tmp_path / "xdg"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    monkeypatch.setattr(compiler, "_LOADED", {})
    return folder / "optgen"


def _libraries(folder: Path) -> list[Path]:
    return sorted(folder.glob("cpp_*.so"))


@needs_compiler
def test_compiled_once_then_loaded_from_the_cache(fresh_cache, monkeypatch):
    compiler.load(_source(), "lion")
    (library,) = _libraries(fresh_cache)
    assert library.stat().st_mode & 0o077 == 0
    assert not [p for p in fresh_cache.iterdir() if p.name.startswith(".")]  # no temporary left
    monkeypatch.setattr(compiler, "_LOADED", {})
    monkeypatch.setattr(compiler, "_compile", lambda *a: pytest.fail("compiled again"))
    compiler.load(_source(), "lion")


@needs_compiler
def test_a_swapped_library_is_not_run(fresh_cache, monkeypatch):
    """A file under a kernel's name that reports another digest is recompiled, never used."""
    sgd = compiler.load(_source("sgd"), "sgd")
    (sgd_path,) = _libraries(fresh_cache)
    lion_path, lion_digest = compiler.library_path(_source("lion"), "lion")
    shutil.copy(sgd_path, lion_path)  # never loaded under this name in this process
    compiled = []
    real = compiler._compile
    monkeypatch.setattr(compiler, "_compile", lambda *a: compiled.append(a) or real(*a))
    lion = compiler.load(_source("lion"), "lion")
    assert compiled
    assert lion.optgen_source_digest().decode() == lion_digest != sgd.optgen_source_digest().decode()


@needs_compiler
def test_a_linked_library_is_refused(fresh_cache, tmp_path, monkeypatch):
    compiler.load(_source(), "lion")
    (library,) = _libraries(fresh_cache)
    elsewhere = tmp_path / "planted.so"
    library.rename(elsewhere)
    library.symlink_to(elsewhere)
    monkeypatch.setattr(compiler, "_LOADED", {})
    with pytest.raises(SetupError, match="not a private file"):
        compiler.load(_source(), "lion")


@needs_compiler
def test_flags_and_dtype_are_part_of_the_key(fresh_cache, monkeypatch):
    compiler.load(_source(), "lion")
    compiler.load(_source(dtype="torch.bfloat16"), "lion")
    monkeypatch.setattr(compiler, "flags", lambda: compiler.config.BASE_FLAGS)  # another machine's ISA level
    compiler.load(_source(), "lion")
    assert len(_libraries(fresh_cache)) == 3


def test_no_compiler_is_a_setup_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-optgen")
    with pytest.raises(SetupError, match="no C.. compiler was found"):
        compiler.compiler()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SetupError, match="apt install g\\+\\+"):
        compiler.compiler()


def test_isa_level_is_portable():
    flags = compiler.isa_flags()
    assert "-march=native" not in flags
    assert all(f in ("-mtune=generic",) or f.startswith("-march=x86-64") for f in flags)
    assert "-ffp-contract=off" in compiler.flags()


def test_build_renders_without_compiling(monkeypatch):
    """`optgen build` renders generated/cpp/*.cpp (reproducibly) and never runs a compiler."""
    monkeypatch.setattr(compiler, "compiler", lambda: pytest.fail("build ran the compiler"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("build ran a process"))
    spec = optgen.load("lamb")
    first, second = cpp.render(spec), cpp.render(spec)
    assert first == second and list(first) == ["lamb.cpp"]
    assert (ROOT / "generated" / "cpp" / "lamb.cpp").read_text() == first["lamb.cpp"]


@needs_compiler
def test_concurrent_processes_share_one_compile(fresh_cache):
    """Two processes compiling the same kernel at once: each loads a whole library."""
    script = textwrap.dedent(
        """
        import optgen
        from optgen.backends import cpp
        from optgen.backends.cpp import compiler
        spec = optgen.load("radam")
        lib = compiler.load(cpp.source(spec, spec.default_options(), {"param": "torch.float64"}), "radam")
        print(lib.optgen_layout(0))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o[0].strip() for o in outs] == ["4", "4"]
    assert len(_libraries(fresh_cache)) == 1


@needs_compiler
def test_a_compile_error_is_reported(fresh_cache):
    with pytest.raises(SetupError, match="compiler failed"):
        compiler.load("this is not C++", "broken")
    assert not list(fresh_cache.iterdir())


@needs_compiler
def test_cache_folder_must_be_private(tmp_path, monkeypatch):
    folder = tmp_path / "xdg"
    (folder / "optgen").mkdir(parents=True)
    (folder / "optgen").chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    monkeypatch.setattr(compiler, "_LOADED", {})
    monkeypatch.setattr(runtime, "_KERNELS", {})
    with pytest.raises(SetupError, match="written by others"):
        runtime.fused_step("sgd", params=[torch.zeros(2)], grads=[torch.zeros(2)],
                           states={"momentum_buffer": [torch.zeros(2)]}, steps=[1],
                           hyper={"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0},
                           options={}, global_values={}, maximize=False)  # fmt: skip


@needs_compiler
def test_a_new_process_finds_the_kernel_without_lowering(fresh_cache, monkeypatch):
    """The cache's index maps (spec text, options, dtypes, optgen's code) to the library: a
    later process loads it without parsing, lowering or rendering the spec."""
    from optgen.backends.cpp import kernels

    monkeypatch.setattr(runtime, "_KERNELS", {})
    first = runtime._kernel("lion", {}, {"param": "torch.float32"})
    assert list(fresh_cache.glob("cpp_index_*.txt"))
    monkeypatch.setattr(runtime, "_KERNELS", {})
    monkeypatch.setattr(compiler, "_LOADED", {})
    monkeypatch.setattr(kernels, "build", lambda *a: pytest.fail("lowered again"))
    monkeypatch.setattr(runtime, "_spec", lambda *a: pytest.fail("parsed again"))
    again = runtime._kernel("lion", {}, {"param": "torch.float32"})
    assert again.arrays == first.arrays == ["param", "grad", "exp_avg"]
    assert again.hypers == first.hypers


@needs_compiler
def test_an_index_naming_a_missing_library_recompiles(fresh_cache, monkeypatch):
    monkeypatch.setattr(runtime, "_KERNELS", {})
    runtime._kernel("sgd", {}, {"param": "torch.float32"})
    for library in _libraries(fresh_cache):
        library.unlink()
    monkeypatch.setattr(runtime, "_KERNELS", {})
    monkeypatch.setattr(compiler, "_LOADED", {})
    kernel = runtime._kernel("sgd", {}, {"param": "torch.float32"})
    assert kernel.arrays == ["param", "grad", "momentum_buffer"] and _libraries(fresh_cache)
