"""Test-wide set-up. Without a GPU, Triton kernels run in Triton's interpreter on CPU
tensors: the variable must be set before triton is first imported, which may happen
while any test module is collected."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Import triton now, in this mode: its own @jit functions (tl.sum, ...) take the mode of
    # the first import, and a C++ test unsets the variable for its duration (tests/cpp_harness.py);
    # were triton first imported there, every later interpreted kernel would fail on tl.sum.
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """One optgen cache folder for the whole run (XDG_CACHE_HOME): each C++ kernel the suite
    meets is compiled once per run, and nothing is read from or left in the user's cache."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    folder.chmod(0o700)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
