"""Shared fixtures: the sample corpus, the optional ../shared corpus, prepared data, and 2-process training runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt_novel.cli import main
from gpt_novel.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample" / "corpus"
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def sample_text() -> str:
    return next(SAMPLE_DIR.glob("*.txt")).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One segmentation cache for the session: thulac runs once per chapter text across tests."""
    return tmp_path_factory.mktemp("cache")


def run_prepare(inputs: list[Path], out: Path, cache: Path, *extra: str) -> int:
    return main(["prepare", *map(str, inputs), "--out", str(out), "--cache-dir", str(cache), *extra])


def dataset_bytes(data: Path) -> dict[str, str]:
    """sha256 of every file of a prepared data directory; report.json without its timings (the only thing that
    may differ between two runs that made the same dataset)."""
    digests = {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(data.rglob("*")) if p.is_file() and p.name != "report.json"}
    report = json.loads((data / "report.json").read_text(encoding="utf-8"))
    for key in ("seconds", "cpu_seconds", "segmented_chapters"):
        report["totals"].pop(key, None)
    digests["report.json"] = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()
    return digests


def split_corpus(sample_text: str, root: Path) -> Path:
    """The sample novel as four files in three encodings, one partition each at --partition-size 1KB: a.txt
    (chapters 1-2, UTF-8), b.txt (3-4, GBK), c.txt (5-6, UTF-8 with BOM and CRLF) and d.txt, a second download of
    a.txt (its chapters are duplicates, dropped)."""
    lines = sample_text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("第") and "章" in line[:5]]
    parts = ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("\n".join(parts[0:2]), encoding="utf-8")
    (root / "b.txt").write_bytes("\n".join(parts[2:4]).encode("gbk"))
    (root / "c.txt").write_bytes(("\ufeff" + "\n".join(parts[4:6])).replace("\n", "\r\n").encode("utf-8"))
    (root / "d.txt").write_text("\n".join(parts[0:2]), encoding="utf-8")
    return root


# thulac words: the partitioned, multi-worker and Slurm tests keep the word tokenizer's path covered (its counts
# and segmentation cache are what partitions share); test_bpe.py covers the default's.
SPLIT_OPTIONS = ["--seq-len", "32", "--shard-size", "4KB", "--partition-size", "1KB", "--val-ratio", "0.2",
                 "--tokenizer", "word"]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory, cache_dir) -> Path:
    """The sample corpus prepared with small samples and shards, so every split has several shards, with thulac
    words (the 2-process runs' `train_data` has the default tokenizer)."""
    out = tmp_path_factory.mktemp("data") / "sample"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64", "--shard-size", "8KB", "--workers", "1",
                       "--tokenizer", "word") == 0
    return out


# --- 2-process training runs ------------------------------------------------------------------------------

STEPS = 24
COMMON = ["--config", "tiny", "--micro-batch-size", "4", "--grad-accum", "2", "--num-workers", "2",
          "--max-steps", str(STEPS), "--warmup-steps", "4", "--save-every", "6", "--eval-every", "12",
          "--sample-every", "12", "--eval-batches", "2", "--progress", "false"]


