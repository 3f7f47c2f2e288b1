"""How child processes are started so that none outlives its parent."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Run in the child before exec: own session (a terminal Ctrl-C reaches only the parent, which stops
    children in order) and SIGKILL when the parent dies, so even a kill -9 of the parent leaves no orphan."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
