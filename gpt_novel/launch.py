"""`gpt-novel launch LAUNCHER ARGS…`: run torchrun or `accelerate launch` so that the caller gets the trainer's status.

    gpt-novel launch torchrun --nproc_per_node 2 -m gpt_novel.train --config tiny --data data --run-dir runs/x
    gpt-novel launch accelerate launch --config_file launch/zero2.yaml -m gpt_novel.train --data data --run-dir runs/x

Why: torchrun and accelerate exit 1 whenever a worker exits non-zero (75 included), with a page of tracebacks, and
die of SIGUSR1, so a wrapper cannot tell "preempted, resume me" from a crash. Here the launcher runs in a session of
its own; SIGTERM, SIGUSR1 and SIGINT become RUN_DIR/STOP (the trainer's own stop request: every rank finishes its
step and saves), a second one is passed to the launcher as SIGTERM; and the exit status is the one the trainer
recorded (0 done, 75 preempted, 2 bad input, 1 failure, see `faults.record_status`), else the launcher's own. Once a
status is recorded the ranks exit 0 (`faults.exit_status`), so the launcher ends without its tracebacks.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from gpt_novel.faults import STATUS_ENV
from gpt_novel.lifetime import die_with_parent
from gpt_novel.parallel import name_deepspeed_accelerator
from gpt_novel.train import STOP_FILE

USAGE = "usage: gpt-novel launch torchrun|accelerate|python … -m gpt_novel.train … --run-dir RUN_DIR …"


def run_dir_of(argv: list[str]) -> Path | None:
    """The trainer's --run-dir in a launcher command line (None when it comes from a YAML config only)."""
    for i, arg in enumerate(argv):
        if arg in ("--run-dir", "--run_dir") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith(("--run-dir=", "--run_dir=")):
            return Path(arg.split("=", 1)[1])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ if argv else USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    with tempfile.TemporaryDirectory(prefix="gpt-novel-launch-") as tmp:
        status = Path(tmp) / "status"
        name_deepspeed_accelerator()  # the launcher imports DeepSpeed too: it stays quiet as the trainer does
        # SIGTERM when this process dies, however it dies: the launcher stops its ranks as for a preemption (they
        # save and exit), where a kill -9 of this wrapper left them training unattended, holding the run's lock
        proc = subprocess.Popen(argv, env=_launcher_env(argv, status), start_new_session=True,
                                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, os.getpid()))
        _forward_signals(proc, run_dir_of(argv))
        code = _wait(proc)
        recorded = status.read_text().split("\n", 1)[0].strip() if status.exists() else ""
    return int(recorded) if recorded.lstrip("-").isdigit() else code


def _launcher_env(argv: list[str], status: Path) -> dict[str, str]:
    """torchrun and accelerate set OMP_NUM_THREADS=1 for each worker when it is unset and they start several, with a
    five-line banner about it: set that same value for them so that a start has no line a user must ask about. One
    process keeps every core, as it would without us."""
    env = {**os.environ, STATUS_ENV: str(status)}
    if _local_processes(argv) > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _local_processes(argv: list[str]) -> int:
    """The processes per machine a torchrun or `accelerate launch` command line asks for (1 when it does not say)."""
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--nproc_per_node", "--nproc-per-node", "--num_processes", "--num-processes"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else 1
    return 1


def _forward_signals(proc: subprocess.Popen, run_dir: Path | None) -> None:
    asked = []

    def handle(signum, frame) -> None:
        if run_dir is not None and not asked:
            print(f"gpt-novel launch: {signal.Signals(signum).name}: asking the trainer to checkpoint and stop "
                  f"({run_dir / STOP_FILE})", file=sys.stderr, flush=True)
            (run_dir / STOP_FILE).touch()
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        asked.append(signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, handle)


def _wait(proc: subprocess.Popen) -> int:
    code = proc.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