def train_env() -> dict:
    """The environment of a user's shell: no launcher variables, and OMP_NUM_THREADS and its kind left as the shell
    has them (unset, normally), as every launcher must cope with."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


LAUNCH = [sys.executable, "-m", "gpt_novel.launch"]


def train_command(data: Path, run_dir: Path, stage: int, nproc: int = 2, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "gpt_novel.train", *COMMON, "--data", str(data), "--run-dir", str(run_dir),
            "--deepspeed", str(ROOT / "ds_configs" / f"zero{stage}.json"), *extra]


def start_run(cmd: list[str], log: Path) -> subprocess.Popen:
    """In its own session (to signal the launcher and its workers together), output to a file: a pipe nobody
    reads would fill up and stall the run."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=train_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    """Until the run's metrics.jsonl has `step` (failing at once if `proc`, the run's launcher, has ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc is None or proc.poll() is None, f"the run ended before step {step}"
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and f'"step": {step},' in metrics.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def run_command(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a launcher; one that outlives `timeout` fails the test with where each of its ranks was waiting."""
    with subprocess.Popen(cmd, cwd=ROOT, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = _dump_and_kill(proc)
            pytest.fail(f"{' '.join(cmd[:6])}... still running after {timeout} s\n--- stdout\n{out[-3000:]}\n"
                        f"--- stderr (the ranks' stacks)\n{err[:12000]}", pytrace=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _dump_and_kill(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGUSR2 to every process under the launcher (the trainer prints its threads' stacks: faults.STACKS_SIGNAL),
    then SIGKILL to the whole session; returns what the job printed."""
    import psutil

    from gpt_novel.faults import STACKS_SIGNAL

    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.cmdline() != child.parent().cmdline():  # not a DataLoader worker (a fork, no handler)
                child.send_signal(STACKS_SIGNAL)
                time.sleep(0.5)  # one process at a time: their dumps share the stderr pipe
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()


def assert_folder_logits_equal_the_engines(ckpt: Path, folder: Path, tmp_path: Path) -> None:
    """The HF folder's logits (bf16) equal, bit for bit, those the training engine computes from the checkpoint
    under 2 processes (tests/engine_logits.py)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "engine.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "engine_logits.py"), str(ckpt), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    engine = torch.load(out)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied on load
    with torch.no_grad():
        assert torch.equal(model(input_ids=engine["input_ids"]).logits, engine["logits"])


def train_lines(run_dir: Path) -> list[tuple]:
    lines = read_metrics(run_dir)
    return [(x["step"], x.get("loss"), x.get("lr"), x.get("grad_norm"), x.get("val_loss")) for x in lines]


def final_weights(run_dir: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints" / f"step-{STEPS:08d}"), tag="ds")


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, cache_dir) -> Path:
    """The sample prepared with short samples and the default tokenizer (BPE), for 2-process training runs."""
    out = tmp_path_factory.mktemp("train") / "data"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "32", "--shard-size", "8KB",
                       "--val-ratio", "0.2") == 0
    return out


ELASTIC = ["--config", "tiny", "--micro-batch-size", "4", "--global-batch-size", "24", "--num-workers", "1",
           "--warmup-steps", "4", "--save-every", "6", "--eval-every", "6", "--sample-every", "100", "--eval-batches",
           "2", "--progress", "false", "--dropout", "0", "--log-samples"]
ELASTIC_STEPS, ELASTIC_CUT = 18, 12


def elastic_command(data: Path, run_dir: Path, nproc: int, stage: int | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "gpt_novel.train", *ELASTIC, "--max-steps", str(ELASTIC_STEPS), "--data", str(data), "--run-dir",
            str(run_dir), "--deepspeed", str(ROOT / "ds_configs" / f"zero{stage}.json"), *extra]


@pytest.fixture(scope="session")
def elastic_run(train_data, tmp_path_factory) -> Path:
    """One uninterrupted 2-process ZeRO-2 run (global batch 24, no dropout, every sample logged): what resumes under
    change (another world size, stage, launcher) are compared with, and the checkpoints they start from."""
    run_dir = tmp_path_factory.mktemp("elastic") / "run"
    result = run_command(elastic_command(train_data, run_dir, 2, 2))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def interrupted(reference: Path, to: Path, cut: int = ELASTIC_CUT) -> Path:
    """A copy of a run as it was right after its checkpoint of step `cut` (as after a SIGKILL a few steps later)."""
    shutil.copytree(reference, to, ignore=shutil.ignore_patterns("DONE", ".lock"))
    for ckpt in (to / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > cut:
            shutil.rmtree(ckpt)
    for log in [to / "metrics.jsonl", *to.glob("samples-rank*.jsonl")]:
        kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= cut]
        log.write_text("".join(line + "\n" for line in kept))
    return to


@pytest.fixture(scope="session")
def zero_runs(train_data, tmp_path_factory) -> dict[int, Path]:
    """One uninterrupted 2-process run per ZeRO stage (shared by the training and consolidation tests)."""
    runs = {}
    for stage in (1, 2, 3):
        run_dir = tmp_path_factory.mktemp(f"ref{stage}") / "run"
        result = run_command(train_command(train_data, run_dir, stage))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[stage] = run_dir
    return runs


# --- the process tree of a run -----------------------------------------------------------------------------

def leftovers(marker: str) -> list[str]:
    """Command lines of live processes that mention marker (the run directory): the whole tree of a run, launcher,
    ranks and DataLoader workers, whatever their sessions."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{proc.name}: {cmd}")
    return found


def pids_of(marker: str, wanted) -> list[int]:
    """The pids of the run's processes whose command line and environment (a list of NAME=value) `wanted` takes."""
    found = []
    for line in leftovers(marker):
        pid, cmd = line.split(": ", 1)
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
            if wanted(cmd, env):
                found.append(int(pid))
    return found


def rank_pid(marker: str, rank: int) -> int:
    """The rank itself, not one of its DataLoader workers (same command line, RANK in the environment too): the
    rank started before the workers it forked."""
    return min(pids_of(marker, lambda cmd, env: "gpt_novel.train" in cmd and f"RANK={rank}" in env))


def kill_job(marker: str) -> None:
    """SIGKILL every process of a run at once (launcher, ranks, DataLoader workers), as a crash of its machine
    would: killing the launcher alone leaves its ranks ~2 s (until their watchdog finds its store gone), in which
    a tiny run can train to its end and leave nothing to resume."""
    for line in leftovers(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def assert_no_leftovers(marker: str, timeout: float = 5) -> None:
    deadline = time.time() + timeout
    while leftovers(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert leftovers(marker) == []
