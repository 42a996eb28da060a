"""`sbatch slurm/train.sh` on a real local Slurm (two slurmd nodes n1, n2 on this host), and torchrun --nnodes 2.

.ci/run starts the cluster with tests/slurm/start_slurm.sh; without one (no `sinfo`, or no idle nodes) the Slurm
tests skip. Every run is compared with the single-node 2-process ZeRO-2 run of the same config (same world size
and global batch): the losses must be equal bit for bit.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    COMMON,
    ROOT,
    SPLIT_OPTIONS,
    dataset_bytes,
    run_prepare,
    split_corpus,
    train_env,
    train_lines,
    wait_for_step,
)

pytestmark = pytest.mark.slow


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-t", "idle,mix,alloc", "-o", "%N"], capture_output=True,
                             text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError):
        return False
    return len(set(out.split())) >= 2


needs_slurm = pytest.mark.skipif(not _slurm_up(), reason="no local Slurm with 2 nodes (tests/slurm/start_slurm.sh)")


# The runs here are compared bit for bit with the 2-process reference, whose torchrun gives each process one
# thread; a CPU's reductions depend on the thread count, so these jobs get one too. (tests/test_launchers.py starts
# Slurm jobs with the thread settings of a user's shell.)
SAME_THREADS = {"OMP_NUM_THREADS": "1"}
# A stop reaches the trainer through train.sh's STOP file, polled twice a second, while the 24 steps train in about a
# second: a checkpoint at every step (which changes no loss, learning rate or sample) leaves the signal a few seconds
# to land before the run ends on its own, as it once did in CI.
RUNWAY = ("--save-every", "1")


def _submit(data: Path, run_dir: Path, log: Path, *options: str, nodes: int = 2, extra: tuple[str, ...] = ()) -> str:
    env = dict(train_env(), PRESET="tiny", DATA=str(data), RUN_DIR=str(run_dir), PROCS_PER_NODE="1",
               DS_CONFIG=str(ROOT / "ds_configs" / "zero2.json"), REPO=str(ROOT), PYTHON=sys.executable,
               **SAME_THREADS)
    cmd = ["sbatch", "--parsable", "--nodes", str(nodes), "--cpus-per-task", "1", *options,
           "--output", str(log), str(ROOT / "slurm" / "train.sh"), *COMMON[2:], *extra]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def wait_for_job(job: str, states: set[str], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _state(job)
        if state in states:
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job], timeout=10)
    raise AssertionError(f"job {job} still {_state(job)} after {timeout} s")


@needs_slurm
def test_usr1_checkpoints_requeues_and_resumes_exactly(train_data, zero_runs, tmp_path):
    """A two-node job (one process per node) signalled before its time limit: it checkpoints, requeues itself and
    resumes on two nodes, and the whole run is the single-node 2-process run, bit for bit."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = _submit(train_data, run_dir, log, extra=RUNWAY)
    wait_for_step(run_dir, 7)  # after the step-6 checkpoint
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=10)
    assert wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400) == "COMPLETED", \
        log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("signal received") == 1 and text.count("requeueing") == 1, text  # the requeue said once
    assert "node n1 (node rank 0)" in text and "node n2 (node rank 1)" in text
    assert "restart 0" in text and "restart 1" in text and "resuming from " + str(run_dir) in text
    assert "status 75" not in text and "Traceback" not in text
    assert "training finished" in text
    assert train_lines(run_dir) == train_lines(zero_runs[2])


def _expected_samples(data: Path, steps: int) -> dict[int, list[tuple[int, int]]]:
    """What each step of the uninterrupted 2-process run trains on (COMMON: micro batch 4 × accumulation 2)."""
    from gpt_novel.config import train_config
    from gpt_novel.data.dataset import Dataset
    from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream

    shards, seed = ShardSet.load(Dataset.load(data), "train"), train_config(["--config", "tiny"]).seed
    streams = [TrainStream(shards, StreamSpec(seed, rank, 2, 4, 2)) for rank in (0, 1)]
    return {k: sorted(pair for s in streams for g in (2 * k - 2, 2 * k - 1) for pair in s.sample_ids(g))
            for k in range(1, steps + 1)}


@needs_slurm
def test_a_job_stopped_on_two_nodes_resumes_on_one_with_the_same_samples(train_data, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(train_data, run_dir, tmp_path / "first.out", "--no-requeue", extra=("--log-samples", *RUNWAY))
    wait_for_step(run_dir, 7)  # after the step-6 checkpoint
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=10)
    wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    first = (tmp_path / "first.out").read_text()
    assert "trainer exited with status 75" in first, first[-3000:]  # --no-requeue: scontrol requeue refused
    job = _submit(train_data, run_dir, tmp_path / "second.out", nodes=1, extra=("--log-samples",))
    state = wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    second = (tmp_path / "second.out").read_text()
    assert state == "COMPLETED", second[-3000:]
    assert "(1 × 1 processes)" in second and "saved on 2 processes, ZeRO-2, converted" in second
    steps: dict[int, list] = {}
    for log in run_dir.glob("samples-rank*.jsonl"):
        for record in map(json.loads, log.read_text().splitlines()):
            steps.setdefault(record["step"], []).extend(map(tuple, record["samples"]))
    assert {k: sorted(v) for k, v in steps.items()} == _expected_samples(train_data, int(COMMON[COMMON.index(
        "--max-steps") + 1]))


