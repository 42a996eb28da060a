"""One writer per directory: an exclusive lock file, for a run directory and for a prepare output.

The lock is published whole and atomically: its record is written to a temporary file beside it and hard-linked
into place with `os.link`, which fails if the lock exists, on local and shared file systems (NFS, Lustre) alike,
where `fcntl` locks are unreliable across nodes. No reader ever sees a half-written lock, so one that cannot be
read as a holder record is damaged, not being written. It holds who owns it (host, pid and the pid's start time,
Slurm job id, command, a token unique to this acquisition) so that a refusal names the holder.

A lock is stale, and taken over with a warning, when its holder is known to be gone: the same host and the pid no
longer alive (or reused by another process), or the same Slurm job id as ours from an earlier start of that job (a
requeued job whose last start died on another node). A damaged lock is taken over too. A lock held from another
host is never taken over: the refusal says which file to remove if that job is gone. Breaking a stale lock is
serialised between the processes of this host (flock on the lock's directory) and removes only the very lock judged
stale, so that two acquirers that judged the same holder stale never remove the lock the first of them took in its
place. A lock path that is not a regular file (a directory, a symbolic link) is refused in one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt_novel.errors import UserError

# The fields of a holder record and their types (None: may be absent); a record that breaks this is damaged.
_FIELDS: dict[str, tuple[type, ...]] = {"host": (str,), "pid": (int,), "token": (str,)}
_OPTIONAL: dict[str, tuple[type, ...]] = {"start": (str, type(None)), "job": (str,), "restart": (str,),
                                          "command": (str,)}


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None off Linux or when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot), to tell a live holder from a reused pid; None off Linux."""
    stat_fields = _stat(pid)
    return stat_fields[19] if stat_fields else None


def owner() -> dict:
    """This process as a lock holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()),
            "job": os.environ.get("SLURM_JOB_ID", ""), "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "command": " ".join(sys.argv)[:300],
            "token": secrets.token_hex(8)}


def _alive(holder: dict) -> bool:
    """A killed holder whose parent died too stays a zombie until init reaps it, seconds later: dead all the same."""
    pid = holder.get("pid")
    if not _is_pid(pid):  # never signal pid 0 or -1 (a process group, every process) on a damaged record's word
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat_fields, start = _stat(pid), holder.get("start")
    if stat_fields and stat_fields[0] in ("Z", "X"):
        return False
    return start is None or stat_fields is None or stat_fields[19] == start


def _is_pid(pid: object) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def is_stale(holder: dict) -> bool:
    """True when the holder is known to be gone (see the module docstring); a foreign host is never stale."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if job and holder.get("job") == job and holder.get("restart") != os.environ.get("SLURM_RESTART_COUNT", "0"):
        return True
    return holder.get("host") == socket.gethostname() and not _alive(holder)


def describe(holder: object) -> str:
    """The holder in a refusal or a warning; any record, even a damaged one, gives a line rather than a traceback."""
    if not isinstance(holder, dict) or not holder:
        return "an unknown writer"
    job = f", Slurm job {holder['job']}" if holder.get("job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job} ({holder.get('command', '?')})"


@dataclass(frozen=True)
class _Found:
    """A lock as read: its exact text, which tells this very lock from any later one (each record has its own
    token), and its holder, None when the text is not a valid holder record (damaged)."""

    text: str
    holder: dict | None


def _valid(record: object) -> dict | None:
    """The record if it is a holder record as `owner()` writes it, else None: damaged."""
    if not isinstance(record, dict) or not _is_pid(record.get("pid")):
        return None
    if any(not isinstance(record.get(key), types) for key, types in _FIELDS.items()):
        return None
    if any(key in record and not isinstance(record[key], types) for key, types in _OPTIONAL.items()):
        return None
    return record


def _kind(mode: int) -> str | None:
    """What a lock path is when it is not a regular file (for the refusal), None when it is one."""
    if stat.S_ISREG(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"


def _not_a_lock(path: Path, kind: str) -> UserError:
    return UserError(f"{path} is not a lock file ({kind}): remove it if no gpt-novel runs there")


def _read(path: Path) -> _Found | None:
    """The lock at `path`, None when there is none. A path that is not a regular file was put there by hand (the
    lock is never a link or a directory): refused rather than followed or removed."""
    try:
        kind = _kind(os.lstat(path).st_mode)
        if kind:
            raise _not_a_lock(path, kind)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read the lock {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        kind = _kind(os.fstat(f.fileno()).st_mode)  # replaced between the lstat and the open
        if kind:
            raise _not_a_lock(path, kind)
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    try:
        return _Found(text, _valid(json.loads(data)))
    except ValueError:
        return _Found(text, None)


def _publish(path: Path, me: dict) -> bool:
    """Create the lock holding `me`, whole or not at all; False when it exists. The record is written and synced
    to a temporary file first and then hard-linked into place: the link is atomic and fails if the lock exists."""
    data = json.dumps(me).encode("utf-8")
    tmp = path.with_name(f"{path.name}.{me['host']}-{me['pid']}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return _link(tmp, path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link(tmp: Path, path: Path, data: bytes) -> bool:
    """`os.link(tmp, path)`; on a file system without hard links, an exclusive create written at once instead
    (a reader may then see it empty for a moment, and take it for damaged)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


@contextlib.contextmanager
def _breakers_serialised(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on the lock's directory while breaking a stale lock. Only holders on this host (or
    an earlier start of our own Slurm job, which is gone) are ever judged stale, so a guard local to this host
    suffices, and flock is released by the kernel when its holder dies, so it can never be left stale itself.
    Where flock is unavailable (OSError: some NFS or Lustre mounts), breakers fall back to the re-read check."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _break(path: Path, judged: _Found) -> bool:
    """Remove the lock judged stale if it is still that very lock; True when this call removed it. Two acquirers
    may both judge one dead holder stale: without the guard and the re-read, the second would remove the lock the
    first has just taken in its place, and both would hold it."""
    with _breakers_serialised(path.parent):
        if _read(path) != judged:  # gone, or already replaced by a live writer: nothing of ours to break
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True


def acquire(path: Path, what: str, warn=lambda text: print(text, file=sys.stderr)) -> dict:
    """Take the lock at `path` for `what` (e.g. "run directory runs/x"); returns our holder record. Raises
    UserError naming the holder when another live writer has it."""
    me = owner()
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _publish(path, me):
            return me
        found = _read(path)
        if found is None:  # released between our two calls
            continue
        if found.holder and not is_stale(found.holder):
            raise UserError(f"{what} is in use by {describe(found.holder)}; wait for it to end, or remove {path} "
                            "if that process is gone")
        if _break(path, found):
            warn(f"warning: taking over the stale lock {path} of {describe(found.holder)}")
    raise UserError(f"{what}: could not take the lock {path} (another writer keeps taking it)")


def release(path: Path, me: dict) -> None:
    """Remove the lock if it is still ours (never another writer's that took over a lock it judged stale)."""
    try:
        found = _read(path)
    except UserError:  # replaced by something that is not a lock: not ours to remove
        return
    if found and found.holder and found.holder.get("token") == me["token"]:
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
