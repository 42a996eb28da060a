"""The one exception type for mistakes a user can fix (bad input, bad option, bad path), and the one wording of an
OSError (a full disk, a path that is not writable) as a line.

The CLI prints these as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""

import errno
import shutil
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or options, reported as one line without a traceback."""


def free_bytes(path: str | Path) -> int:
    """Free space on the file system of `path` or, as it may be gone (removed with a partial write), its parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def os_error_line(e: OSError) -> str:
    """'No space left on device: runs/x/…/optim_states.pt (12.0 MB free on that file system)', not a traceback."""
    path = e.filename or ""
    line = f"{e.strerror or e}: {path}" if path else str(e.strerror or e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and path:
        line += f" ({free_bytes(path) / 1e6:,.1f} MB free on that file system)"
    return line