def test_torchrun_two_launchers_on_loopback(train_data, zero_runs, tmp_path):
    """For users without Slurm: two launchers (two "nodes") with a static rendezvous on 127.0.0.1."""
    run_dir = tmp_path / "run"
    port = str(29000 + os.getpid() % 1000)
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "gpt_novel.train",
               *COMMON, "--data", str(train_data), "--run-dir", str(run_dir),
               "--deepspeed", str(ROOT / "ds_configs" / "zero2.json")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**train_env(), **SAME_THREADS}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert train_lines(run_dir) == train_lines(zero_runs[2])


@needs_slurm
def test_a_refused_job_says_why_last_and_leaves_no_run_directory(train_data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = _submit(train_data, run_dir, log, nodes=2, extra=("--n-embd", "130"))
    assert wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}) == "FAILED", log.read_text()[-3000:]
    text = log.read_text()
    assert text.splitlines()[-1].endswith("trainer exited with status 2: n_embd 130 is not divisible by n_head 4")
    assert text.count("gpt-novel train: error: n_embd 130") == 1 and "Traceback" not in text, text
    assert not run_dir.exists()


@needs_slurm
@pytest.mark.parametrize("how", ["USR1", "TERM"])  # a STOP file through train.sh: test_launchers.py's sbatch runs
def test_bash_train_sh_in_an_allocation_returns_75_after_a_graceful_stop(train_data, tmp_path, how):
    """Inside an interactive allocation the job cannot requeue: the caller of `bash slurm/train.sh` gets 75."""
    run_dir, log = tmp_path / "run", tmp_path / "out.log"
    env = dict(train_env(), PRESET="tiny", DATA=str(train_data), RUN_DIR=str(run_dir), PROCS_PER_NODE="1",
               DS_CONFIG=str(ROOT / "ds_configs" / "zero2.json"), REPO=str(ROOT), PYTHON=sys.executable)
    cmd = ["salloc", "--nodes", "2", "--cpus-per-task", "1", "bash", str(ROOT / "slurm" / "train.sh"), *COMMON[2:],
           *RUNWAY]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and '"step": 7,' in metrics.read_text()):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    script = subprocess.run(["pgrep", "-f", f"^bash {ROOT / 'slurm' / 'train.sh'}"], capture_output=True,
                            text=True).stdout.split()
    os.kill(int(script[0]), getattr(signal, f"SIG{how}"))
    assert proc.wait(timeout=240) == 75, log.read_text()[-3000:]
    text = log.read_text()
    assert "trainer exited with status 75" in text and "stop requested" in text
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "DONE").exists()


# --- sbatch slurm/prepare.sh -------------------------------------------------------------------------------------

def _prepare_env(corpus: Path, out: Path, logs: Path, tasks: int, cpus: int, cache: Path) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, INPUTS=str(corpus), DATA_DIR=str(out), TASKS=str(tasks), CPUS=str(cpus), REPO=str(ROOT),
                PYTHON=sys.executable, LOG_DIR=str(logs),
                PREPARE_ARGS=" ".join([*SPLIT_OPTIONS, "--cache-dir", str(cache)]))


def _sbatch_prepare(env: dict, logs: Path) -> str:
    """The driver job's id; its exit status is the pipeline's (`_exit_status`). Polled, not `sbatch --wait`, whose
    polls back off to half a minute apart."""
    cmd = ["sbatch", "--parsable", "--output", str(logs / "driver.out"), str(ROOT / "slurm" / "prepare.sh")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _exit_status(job: str) -> int:
    wait_for_job(job, ENDED, timeout=600)
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=10).stdout
    return int(re.search(r"ExitCode=(\d+):", out).group(1))


def _logs(logs: Path, step: str) -> str:
    return "".join(p.read_text() for p in sorted(logs.glob(f"{step}-*.out")))


@pytest.fixture(scope="module")
def split_novels(tmp_path_factory, sample_text, cache_dir) -> tuple[Path, dict[str, str]]:
    """The sample split into several novels, and the bytes one machine prepares from them (`--workers 1`)."""
    root = tmp_path_factory.mktemp("split")
    corpus = split_corpus(sample_text, root / "novels")
    assert run_prepare([corpus], root / "local", cache_dir, "--workers", "1", *SPLIT_OPTIONS) == 0
    return corpus, dataset_bytes(root / "local")


