"""Every way a user starts the trainer, from a normal shell and from outside the checkout.

The suite sets no OMP_NUM_THREADS (nor anything like it): torchrun sets it only for several processes, so a plain
`python -m`, `torchrun --nproc_per_node 1` or one process per Slurm node runs with torch's full thread pool, which is
what once hung an elastic resume forever (a process pool forked from the threaded trainer: `gpt_novel/universal.py`).

Each case starts on a copy of the 2-process ZeRO-2 reference run as it was at its step-12 checkpoint, resumes it (an
elastic resume through DeepSpeed's universal checkpoint where its world size is not 2), trains, and stops on
RUN_DIR/STOP with its usual status: 75 where the trainer's own status reaches the caller (the trainer itself,
`gpt-novel launch`, slurm/train.sh), 1 from a bare torchrun or `accelerate launch` (they make any failure 1). The run
directory's whole process tree is gone afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ELASTIC,
    ELASTIC_CUT,
    ROOT,
    assert_no_leftovers,
    interrupted,
    run_command,
    train_env,
)
from test_slurm import needs_slurm, wait_for_job

from gpt_novel import checkpoint

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TRAIN = ["-m", "gpt_novel.train"]
ZERO2 = ["--deepspeed", str(ROOT / "ds_configs" / "zero2.json")]
LAUNCHERS = {  # name: (world size, command before the trainer's options, the status a STOP file gives)
    "python -m": (1, [sys.executable, *TRAIN, *ZERO2], 75),
    "torchrun 1": (1, [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "1", *TRAIN, *ZERO2], 1),
    "torchrun 2": (2, [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *TRAIN, *ZERO2], 1),
    "accelerate 1": (1, [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "zero2.yaml"),
                         "--num_processes", "1", *TRAIN], 1),
    "accelerate 2": (2, [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "zero2.yaml"),
                         "--num_processes", "2", *TRAIN], 1),
    "gpt-novel launch torchrun 1": (1, [str(BIN / "gpt-novel"), "launch", str(BIN / "torchrun"), "--standalone",
                                        "--nproc_per_node", "1", *TRAIN, *ZERO2], 75),
}


def _options(train_data: Path, run_dir: Path) -> list[str]:
    return [*ELASTIC, "--max-steps", "1000", "--data", str(train_data), "--run-dir", str(run_dir)]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None and time.time() < deadline, f"no {text!r} in {path}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_each_launcher_resumes_the_2_process_run_and_stops_on_a_stop_file(train_data, elastic_run, tmp_path,
                                                                          launcher):
    world, command, status = LAUNCHERS[launcher]
    run_dir, log = interrupted(elastic_run, tmp_path / "run"), tmp_path / "out.log"
    with open(log, "w") as out:  # from a directory outside the checkout, as an installed package is used
        proc = subprocess.Popen([*command, *_options(train_data, run_dir)], cwd=tmp_path, env=train_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(run_dir / "metrics.jsonl", f'"step": {ELASTIC_CUT + 1},', proc, log)
    (run_dir / "STOP").touch()
    assert proc.wait(timeout=180) == status, log.read_text()[-3000:]
    text = log.read_text()
    assert f"resumed from {run_dir / 'checkpoints' / f'step-{ELASTIC_CUT:08d}'}" in text, text[-3000:]
    assert ("converted to a DeepSpeed universal checkpoint" in text) == (world != 2)
    assert re.search(r"stop requested \(signal or STOP file\) after step \d+; checkpoint saved", text)
    newest = checkpoint.find_latest(run_dir)
    assert int(newest.name[5:]) > ELASTIC_CUT and checkpoint.load_state(newest).world_size == world
    assert not (run_dir / "STOP").exists() and not list((run_dir / "checkpoints").glob(".universal-*"))
    if status == 75:  # the trainer's status reached the caller: no launcher traceback after our line
        assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    assert_no_leftovers(str(run_dir))


def test_a_sigterm_during_the_conversion_ends_the_job_at_once(train_data, elastic_run, tmp_path):
    """One plain process resuming the 2-process run: SIGTERM while rank 0 converts the checkpoint ends it with 75
    and one line, its converter and the converter's output gone, the STOP-less rerun free to resume."""
    run_dir, log = interrupted(elastic_run, tmp_path / "run"), tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *TRAIN, *ZERO2, *_options(train_data, run_dir)], cwd=ROOT,
                                env=train_env(), stdout=out, stderr=subprocess.STDOUT)
    _wait_for(log, "into a DeepSpeed universal checkpoint", proc, log)
    signalled = time.time()
    proc.terminate()
    assert proc.wait(timeout=30) == 75 and time.time() - signalled < 10, log.read_text()[-3000:]
    text = log.read_text()
    assert "stop requested (SIGTERM) while starting, before any step: nothing new to save" in text, text[-3000:]
    assert "Traceback" not in text and not list((run_dir / "checkpoints").glob(".universal-*"))
    assert_no_leftovers(str(run_dir))


