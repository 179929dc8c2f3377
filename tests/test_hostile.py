"""Hostile specs and hostile places (issue 9, section 3; and the control characters and
non-ASCII names of section 2).

Each hostile spec goes through the command line in a fresh process, which must answer with
exit 2 and a `file:line:col: message` (no traceback), within a memory budget (peak RSS of the
process, measured by the kernel, against a run on a small valid spec), without writing or
deleting a file. A hang fails through the hard timeout. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import optgen
from optgen import build, catalog
from optgen.errors import SetupError

ROOT = Path(__file__).resolve().parents[1]
HARD_TIMEOUT_S = 60  # a hang; the budget the issue sets is 5 s, far below this
MEMORY_BUDGET_KB = 300 * 1024  # peak RSS above a run on a small valid spec

SMALL = """\
name: Hostile
summary: A small valid spec.
hyperparameters:
  lr: {default: 0.001, range: "(0, inf)"}
state:
  m: {init: 0}
update: |
  m = m + grad
  param = param - lr * UPDATE
"""


def small(update: str = "m") -> str:
    return SMALL.replace("UPDATE", update)


# --------------------------------------------------------------------------- running the CLI
class Run:
    def __init__(self, code: int, out: str, err: str, peak_kb: int):
        self.code, self.out, self.err, self.peak_kb = code, out, err, peak_kb


def cli(args: list[str], cwd: Path, env: dict | None = None) -> Run:
    """`python -m optgen.cli ARGS` in a fresh process; its own peak RSS from wait4."""
    out_path, err_path = cwd.parent / f".{cwd.name}.out", cwd.parent / f".{cwd.name}.err"
    full_env = {**os.environ, "XDG_CACHE_HOME": str(cwd.parent / ".cache"), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "optgen.cli", *args], cwd=cwd, stdout=out, stderr=err, env=full_env
        )
    deadline = time.monotonic() + HARD_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            pytest.fail(f"optgen {' '.join(args)} did not finish within {HARD_TIMEOUT_S}s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(
        proc.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), usage.ru_maxrss
    )
    out_path.unlink()
    err_path.unlink()
    return run


def snapshot(folder: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(folder)): (p.is_symlink(), p.is_dir() or p.read_bytes()) for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def baseline_kb(tmp_path_factory) -> int:
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "ok.yaml").write_text(small())
    run = cli(["check", "ok.yaml"], folder)
    assert run.code == 0, run.out + run.err
    return run.peak_kb


def assert_refused(run: Run, file: str, message: str, baseline_kb: int, line: int | None = None) -> None:
    text = run.out + run.err
    assert run.code == 2, text
    assert "Traceback" not in text, text
    found = re.search(rf"^{re.escape(file)}:(\d+):(\d+): (.*)$", text, re.MULTILINE)
    assert found, f"no located message for {file}: {text}"
    assert re.search(message, found.group(3)), found.group(3)
    if line is not None:
        assert int(found.group(1)) == line, text
    assert run.peak_kb - baseline_kb < MEMORY_BUDGET_KB, f"peak RSS {run.peak_kb} kB (baseline {baseline_kb} kB)"


# --------------------------------------------------------------------------- hostile specs
def alias_bomb() -> str:
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return small() + "claims:\n  - bomb:\n" + "\n".join("  " + line for line in lines) + "\n"


def nested_powers() -> str:
    expr = "2"
    for _ in range(12):
        expr = f"({expr})**64"
    return small(expr)


def options(n: int) -> str:
    flags = "".join(f"  o{i}: false\n" for i in range(n))
    body = "".join(f"  if o{i}:\n      m = m * 0.5\n" for i in range(n))
    return (
        SMALL.replace("state:", f"options:\n{flags}state:")
        .replace("  param = param", body + "  param = param")
        .replace("UPDATE", "m")
    )


def balanced_sum(leaves: int) -> str:
    terms = ["m"] * leaves
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])]
    return terms[0]


def dependent_chain(n: int) -> str:
    """Each value uses the one before five times: inlined, it grows as 5**n."""
    body = "".join(
        f"  v{i} = sqrt(abs(v{i - 1}) + {i}) * exp(-abs(v{i - 1})) + maximum(v{i - 1}, grad) / (abs(v{i - 1}) + {i})"
        f" + where(v{i - 1} > grad, m, v{i - 1})\n"
        for i in range(1, n)
    )
    return small(f"v{n - 1}").replace("  param = param", f"  v0 = m\n{body}  param = param")


HOSTILE = {
    # name: (spec text, message, line or None)
    "alias_bomb": (alias_bomb(), r"more than \d+ YAML values once aliases are expanded", None),
    "deep_yaml": (small() + "notes: " + "[" * 10_000 + "]" * 10_000 + "\n", r"nested more than \d+ levels", 10),
    "nested_powers": (nested_powers(), r"constant is too large", 9),
    "where_sum_of_constant": (small("where(2 > sum(3), m, grad)"), r"sum\(\) of a constant", 9),
    "where_huge_constant": (small("where(2 > exp(exp(exp(100))), m, grad)"), r"not a finite float64", 9),
    "global_norm_of_constant": (small("where(2 > global_norm(3), m, grad)"), r"global_norm\(\) of a constant", 9),
    "long_chain_expression": (small("+".join(["m"] * 20_000)), r"RecursionError|too large|nested too deeply", None),
    "deep_expression": (small("+".join(["m"] * 300)), r"nested too deeply", 9),
    "wide_expression": (small(balanced_sum(4096)), r"expression is too large", 9),
    "large_program": (
        SMALL.replace(
            "  param = param", "".join(f"  v{i} = {balanced_sum(128)}\n" for i in range(14)) + "  param = param"
        ).replace("UPDATE", "m"),
        r"program is too large",
        None,
    ),
    "sixteen_options": (options(16), r"too many options: at most 6", 12),
    "options_times_program_size": (
        options(6).replace("  m = m + grad", f"  m = m + grad + {balanced_sum(256)}"),
        r"too many options for an update this large",
        11,
    ),
    "long_dependent_chain": (dependent_chain(300), r"program is too large", None),
    "oversized_source": (small() + "notes: |\n" + "  x\n" * 100_000, r"larger than \d+ characters", 1),
    "nul_in_summary": (
        small().replace("summary: A small valid spec.", 'summary: "a\\0b"'),
        r"control character U\+0000",
        2,
    ),
    "escape_in_notes": (small() + 'notes: "\\e[2J"\n', r"control character U\+001B", 10),
    "bidi_override_in_doc": (
        small().replace('range: "(0, inf)"}', 'range: "(0, inf)", doc: "a\u202eb"}'),
        r"control character U\+202E",
        4,
    ),
    "fullwidth_name": (small().replace("  param = param", "  ｐａｒａｍ = param"), r"not plain ASCII", 9),
    "fullwidth_function": (small("ｓｑｒｔ(m * m)"), r"not plain ASCII", 9),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_spec_is_refused_quickly_with_its_place(tmp_path, baseline_kb, case):
    text, message, line = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "spec.yaml").write_text(text, encoding="utf-8")
    before = snapshot(tmp_path)
    run = cli(["check", "spec.yaml"], work)
    assert_refused(run, "spec.yaml", message, baseline_kb, line)
    run = cli(["build", "spec.yaml", "--out", "out"], work)
    assert_refused(run, "spec.yaml", message, baseline_kb, line)
    assert snapshot(tmp_path) == before


def test_a_long_extends_chain_is_refused(tmp_path, baseline_kb):
    (tmp_path / "c0.yaml").write_text(small())
    for i in range(1, 1500):
        (tmp_path / f"c{i}.yaml").write_text(f"extends: c{i - 1}.yaml\nname: C{i}\n")
    before = snapshot(tmp_path)
    run = cli(["check", "c1499.yaml"], tmp_path)
    text = run.out + run.err
    assert run.code == 2 and "Traceback" not in text, text
    assert re.search(r"^\S*c\d+\.yaml:1:10: `extends` chain is longer than 16 specs$", text, re.MULTILINE), text
    assert run.peak_kb - baseline_kb < MEMORY_BUDGET_KB
    assert snapshot(tmp_path) == before


def test_a_chain_of_dependent_values_is_checked_without_inlining_it_all(tmp_path):
    """(A chain of 8 such values took over 120 s: the denominator analysis inlined every value.)"""
    (tmp_path / "chain.yaml").write_text(dependent_chain(12))
    run = cli(["check", "chain.yaml"], tmp_path)
    assert run.code == 0, run.out + run.err


def test_six_options_are_accepted(tmp_path):
    (tmp_path / "six.yaml").write_text(options(6))
    run = cli(["check", "six.yaml"], tmp_path)
    assert run.code == 0, run.out + run.err


# --------------------------------------------------------------------------- extends reads no other file
def test_extends_cannot_read_files_elsewhere(tmp_path, baseline_kb):
    secret = "HOSTILE_SECRET_7d1e"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.yaml").write_text(f"{secret}: 1\nname: Leak\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "linked.yaml").symlink_to(tmp_path / "outside" / "secret.yaml")
    cases = {
        "environ.yaml": ("extends: /proc/self/environ\nname: E\n", r"no catalog spec named"),
        "absolute.yaml": (f"extends: {tmp_path / 'outside' / 'secret.yaml'}\nname: A\n", r"same folder"),
        "dotdot.yaml": ("extends: ../outside/secret.yaml\nname: D\n", r"same folder"),
        "link.yaml": ("extends: linked.yaml\nname: L\n", r"links outside this spec's folder"),
        "catalog_escape.yaml": ("extends: forms/../../outside/secret\nname: F\n", r"no catalog spec named"),
    }
    for name, (text, _) in cases.items():
        (work / name).write_text(text)
    before = snapshot(tmp_path)
    for name, (_, message) in cases.items():
        run = cli(["check", name], work, env={secret: "leaked-value"})
        assert_refused(run, name, message, baseline_kb, line=1)
        assert secret not in run.out + run.err and "leaked-value" not in run.out + run.err
    assert snapshot(tmp_path) == before


def test_extends_still_takes_catalog_names_and_files_beside_the_spec(tmp_path):
    (tmp_path / "base.yaml").write_text(small())
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: Child\n")
    assert optgen.load(tmp_path / "child.yaml").name == "Child"
    assert optgen.load("extends: adam\nname: MyAdam\n").name == "MyAdam"
    assert optgen.load("extends: forms/sgd_classic\nname: MySGD\n").name == "MySGD"


# --------------------------------------------------------------------------- the compile cache
COMPILE = """\
import inspect, sys, optgen
cls = optgen.compile(sys.argv[1])
print(inspect.getsourcefile(cls))
"""
EVIL = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


def compile_in_fresh_process(tmp_path: Path, spec: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TMPDIR": str(tmp_path / "tmp")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", COMPILE, str(spec)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture
def user_spec(tmp_path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(small())
    return path


def test_a_planted_pyc_beside_a_cached_module_never_runs(tmp_path, user_spec):
    first = compile_in_fresh_process(tmp_path, user_spec)
    assert first.returncode == 0, first.stderr
    source = Path(first.stdout.strip().splitlines()[-1])
    marker = tmp_path / "pwned"
    # a .pyc that the import system would accept for this unchanged source
    st = source.stat()
    code = compile(EVIL.format(marker=str(marker)), str(source), "exec")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    pyc.write_bytes(_code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))
    again = compile_in_fresh_process(tmp_path, user_spec)
    assert not marker.exists(), "the planted .pyc ran"
    assert again.returncode == 0, again.stderr


def test_a_modified_or_linked_cache_file_never_runs(tmp_path, user_spec):
    first = compile_in_fresh_process(tmp_path, user_spec)
    assert first.returncode == 0, first.stderr
    source = Path(first.stdout.strip().splitlines()[-1])
    marker = tmp_path / "pwned"
    source.write_text(EVIL.format(marker=str(marker)) + source.read_text())
    again = compile_in_fresh_process(tmp_path, user_spec)
    assert again.returncode == 0, again.stderr
    assert not marker.exists()
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    source.unlink()
    source.symlink_to(evil)
    again = compile_in_fresh_process(tmp_path, user_spec)
    assert again.returncode == 0, again.stderr
    assert not marker.exists()
    assert evil.read_text() == EVIL.format(marker=str(marker))  # never written through the link
    assert not source.is_symlink()


def test_the_triton_loader_runs_only_a_verified_file(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    from optgen import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    marker = tmp_path / "pwned"
    good = "VALUE = 1\n"
    path, key = cache.store("planted", good)
    assert cache.read_verified(key) == (path, good)
    path.write_text(EVIL.format(marker=str(marker)))
    assert cache.read_verified(key) is None
    from optgen.backends.triton import runtime

    with pytest.raises(KeyError):
        runtime.load(key)
    forged = f"planted_{'0' * cache.DIGEST_CHARS}"
    (tmp_path / "optgen" / f"{forged}.py").write_text(EVIL.format(marker=str(marker)))
    with pytest.raises(KeyError):
        runtime.load(forged)
    assert not marker.exists()


@pytest.mark.parametrize("problem", ["other_owner", "world_writable", "symlink"])
def test_an_unsafe_cache_folder_is_refused(tmp_path, monkeypatch, user_spec, problem):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "xdg"))  # where the old cache lived
    folder = tmp_path / "xdg" / "optgen"
    (tmp_path / "xdg").mkdir()
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
        (tmp_path / "xdg" / "optgen-cache").symlink_to(tmp_path / "elsewhere")
    else:
        for path in (folder, tmp_path / "xdg" / "optgen-cache"):
            path.mkdir(mode=0o700)
            if problem == "other_owner":
                if os.getuid() != 0:
                    pytest.skip("changing a folder's owner needs root")
                os.chown(path, 12345, 12345)
            else:
                path.chmod(0o777)
    with pytest.raises(SetupError, match="cache folder"):
        optgen.compile(user_spec)


def test_a_new_cache_folder_is_private(tmp_path, monkeypatch, user_spec):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    optgen.compile(user_spec)
    st = (tmp_path / "xdg" / "optgen").stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.getuid()
    assert not list((tmp_path / "xdg" / "optgen").rglob("*.pyc"))


# --------------------------------------------------------------------------- the output folder
def make_project(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("print('mine')\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def test_build_never_writes_into_a_folder_it_did_not_make(tmp_path):
    project = tmp_path / "project"
    make_project(project)
    before = snapshot(tmp_path)
    for out in (str(project), "."):
        run = cli(["build", "adam", "--out", out], project)
        assert run.code == 2 and "Traceback" not in run.err, run.out + run.err
        assert "not an optgen output" in run.err
    run = cli(["build", "--out", str(project)], project)  # the whole catalog (it prunes)
    assert run.code == 2 and "not an optgen output" in run.err, run.out + run.err
    assert snapshot(tmp_path) == before


def test_build_into_a_file_is_refused_before_compiling(tmp_path):
    """--out naming a file (or a folder with foreign files) is refused at once: exit 2, the
    file untouched, and no minute of compiling the catalog first."""
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    run = cli(["build", "--out", str(target)], tmp_path)
    assert run.code == 2 and "Traceback" not in run.err and "is not a folder" in run.err, run.out + run.err
    assert target.read_text() == "mine\n"
    assert "checked" not in run.out and "built" not in run.out


def test_a_rebuild_removes_only_what_the_manifest_lists(tmp_path):
    out = tmp_path / "out"
    build.write_tree({"torch/a.py": "a\n", "torch/b.py": "b\n", "README.md": "r\n"}, out, prune=True)
    manifest = (out / build.MANIFEST).read_text()
    assert "torch/a.py" in manifest and "README.md" in manifest
    (out / "torch" / "__pycache__").mkdir()
    (out / "torch" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")
    build.write_tree({"torch/a.py": "A\n"}, out, prune=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [build.MANIFEST, "torch", "torch/a.py"]
    build.write_tree({"torch/c.py": "c\n"}, out, prune=False)  # a partial build keeps the rest
    assert (out / "torch" / "a.py").read_text() == "A\n" and (out / "torch" / "c.py").read_text() == "c\n"
    assert "torch/a.py" in (out / build.MANIFEST).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or .old folder left
    (out / "torch" / "mine.py").write_text("keep me\n")
    with pytest.raises(build.OutputError, match="torch/mine.py"):
        build.write_tree({"torch/a.py": "A\n"}, out, prune=True)
    assert (out / "torch" / "mine.py").read_text() == "keep me\n"


def test_a_manifest_cannot_name_files_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (out / build.MANIFEST).write_text(f"{'0' * 64}  ../victim.txt\n")
    with pytest.raises(build.OutputError, match="not an optgen manifest"):
        build.write_tree({"a.py": "a\n"}, out, prune=True)
    assert victim.read_text() == "mine\n"


def test_a_link_inside_the_output_is_refused_not_copied(tmp_path):
    out = tmp_path / "out"
    build.write_tree({"torch/a.py": "a\n"}, out, prune=True)
    target = tmp_path / "data.bin"
    target.write_text("data\n")
    (out / "torch" / "data").symlink_to(target)
    run = cli(["build", "sgd", "--out", "out"], tmp_path)
    assert run.code == 2 and "torch/data" in run.err and "Traceback" not in run.err, run.out + run.err
    assert (out / "torch" / "data").is_symlink() and target.read_text() == "data\n"


def test_out_given_as_a_link_builds_its_target_and_leaves_no_old_folder(tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    for _ in range(2):
        run = cli(["build", "sgd", "--out", "link"], tmp_path)
        assert run.code == 0, run.out + run.err
    assert link.is_symlink() and (real / "torch" / "sgd.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".cache")) == ["link", "real"]


def test_an_installed_optgen_needs_out(tmp_path):
    """Outside a checkout (specs/ inside the package, as in a wheel) a build without --out
    would write into site-packages: it is refused."""
    site = tmp_path / "site"
    package = site / "optgen"
    shutil.copytree(ROOT / "optgen", package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("specs", "templates", "generated"):
        shutil.copytree(
            catalog.specs_dir().parent / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(tmp_path)
    # Python's own bytecode cache is not optgen writing: keep it out of the snapshot
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "XDG_CACHE_HOME": str(tmp_path / ".cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "build", "adam"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=HARD_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 2 and "--out" in run.stderr and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert snapshot(tmp_path) == before


def test_the_committed_catalog_has_its_manifest():
    generated = catalog.generated_dir()
    listed = build.read_manifest(generated)
    assert listed is not None and build.foreign_entries(generated, listed) == []
    assert sorted(listed) == sorted(
        p.relative_to(generated).as_posix()
        for p in generated.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != build.MANIFEST
    )


@pytest.mark.skipif(importlib.util.find_spec("optgen.backends.latex") is None, reason="no LaTeX backend")
def test_doc_never_writes_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (tmp_path / "sheet.tex").symlink_to(victim)
    run = cli(["doc", "adam", "-o", "sheet.tex"], tmp_path)
    assert run.code == 2 and "link" in run.err and "Traceback" not in run.err, run.out + run.err
    assert victim.read_text() == "mine\n" and (tmp_path / "sheet.tex").is_symlink()
    (tmp_path / "sheet.tex").unlink()
    run = cli(["doc", "adam", "-o", "sheet.tex"], tmp_path)
    assert run.code == 0, run.out + run.err
    assert "\\begin{document}" in (tmp_path / "sheet.tex").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".cache")) == ["sheet.tex", "victim.txt"]