@needs_slurm
def test_sbatch_prepare_with_one_task_gives_the_bytes_of_one_machine(tmp_path, split_novels, cache_dir):
    """Submitted as the README says, from a directory with logs/ and no LOG_DIR: the driver's log is
    logs/gpt-novel-prepare-JOB.out, each step's is in logs/prepare-JOB/ and says what it did, with counts and
    seconds; the driver ends within seconds of the finish job. With three tasks: the next test."""
    corpus, reference = split_novels
    out, logs = tmp_path / "slurm", tmp_path / "logs"
    env = {k: v for k, v in _prepare_env(corpus, out, logs, 1, 1, cache_dir).items() if k != "LOG_DIR"}
    result = subprocess.run(["sbatch", "--parsable", str(ROOT / "slurm" / "prepare.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    job = result.stdout.strip().split(";")[0]
    driver, steps = logs / f"gpt-novel-prepare-{job}.out", logs / f"prepare-{job}"
    assert _exit_status(job) == 0, driver.read_text()[-3000:]
    assert dataset_bytes(out) == reference
    assert sorted(p.name for p in logs.iterdir()) == [driver.name, steps.name]
    assert re.search(r"^plan: (\d+) file\(s\), [\d.]+ MB, in 4 partition\(s\)", driver.read_text(), re.M)
    assert re.search(r"^read: task 0 of 1: (\d+) of \1 file\(s\), partition\(s\) 0-3 of 4$", _logs(steps, "read"), re.M)
    for step, did in [("read", r"\d+ file\(s\), [\d,]+ chapters, [\d,]+ characters"),
                      ("merge", r"\d+ file\(s\): \d+ boilerplate line\(s\) repeated across files, [1-9]\d* duplicate"),
                      ("segment", r"[\d,]+ chapters, [\d,]+ characters"),
                      ("vocab", r"[\d,]+ tokens \(word vocabulary\)"),
                      ("encode", r"[\d,]+ chapters encoded to [\d,]+ ids, \d+ train shard\(s\)")]:
        assert re.search(rf"^{step}: {did}.* in \d+\.\d s", _logs(steps, step), re.M), _logs(steps, step)
    finish = re.search(r"finish (\d+)", driver.read_text()).group(1)
    assert _end_time(job) - _end_time(finish) <= 5  # the driver polls every 2 s
    assert not (tmp_path / ".slurm.work").exists()


def _end_time(job: str) -> float:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=10).stdout
    return datetime.datetime.fromisoformat(re.search(r"EndTime=(\S+)", out).group(1)).timestamp()


@needs_slurm
def test_a_cancelled_array_task_is_all_a_resubmission_redoes(tmp_path, split_novels, cache_dir):
    """Three tasks of 2 CPUs on two 2-CPU nodes, one of them holding the driver: the array runs one task at a time,
    so task 2 of the segment array is still pending when it is cancelled. The resubmission redoes that task alone
    and ends with the bytes one machine prepares."""
    (corpus, reference), out = split_novels, tmp_path / "d"
    first, second = tmp_path / "logs1", tmp_path / "logs2"
    job = _sbatch_prepare(_prepare_env(corpus, out, first, 3, 2, cache_dir), first)
    deadline, segment = time.time() + 300, None
    while segment is None and time.time() < deadline and _state(job) not in ENDED:
        found = re.search(r"segment (\d+)", (first / "driver.out").read_text() if (first / "driver.out").exists()
                          else "")
        segment = found and found.group(1)
        time.sleep(0.2)
    assert segment, (first / "driver.out").read_text()
    subprocess.run(["scancel", f"{segment}_2"], check=True, timeout=30)
    assert _exit_status(job) != 0  # the steps after it never ran
    assert not out.exists() and "segment: task 2 of 3" not in _logs(first, "segment")
    assert re.search(r"^read: task 2 of 3: \d+ of \d+ file\(s\), partition\(s\) 2 of 4$", _logs(first, "read"), re.M)
    job = _sbatch_prepare(_prepare_env(corpus, out, second, 3, 1, cache_dir), second)
    assert _exit_status(job) == 0, (second / "driver.out").read_text()[-3000:]
    read, segmented = _logs(second, "read"), _logs(second, "segment")
    assert read.count("done earlier, kept") == 3 and not re.search(r"^read: \d+ file\(s\), ", read, re.M)
    assert "done earlier, kept (partition(s) 0,3)" in segmented and "done earlier, kept (partition(s) 1)" in segmented
    assert len(re.findall(r"^segment: [\d,]+ chapters, ", segmented, re.M)) == 1  # task 2's partition, redone
    assert dataset_bytes(out) == reference
