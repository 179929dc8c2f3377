"""C++ source -> a loaded shared library, through the per-user cache.

A library is named by the SHA-256 of everything that decides its bytes: the source, the
compiler (its path and `--version`), the flags and the ISA level. It is compiled into a
private temporary file in the cache folder and renamed into place, so a concurrent process
(a pytest worker, a DDP rank) sees either no library or a whole one; before loading, the
file is checked to be a regular file of ours, and after loading the library must report
the digest it was compiled for (a file swapped or truncated in the cache is never run).
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import functools
import os
import platform
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path

from ... import cache, catalog
from ...errors import SetupError
from . import config

_LOADED: dict[str, ctypes.CDLL] = {}
COMPILE_SECONDS: dict[str, float] = {}  # digest -> seconds the compiler ran (this process)


def compiler() -> str:
    """The C++ compiler: $CXX, else g++, else clang++ (a SetupError when none exists)."""
    wanted = os.environ.get("CXX")
    for name in [wanted] if wanted else ["g++", "clang++", "c++"]:
        path = shutil.which(name)
        if path:
            return path
    raise SetupError(
        f"fused=True on CPU tensors compiles a C++ kernel, but no C++ compiler was found "
        f"({'CXX=' + wanted if wanted else 'g++, clang++ or c++ on PATH'}): install one (apt install g++) "
        "or use foreach=True"
    )


@functools.cache
def _compiler_identity(path: str) -> str:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"cannot run the C++ compiler {path}: {exc}") from None
    return f"{path}\n{result.stdout.strip()}"


@functools.cache
def isa_flags() -> tuple[str, ...]:
    """The best portable x86-64 level this CPU has (never -march=native); elsewhere none."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    flags = set(line.split(":", 1)[-1].split())
    for level, needs in config.X86_LEVELS:
        if needs <= flags:
            return (f"-march={level}", "-mtune=generic")
    return ()


@functools.cache
def vector_math() -> tuple[str, ...]:
    """glibc's libmvec on x86-64 Linux: vector exp/log inside the simd loops."""
    if platform.machine() not in ("x86_64", "AMD64") or not ctypes.util.find_library("mvec"):
        return ()
    return ("-DOPTGEN_VECTOR_MATH",)


def flags() -> tuple[str, ...]:
    return config.BASE_FLAGS + isa_flags() + vector_math()


def libraries() -> tuple[str, ...]:
    """Linked after the source (a library named before the objects may be dropped)."""
    return ("-lmvec",) if vector_math() else ()


def library_path(source: str, stem: str) -> tuple[Path, str]:
    """(where the library of `source` lives in the cache, the digest it must report)."""
    options = flags() + libraries()
    header = f"// compiler: {_compiler_identity(compiler())!r}\n// flags: {' '.join(options)}\n"
    digest = cache.digest(header + source)
    return cache.cache_dir() / f"cpp_{stem}_{digest}.so", digest


def load(source: str, stem: str) -> ctypes.CDLL:
    """The library compiled from `source`, from the cache or compiled now."""
    cxx, options = compiler(), flags() + libraries()
    header = f"// compiler: {_compiler_identity(cxx)!r}\n// flags: {' '.join(options)}\n"
    digest = cache.digest(header + source)
    if digest in _LOADED:
        return _LOADED[digest]
    path, _ = library_path(source, stem)
    library = _load_verified(path, digest)
    if library is None:
        _compile(cxx, header + source + _stamp(digest), path.parent, path)
        library = _load_verified(path, digest)
        if library is None:
            raise SetupError(f"the C++ kernel compiled to {path} does not report its source digest {digest}")
    _LOADED[digest] = library
    return library


def index_key(identity: str) -> str:
    """The cache name of an index entry: `identity` (the spec's text, options and dtypes)
    with everything else that decides the library (optgen's own code, compiler, flags)."""
    return cache.digest(f"{_generator_digest()}\n{_compiler_identity(compiler())}\n{flags() + libraries()}\n{identity}")


def load_indexed(key: str) -> ctypes.CDLL | None:
    """The library an index entry names, if both are in the cache and check out: a process
    that finds it never lowers or renders the spec."""
    folder = cache.cache_dir()
    try:
        fd = os.open(folder / f"cpp_index_{key}.txt", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as f:
        stem, _, digest = f.read().strip().partition(" ")
    if digest in _LOADED:
        return _LOADED[digest]
    if not (stem.isidentifier() and len(digest) == cache.DIGEST_CHARS and digest.isalnum()):
        return None
    library = _load_verified(folder / f"cpp_{stem}_{digest}.so", digest)
    if library is not None:
        _LOADED[digest] = library
    return library


def write_index(key: str, library: ctypes.CDLL, stem: str) -> None:
    digest = library.optgen_source_digest().decode()
    folder = cache.cache_dir()
    staging = folder / f".cpp_index_{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{stem} {digest}\n")
    os.replace(staging, folder / f"cpp_index_{key}.txt")


@functools.cache
def _generator_digest() -> str:
    """optgen's code and templates: a change to either may change what a spec compiles to."""
    root = Path(__file__).resolve().parents[2]
    files = sorted(root.rglob("*.py")) + sorted((catalog.templates_dir() / "cpp").glob("*"))
    return cache.digest("".join(f"{p.name}\n{p.read_text(encoding='utf-8')}" for p in files))


def _stamp(digest: str) -> str:
    return f'\nOPTGEN_EXPORT const char* optgen_source_digest() {{ return "{digest}"; }}\n'


def _load_verified(path: Path, digest: str) -> ctypes.CDLL | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SetupError(f"{path} is not a private file of this user: refusing to load it (remove it)")
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return None
    try:
        library.optgen_source_digest.restype = ctypes.c_char_p
        reported = library.optgen_source_digest().decode()
    except AttributeError:
        reported = None
    if reported != digest:
        # unload it: dlopen of the same path would otherwise return this handle again
        _ctypes.dlclose(library._handle)
        return None
    return library


def _compile(cxx: str, text: str, folder: Path, path: Path) -> None:
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    src = folder / f".{path.stem}.{token}.cpp"
    tmp = folder / f".{path.stem}.{token}.so.tmp"
    fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    start = time.perf_counter()
    try:
        command = [cxx, *flags(), str(src), "-o", str(tmp), *libraries()]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SetupError(f"the C++ compiler failed on the generated kernel {src.name}:\n{result.stderr[-4000:]}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, path)
    finally:
        for leftover in (src, tmp):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
    COMPILE_SECONDS[path.stem] = time.perf_counter() - start
