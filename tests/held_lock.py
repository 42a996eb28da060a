"""A lock the test holds while prepare's pool starts its workers: a forked worker would get a copy of it, held."""

from __future__ import annotations

import os
import threading

LOCK = threading.Lock()


def take(_: int) -> tuple[bool, int]:
    """Whether this worker can take (and give back) the lock within 5 s, and its parent's pid."""
    taken = LOCK.acquire(timeout=5)
    if taken:
        LOCK.release()
    return taken, os.getppid()
