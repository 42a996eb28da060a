"""When anything fails on any rank, every rank ends within seconds, each failure told in one line.

Why the collectives' own timeouts are not enough: a rank that raises while the others sit in an all-reduce leaves
them waiting for gloo's or NCCL's timeout (minutes), and torchrun SIGKILLs the survivors only 30 s after a SIGTERM
that the trainer takes as "checkpoint and stop". So the failing rank first publishes its failure in the process
group's key-value store (the TCPStore every rank already talks to; torchrun hosts it in its agent, so it outlives
any rank), and a watchdog thread on every rank polls that key and ends its process at once.

A process ends with `os._exit` after SIGKILLing its DataLoader workers: a normal interpreter exit joins workers that
ignore SIGTERM (they must, see `stream.make_loader`) and waits for the process group, which never comes.

Exit status: 2 for a `UserError` (bad input: a damaged shard, a refused resume), 75 for a stop asked for before
training started (`StopRequested`: nothing to save, rerun to resume), 1 for anything else (a full disk, a bug; a bug
keeps its traceback). Every rank of a failed job exits with the failing rank's status.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import torch.distributed as dist

from gpt_novel.errors import UserError, os_error_line

KEY = "gpt_novel/failure"
POLL_S = 0.5
GRACE_S = 1.0
STORE_TRIES = 4  # polls in a row without an answer before the launcher counts as gone
STORE_TIMEOUT_S = 10  # one call of the watchdog's store client
STATUS_ENV = "GPT_NOVEL_STATUS_FILE"
STACKS_SIGNAL = signal.SIGUSR2  # `kill -USR2 PID`: a rank that seems stuck prints every thread's stack to stderr
EXIT_PREEMPTED = 75  # stopped on request (a signal or RUN_DIR/STOP) with nothing lost: run the command again


class StopRequested(BaseException):
    """A stop asked for while the trainer was starting (converting, loading): there is nothing new to save, so every
    rank ends at once with EXIT_PREEMPTED. A BaseException, as KeyboardInterrupt is, so that no library's `except
    Exception` swallows it."""


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit status, one line) for an exception that ends the job."""
    if isinstance(exc, UserError):
        return 2, str(exc)
    if isinstance(exc, StopRequested):
        return EXIT_PREEMPTED, str(exc)
    if isinstance(exc, OSError):
        return 1, os_error_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    return 1, f"{type(exc).__name__}: {exc}".splitlines()[0]


def end_process(code: int) -> None:
    """Kill this process's DataLoader workers and leave at once (no atexit joins, no barrier)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError):
            child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status(code))


class Watchdog:
    """Publishes this rank's failure and ends this rank when another one has published one."""

    def __init__(self, program: str, rank: int, world: int):
        self.program, self.rank, self.world = program, rank, world
        self._cleanups: list[Callable[[], None]] = []
        self._store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_end(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` first on every path by which the watchdog ends this process (e.g. release a lock)."""
        self._cleanups.append(cleanup)

    def watch(self) -> None:
        """Start polling, once the process group exists."""
        self._store = self._group_store()
        if self._store is not None:
            self._thread = threading.Thread(target=self._poll, name="gpt-novel-watchdog", daemon=True)
            self._thread.start()

    def _group_store(self):
        """A client of its own to the process group's key-value store (torchrun's, or the process's own in a plain
        run), or None before the group exists. Its own connection: a store client answers one call at a time, and
        the main thread may sit in a blocking one (DeepSpeed's new group waits there for a rank that has failed),
        behind which the poller waited forever. The process group's client when no other can be made."""
        if not dist.is_initialized():
            return None
        shared = store = dist.distributed_c10d._get_default_store()
        while isinstance(store, dist.PrefixStore):
            store = store.underlying_store
        try:
            return dist.TCPStore(store.host, store.port, is_master=False, wait_for_workers=False,
                                 timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
        except (AttributeError, RuntimeError, ValueError):  # not a TCPStore, or it does not answer
            return shared

    def stop(self) -> None:
        """Stop polling and wait for the poller to leave the store (destroying the process group under a thread
        still inside a store call aborts the process: "terminate called without an active exception")."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        """Every POLL_S: a failure published elsewhere ends this rank; so does a store that stopped answering
        (the launcher that hosts it was killed): a rank never outlives its job as an orphan."""
        unanswered = 0
        while not self._stop.wait(POLL_S):
            try:
                failure, unanswered = self._published(), 0
            except Exception:
                failure, unanswered = None, unanswered + 1
            if self._stop.is_set():
                return
            if failure is not None:
                self._end(failure["code"])
            if unanswered >= STORE_TRIES:
                self._say("the launcher is gone (its store does not answer); stopping")
                self._end(1)

    def _published(self) -> dict | None:
        """The failure some rank published, or None; raises when the store does not answer."""
        if self._store is not None and self._store.check([KEY]):
            return json.loads(self._store.get(KEY))
        return None

    def _published_or_none(self) -> dict | None:
        try:
            return self._published()
        except Exception:  # the store is gone: the job is ending anyway
            return None

    def _say(self, line: str, error: bool = True) -> None:
        where = f" on rank {self.rank}" if self.world > 1 else ""
        print(f"{self.program}: error{where}: {line}" if error else line, file=sys.stderr, flush=True)

    def fail(self, exc: BaseException) -> None:
        """Report exc in one line (a bug also with its traceback), tell the other ranks, end this process.

        A rank other than 0 first waits a moment for a failure published elsewhere: an error every rank meets alike
        (a refused resume) is then told once, by rank 0, and a peer's broken connection is not told at all."""
        self._store = self._store or self._group_store()
        earlier = self._wait_for_published(0.0 if self.rank == 0 else GRACE_S)
        if earlier is not None and earlier["rank"] != self.rank:  # a consequence of another rank's failure
            self._end(earlier["code"])
        code, line = describe(exc)
        if code == 1 and not isinstance(exc, OSError):
            traceback.print_exception(exc)
        self._say(line, error=code != EXIT_PREEMPTED)
        record_status(code, line)  # before the others hear of it: they then exit quietly too (`exit_status`)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.set(KEY, json.dumps({"rank": self.rank, "code": code, "line": line}))
        self._end(code)

    def _end(self, code: int) -> None:
        for cleanup in self._cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        end_process(code)

    def _wait_for_published(self, seconds: float) -> dict | None:
        deadline = time.monotonic() + seconds
        while True:
            failure = self._published_or_none()
            if failure is not None or time.monotonic() >= deadline:
                return failure
            time.sleep(0.05)


def record_status(code: int, line: str) -> None:
    """Tell `gpt-novel launch` or slurm/train.sh how the job ended, which torchrun and accelerate cannot (they turn
    every status into 1 and a page of tracebacks): the status, then the line that says why. The first process to
    record wins (O_EXCL): every rank that ends a job records, and they agree."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, f"{code}\n{line}\n".encode())
        os.close(fd)


def exit_status(code: int) -> int:
    """The status a process of the job exits with. Under a wrapper that reads the recorded status (STATUS_ENV), 0
    once one is recorded: the launcher then ends quietly, and the wrapper exits with the recorded status and says
    its line. A rank that dies before anything is recorded (a crash) still fails the launcher as it always did."""
    path = os.environ.get(STATUS_ENV)
    return 0 if path and os.path.exists(path) else code


@contextlib.contextmanager
def fail_fast(program: str, rank: int, world: int) -> Iterator[Watchdog]:
    """`with fail_fast(...) as dog:` any exception inside ends this rank and, through the store, every rank;
    what `dog.on_end` was given runs first on every path that ends the process."""
    dog = Watchdog(program, rank, world)
    faulthandler.register(STACKS_SIGNAL, all_threads=True)  # for the rest of the process: its end included
    try:
        yield dog
    except SystemExit:
        raise
    except BaseException as exc:
        dog.fail(exc)
    finally:
        dog.stop()
