"""How every child process is started so that none outlives its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGKILL the child when this process dies, or None elsewhere.

    Pair it with `start_new_session=True`: a terminal Ctrl-C then reaches only the parent, which stops
    children in order, while even a kill -9 of the parent leaves no orphan. It runs in the forked child
    after any uid switch (the kernel clears the setting on credential changes, so the order matters).
    If the parent died between fork and prctl, the child ends itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child should not load libraries
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
