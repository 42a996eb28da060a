"""Faults on real processes (torchrun, 2 ranks, CPU): every rank ends within seconds, with one line naming the
cause and the right status, and no process is left behind; one writer per run directory; nothing loaded from a
checkpoint runs code; the caller of `gpt-novel launch` gets 75 after a graceful stop, however it was asked for.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    COMMON,
    LAUNCH,
    ROOT,
    SAMPLE_DIR,
    STEPS,
    assert_no_leftovers,
    leftovers,
    pids_of,
    run_command,
    run_prepare,
    start_run,
    train_command,
    train_env,
    train_lines,
    wait_for_step,
)

from gpt_novel import checkpoint, consolidate
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream
from gpt_novel.errors import UserError

pytestmark = pytest.mark.slow


def run_until_exit(cmd: list[str], log: Path, error_mark: str = "error") -> tuple[int, float]:
    """Run cmd (output to a file); return its status and the seconds from the first error line to its exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=train_env(), stdout=out, stderr=subprocess.STDOUT)
    seen = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if seen is None and f"gpt-novel train: {error_mark}" in log.read_text():
            seen = time.time()
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("the run did not end: " + log.read_text()[-3000:])
    return proc.returncode, time.time() - (seen or time.time())


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("gpt-novel train: error")]


def rank_only_shard(data: Path, rank: int, steps: int) -> str:
    """A train shard that `rank` reads in its first two optimizer steps and the other rank not in its first `steps`
    (it prefetches a few micro-batches before it waits for `rank` in an all-reduce)."""
    shards = ShardSet.load(Dataset.load(data), "train")
    streams = [TrainStream(shards, StreamSpec(1234, r, 2, 4, 2)) for r in (0, 1)]
    others = {s for g in range(steps * 2) for s, _ in streams[1 - rank].sample_ids(g)}
    mine = [s for g in range(4) for s, _ in streams[rank].sample_ids(g) if s not in others]
    assert mine, "no shard read by one rank only"
    return str(shards.paths[mine[0]].relative_to(data))


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, cache_dir) -> Path:
    """Shards of two or three samples: the ranks split every global batch, so a shard that one rank reads and the
    other not needs shards shorter than a rank's share of a step (8 samples)."""
    out = tmp_path_factory.mktemp("small-shards") / "data"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "32", "--shard-size", "2KB",
                       "--val-ratio", "0.2") == 0
    return out


def test_a_damaged_shard_on_rank_1_only_ends_every_rank(small_shards, tmp_path):
    """One damage through two ranks (the others, each one line, in-process: `test_stream.py`)."""
    data = tmp_path / "data"
    shutil.copytree(small_shards, data)
    rel = rank_only_shard(data, rank=1, steps=6)  # rank 0 gets no further
    raw = bytearray((data / rel).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, one id changed
    (data / rel).write_bytes(raw)
    run_dir = tmp_path / "run"
    code, seconds = run_until_exit(LAUNCH + train_command(data, run_dir, 2), tmp_path / "log")
    out = (tmp_path / "log").read_text()
    assert code == 2, out[-3000:]  # bad input, through torchrun, told by `gpt-novel launch`
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(f"gpt-novel train: error on rank 1: shard {rel} of {data} "), out
    assert "altered or truncated" in lines[0] and lines[0].endswith("the data directory is damaged; prepare it again")
    assert f'File "{ROOT / "gpt_novel"}' not in out  # no traceback through our code (torchrun prints its own)
    assert seconds < 30, seconds
    assert_no_leftovers(str(run_dir))
    print(f"altered shard: every rank ended {seconds:.1f} s after the error line")


def test_one_process_with_workers_ends_on_a_missing_shard(train_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    for shard in (data / "train").glob("*.tar"):
        shard.unlink()
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpt_novel", "train", *COMMON, "--data", str(data), "--run-dir", str(run_dir),
           "--num-workers", "2"]
    code, seconds = run_until_exit(cmd, tmp_path / "log")
    out = (tmp_path / "log").read_text()
    assert code == 2 and len(error_lines(out)) == 1 and "is missing" in out, out[-3000:]
    assert "Traceback" not in out and seconds < 30
    assert_no_leftovers(str(run_dir))
    print(f"one process, 2 workers, missing shard: ended {seconds:.1f} s after the error line")
    assert not (run_dir / ".lock").exists()  # released on the failure path too


def _mount_tmpfs(path: Path, size: int, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_an_unwritable_run_dir_is_refused_before_deepspeed_starts(train_data, tmp_path):
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, 1 << 20, "ro"):
        run_dir = ro / "run"
    else:  # no mount here (not root): a path under a regular file is as unwritable
        (tmp_path / "file").write_text("")
        run_dir = tmp_path / "file" / "run"
    try:
        result = run_command(LAUNCH + train_command(train_data, run_dir, 2))
    finally:
        _umount(ro)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert len(error_lines(out)) == 1 and f"--run-dir {run_dir} is not writable" in out
    assert "parameters, ZeRO" not in out  # training never started
    assert_no_leftovers(str(run_dir))


def test_a_full_disk_during_a_save_ends_every_rank(train_data, zero_runs, tmp_path):
    one = sum(f.stat().st_size for f in (zero_runs[2] / "checkpoints" / f"step-{STEPS:08d}").rglob("*"))
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, int(one * 1.6)):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run_dir = mnt / "run"
        code, seconds = run_until_exit(LAUNCH + train_command(train_data, run_dir, 2), tmp_path / "log")
        out = (tmp_path / "log").read_text()
        assert code == 1, out[-3000:]
        lines = error_lines(out)
        assert len(lines) == 1 and "No space left on device" in lines[0] and str(run_dir) in lines[0], out[-3000:]
        assert seconds < 30
        assert_no_leftovers(str(run_dir))
        print(f"disk full during a save: every rank ended {seconds:.1f} s after the error line")
        first = run_dir / "checkpoints" / "step-00000006"
        assert checkpoint.find_latest(run_dir) == first  # the first one is intact
        # the failed save took its folder with it (when rank 0 met the error: a rank 1 that did ends rank 0 first)
        assert checkpoint.leftovers(run_dir / "checkpoints") == [] or "error on rank 0" not in out
        # a leftover of a crash (a SIGKILL in the middle of a save) is removed before free space is judged
        planted = run_dir / "checkpoints" / ".tmp-step-00000012" / "ds"
        planted.mkdir(parents=True)
        (planted / "mp_rank_00_model_states.pt").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - (64 << 10)))
        code, _ = run_until_exit(LAUNCH + train_command(train_data, run_dir, 2), tmp_path / "rerun.log")
        out = (tmp_path / "rerun.log").read_text()
        assert code == 2 and len(error_lines(out)) == 1, out[-3000:]  # rank 1, inside DeepSpeed's start, ends too
        assert_no_leftovers(str(run_dir))
        assert f"removing {run_dir}/checkpoints/.tmp-step-00000012, left by a save or conversion that was " \
               "interrupted" in out, out[-3000:]
        # this small disk holds one checkpoint and a half: the refusal counts the space the leftover held
        free = float(out.split(f"--run-dir {run_dir} has ")[1].split(" MB free")[0])
        assert free * 1e6 == pytest.approx(shutil.disk_usage(mnt).free, rel=0.05) and free > 1
    finally:
        _umount(mnt)