def test_a_stop_file_during_start_up_ends_every_rank(train_data, elastic_run, tmp_path):
    """Two ranks resuming on ZeRO-3 (a conversion): a STOP file written before they start ends the job as soon as
    the ranks can agree, with 75 through `gpt-novel launch`, one line, no launcher traceback; the file is removed."""
    run_dir = interrupted(elastic_run, tmp_path / "run")
    (run_dir / "STOP").touch()
    cmd = [str(BIN / "gpt-novel"), "launch", str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *TRAIN,
           *_options(train_data, run_dir), "--deepspeed", str(ROOT / "ds_configs" / "zero3.json")]
    result = run_command(cmd)
    output = result.stdout + result.stderr
    assert result.returncode == 75, output[-3000:]
    assert output.count("stop requested (STOP file) while starting") == 1 and "Traceback" not in output
    assert not (run_dir / "STOP").exists() and checkpoint.find_latest(run_dir).name == f"step-{ELASTIC_CUT:08d}"
    assert_no_leftovers(str(run_dir))


@needs_slurm
@pytest.mark.parametrize("nodes", [1, 2])
def test_sbatch_on_cpu_nodes_resumes_the_2_process_run_and_stops_on_a_stop_file(train_data, elastic_run, tmp_path,
                                                                               nodes):
    """The README's CPU-partition command (one process per node), on 1 node (an elastic resume) and on 2; the job's
    log ends with the trainer's own line, no launcher traceback anywhere."""
    run_dir, log = interrupted(elastic_run, tmp_path / "run"), tmp_path / "job.out"
    env = dict(train_env(), PRESET="tiny", DATA=str(train_data), RUN_DIR=str(run_dir), REPO=str(ROOT),
               PYTHON=sys.executable, DS_CONFIG=str(ROOT / "ds_configs" / "zero2.json"))
    submit = ["sbatch", "--parsable", "--nodes", str(nodes), "--cpus-per-task", "2", "--output", str(log),
              str(ROOT / "slurm" / "train.sh"), *ELASTIC[2:], "--max-steps", "1000"]
    job = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert job.returncode == 0, job.stderr
    deadline = time.time() + 300
    while '"step": 13,' not in (run_dir / "metrics.jsonl").read_text() and time.time() < deadline:
        time.sleep(0.1)
    (run_dir / "STOP").touch()
    wait_for_job(job.stdout.strip().split(";")[0], {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    text = log.read_text()
    assert f"({nodes} × 1 processes)" in text and ("converted to a DeepSpeed universal" in text) == (nodes == 1)
    assert text.splitlines()[-1].endswith("trainer exited with status 75: stop requested (signal or STOP file) after "
                                          f"step {checkpoint.find_latest(run_dir).name[5:].lstrip('0')}; checkpoint "
                                          "saved; rerun the same command to resume"), text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text
    assert_no_leftovers(str(run_dir))
