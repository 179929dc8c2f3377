"""How a spawned rank of the multi-process tests starts and ends (test_sharded_fused.py,
test_sharded_eager.py, test_dcp.py, dist_harness.py)."""

from __future__ import annotations

import faulthandler
import os
import sys
from typing import NoReturn


def start_rank() -> None:
    """A rank killed by a signal (a C++ abort is SIGABRT) prints every thread's Python stack
    to stderr, which the test's failure message carries: it tells a crash inside a collective
    from one during the interpreter's shutdown."""
    faulthandler.enable()


def end_rank() -> NoReturn:
    """End a rank whose work is done, reported and whose process group is destroyed, without
    finalising the interpreter. At a normal exit the C++ destructors of torch.distributed's
    objects run while the peer rank tears down its side, and once in CI one of them aborted
    the process ("terminate called without an active exception", SIGABRT) after every result
    was written. Only a rank that succeeded comes here: a failure still raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