def test_two_trainers_on_one_run_dir(train_data, zero_runs, tmp_path):
    run_dir = tmp_path / "run"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(train_command(train_data, run_dir, 2), cwd=ROOT, env=train_env(), stdout=log,
                                 stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run_dir / ".lock").exists() and time.time() < deadline:  # the first is starting
        time.sleep(0.05)
    second = run_command(train_command(train_data, run_dir, 2))
    assert second.returncode != 0
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and f"run directory {run_dir} is in use by pid" in lines[0] and "remove" in lines[0], lines
    assert first.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert train_lines(run_dir) == train_lines(zero_runs[2])  # the first run unharmed: no interleaved lines
    assert not (run_dir / ".lock").exists()


def test_a_sigkilled_launcher_takes_its_ranks_and_workers_with_it(train_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_run(train_command(train_data, run_dir, 2, 2, "--max-steps", "100000"), tmp_path / "log")
    wait_for_step(run_dir, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun's ranks run in sessions of their own: this reaches the agent only
    proc.wait(timeout=60)
    started = time.time()
    assert_no_leftovers(str(run_dir), timeout=10)
    assert time.time() - started < 10
    assert "the launcher is gone (its store does not answer); stopping" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("launcher", ["torchrun 2", "accelerate 1"])
def test_a_sigkilled_gpt_novel_launch_takes_its_launcher_and_ranks_with_it(train_data, tmp_path, launcher):
    """The launcher is asked to stop (SIGTERM, from the kernel) when gpt-novel launch dies: the ranks save and
    exit, where they used to train on unattended until --max-steps, holding the run's lock. accelerate with one
    process runs the trainer as its child (no torchrun agent): the case that left the trainer behind."""
    run_dir = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    cmd = train_command(train_data, run_dir, 2, 2, "--max-steps", "100000")
    if launcher == "accelerate 1":
        cmd = [str(bin_dir / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "zero2.yaml"),
               "--num_processes", "1", *cmd[cmd.index("-m", 3):]]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(LAUNCH + cmd, cwd=ROOT, env=train_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and '"step": 3,' not in _text(run_dir / "metrics.jsonl"):
        time.sleep(0.05)
    assert len(leftovers(str(run_dir))) > 1, _text(tmp_path / "log")[-3000:]  # the launcher and its ranks
    proc.kill()
    assert proc.wait() == -9
    assert_no_leftovers(str(run_dir), timeout=60)
    assert checkpoint.find_latest(run_dir) is not None and not (run_dir / ".lock").exists()
    assert "stop requested (signal or STOP file) after step" in _text(tmp_path / "log")


# a STOP file through gpt-novel launch: test_launchers.py ("gpt-novel launch torchrun 1")
# SIGTERM to one rank: test_train.py's interrupted run, resumed exactly after
@pytest.mark.parametrize("how", ["SIGTERM to gpt-novel launch", "SIGTERM to torchrun"])
def test_a_graceful_stop_reaches_the_caller_as_75(train_data, tmp_path, how):
    run_dir = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(LAUNCH + train_command(train_data, run_dir, 2), cwd=ROOT, env=train_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and '"step": 8,' not in _text(run_dir / "metrics.jsonl"):
        time.sleep(0.05)
    if how == "SIGTERM to gpt-novel launch":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(pids_of(str(run_dir), lambda cmd, env: cmd.startswith(sys.executable + " -m torch.distributed.run"))[0],
                signal.SIGTERM)
    code = proc.wait(timeout=180)
    out = (tmp_path / "log").read_text()
    assert code == 75, out[-3000:]
    assert "stop requested" in out and checkpoint.find_latest(run_dir) is not None
    assert_no_leftovers(str(run_dir))


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


class _Planted:
    """A pickle that, if ever unpickled, creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickles_in_a_checkpoint_never_run(zero_runs, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(zero_runs[2] / "checkpoints" / f"step-{STEPS:08d}", ckpt)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Planted(marker))
    for name in (checkpoint.STATE, "rng-rank00000.json", "trainer_state.pt", "rng-rank00000.pt"):
        (ckpt / name).write_bytes(payload)
    with pytest.raises(ValueError, match="trainer_state.json is unreadable"):
        checkpoint.load_state(ckpt)
    with pytest.raises(UserError, match="rng-rank00000.json is unreadable"):
        checkpoint.restore_rng(ckpt, 0)
    with pytest.raises(UserError, match="cannot be used"):  # refused before DeepSpeed unpickles anything
        consolidate.consolidate(ckpt, tmp_path / "hf")
    assert not marker.exists()


def test_a_file_added_to_a_finished_checkpoint_is_never_loaded(zero_runs, tmp_path):
    """DeepSpeed's loaders glob ds/: an extra rank's optimizer file, left out of COMPLETE.json, would be unpickled
    by consolidation and by an elastic resume. The checkpoint is refused (or skipped for the one before it)."""
    run_dir = tmp_path / "run"
    shutil.copytree(zero_runs[2], run_dir, ignore=shutil.ignore_patterns(".lock"))
    newest = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    marker = tmp_path / "pwned"
    added = "ds/bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt"
    (newest / added).write_bytes(pickle.dumps(_Planted(marker)))
    why = f"{added} is not listed in its COMPLETE.json (a file added after the save is never loaded)"
    with pytest.raises(UserError, match="cannot be used: " + why.replace("(", r"\(").replace(")", r"\)")):
        consolidate.consolidate(newest, tmp_path / "hf")
    warnings = []
    older = run_dir / "checkpoints" / f"step-{STEPS - 6:08d}"
    assert checkpoint.find_latest(run_dir, warn=warnings.append) == older  # the check before a (elastic) resume
    assert warnings == [f"warning: skipping checkpoint {newest.name}: {why}"]
    (newest / added).unlink()
    (newest / "ds" / "elsewhere").symlink_to(older / "ds")
    assert checkpoint.problem(newest).startswith("ds/elsewhere is not listed")
    assert not marker.exists()


def test_same_size_damage_in_a_checkpoint_is_named(zero_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(zero_runs[2], run_dir)
    newest = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    victim = sorted((newest / "ds").glob("*optim_states.pt"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    victim.write_bytes(raw)
    assert checkpoint.find_latest(run_dir) == newest  # sizes alone cannot tell
    warnings = []
    found = checkpoint.find_latest(run_dir, warn=warnings.append, check=checkpoint.verify)
    assert found == run_dir / "checkpoints" / f"step-{STEPS - 6:08d}"
    assert warnings == [f"warning: skipping checkpoint {newest.name}: ds/{victim.name} does not match its sha256 "
                        "(damaged)"]


def test_a_torn_newest_checkpoint_is_skipped_and_the_run_resumes_exactly(train_data, zero_runs, tmp_path):
    """Both ranks check the digests together and fall back to the checkpoint before, bitwise the same run."""
    run_dir = tmp_path / "run"
    shutil.copytree(zero_runs[2], run_dir)
    newest = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    victim = next((newest / "ds").glob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[:100])  # torn write
    result = run_command(train_command(train_data, run_dir, 2, 2, "--max-steps", str(STEPS)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"skipping checkpoint step-{STEPS:08d}" in output and f"step-{STEPS - 6:08d}" in output
    assert train_lines(run_dir) == train_lines(zero_runs[2])
