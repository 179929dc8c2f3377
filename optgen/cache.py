"""The per-user cache of modules made by `optgen.compile` (torch classes, Triton kernels).

A compiled module is written to a file so that tracebacks, `inspect` and `@triton.jit` (which
reads its kernels' source) see it, but the file is never trusted: it lives in a folder only
this user can write ($XDG_CACHE_HOME/optgen, by default ~/.cache/optgen, mode 0700, checked
to be ours and not a symbolic link), it is named by the SHA-256 of its text, and it is run by
compiling text whose hash was checked (never through the import system, so no `.pyc` beside
it is ever read or written). linecache is primed with that same text, so `inspect` shows what
runs even if the file changes afterwards.

    path, key = store("adam_eps_inside", text)   # write (or reuse) the file
    module = load(text, "optgen_compiled.<key>", path)  # runs `text`, shown as `path`
    path, text = read_verified(key)              # a stored file whose hash matches its name
"""

from __future__ import annotations

import hashlib
import linecache
import os
import secrets
import stat
import sys
from pathlib import Path
from types import ModuleType

from .errors import SetupError

DIGEST_CHARS = 32  # of the SHA-256 hex digest in a file name: 128 bits


def cache_dir() -> Path:
    """This user's cache folder, created 0700; refused unless it is a real folder owned by
    this user that no one else can write."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    path = root / "optgen"
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SetupError(f"cannot create optgen's cache folder {path}: {exc.strerror}") from None
    _verify(path, os.lstat(path))
    return path


def _verify(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise SetupError(f"optgen's cache folder {path} is a symbolic link; remove it (optgen makes a private folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise SetupError(f"optgen's cache folder {path} is not a folder; remove it")
    if st.st_uid != os.getuid():
        raise SetupError(
            f"optgen's cache folder {path} belongs to another user (uid {st.st_uid}); "
            "refusing to run code from it: remove it or set XDG_CACHE_HOME"
        )
    if st.st_mode & 0o022:
        raise SetupError(
            f"optgen's cache folder {path} can be written by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "refusing to run code from it: `chmod 700` it or remove it"
        )


def _open_dir() -> tuple[Path, int]:
    """The cache folder and a descriptor of it, opened without following a link and checked
    again through the descriptor (so the folder checked is the folder written)."""
    path = cache_dir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _verify(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def _read(name: str, fd: int) -> str | None:
    """A file of the cache folder, not following a link; None if it is missing."""
    try:
        file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        return None
    with os.fdopen(file, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def store(prefix: str, text: str) -> tuple[Path, str]:
    """Write `text` as <prefix>_<digest>.py in the cache (unless a file with that exact text
    is there); returns its path and the key <prefix>_<digest>."""
    key = f"{prefix}_{digest(text)}"
    name = f"{key}.py"
    path, fd = _open_dir()
    try:
        if _read(name, fd) != text:
            _write(name, text, fd)
    finally:
        os.close(fd)
    return path / name, key


def _write(name: str, text: str, fd: int) -> None:
    """Write a new file (never through a planted link: O_EXCL) and rename it over `name`
    (a rename replaces a link planted there; it never writes through it)."""
    staging = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    file = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    try:
        with os.fdopen(file, "wb") as f:
            f.write(text.encode("utf-8"))
        os.replace(staging, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        os.unlink(staging, dir_fd=fd)
        raise


def read_verified(key: str) -> tuple[Path, str] | None:
    """(path, text) of a stored module whose text hashes to the digest in its key; None when
    there is none or it does not match (a file optgen did not write is never returned)."""
    _, _, want = key.rpartition("_")
    if len(want) != DIGEST_CHARS or not all(c in "0123456789abcdef" for c in want):
        return None
    path, fd = _open_dir()
    try:
        text = _read(f"{key}.py", fd)
    finally:
        os.close(fd)
    if text is None or digest(text) != want:
        return None
    return path / f"{key}.py", text


def load(text: str, module_name: str, path: Path) -> ModuleType:
    """Run `text` (already verified) as module `module_name`, shown as the file `path`;
    registered in sys.modules (pickle finds classes there). Never reads a .pyc."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    filename = str(path)
    code = compile(text, filename, "exec", dont_inherit=True)
    # mtime None: linecache.checkcache keeps this entry; inspect and tracebacks show `text`
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - optgen's own rendered module, hash-checked
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
