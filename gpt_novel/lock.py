"""One writer per directory: an exclusive lock file, for a run directory and for a prepare output.

The lock is a file created with O_CREAT | O_EXCL, which is atomic on local and shared file systems (NFS, Lustre)
where `fcntl` locks are unreliable across nodes. It holds who owns it (host, pid and the pid's start time, Slurm job
id, command) so that a refusal names the holder. A lock is stale, and taken over with a warning, when its holder
is known to be gone: the same host and the pid no longer alive (or reused by another process), or the same Slurm job
id as ours from an earlier start of that job (a requeued job whose last start died on
another node). A lock held from another host is never taken over: the refusal says which file to remove if that
job is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from gpt_novel.errors import UserError


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None off Linux or when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot), to tell a live holder from a reused pid; None off Linux."""
    stat = _stat(pid)
    return stat[19] if stat else None


def owner() -> dict:
    """This process as a lock holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()),
            "job": os.environ.get("SLURM_JOB_ID", ""), "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "command": " ".join(sys.argv)[:300],
            "token": secrets.token_hex(8)}


def _alive(holder: dict) -> bool:
    """A killed holder whose parent died too stays a zombie until init reaps it, seconds later: dead all the same."""
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat, start = _stat(pid), holder.get("start")
    if stat and stat[0] in ("Z", "X"):
        return False
    return start is None or stat is None or stat[19] == start


def is_stale(holder: dict) -> bool:
    """True when the holder is known to be gone (see the module docstring); a foreign host is never stale."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if job and holder.get("job") == job and holder.get("restart") != os.environ.get("SLURM_RESTART_COUNT", "0"):
        return True
    return holder.get("host") == socket.gethostname() and not _alive(holder)


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['job']}" if holder.get("job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job} ({holder.get('command', '?')})"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # damaged or half-written by a holder that died at once: treated as held by nobody known


def _create(path: Path, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
    return True


def acquire(path: Path, what: str, warn=lambda text: print(text, file=sys.stderr)) -> dict:
    """Take the lock at `path` for `what` (e.g. "run directory runs/x"); returns our holder record. Raises
    UserError naming the holder when another live writer has it."""
    me = owner()
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path, me):
            return me
        holder = _read(path)
        if holder is None:  # released between our two calls
            continue
        if holder and not is_stale(holder):
            raise UserError(f"{what} is in use by {describe(holder)}; wait for it to end, or remove {path} if that "
                            "process is gone")
        warn(f"warning: taking over the stale lock {path} of {describe(holder) if holder else 'an unknown writer'}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise UserError(f"{what}: could not take the lock {path} (another writer keeps taking it)")


def release(path: Path, me: dict) -> None:
    """Remove the lock if it is still ours (never another writer's that took over a lock it judged stale)."""
    holder = _read(path)
    if holder and holder.get("token") == me["token"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[dict]:
    """`with exclusive(dir / ".lock", "run directory dir"):` one writer inside, released on every path."""
    me = acquire(path, what)
    try:
        yield me
    finally:
        release(path, me)
