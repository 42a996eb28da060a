"""No orphans: a process we start ends when the process that started it dies, however it dies (kill -9 included).

Linux's PR_SET_PDEATHSIG has the kernel send a signal to a process when its parent exits, which no handler in the
parent could do after a SIGKILL. The request is checked against the parent's pid, since a parent that died before
it was made would never trigger it. Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl():
    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies; `parent` (the pid it should have): if it
    is already gone, `sig` now."""
    if sys.platform != "linux":
        return
    _prctl()(_PR_SET_PDEATHSIG, int(sig))
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
