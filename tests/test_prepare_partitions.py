"""prepare's steps over partitions: the same bytes however the work is spread, restart after a kill, step errors.

The corpus is the sample novel cut into four files (three encodings, one a second download of another), one
partition each; real thulac segments it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, SPLIT_OPTIONS, dataset_bytes, run_prepare, split_corpus

from gpt_novel.cli import main


def _steps(corpus: Path, out: Path, cache: Path, tasks: int) -> None:
    """The pipeline one step at a time, each partition step as `tasks` tasks (what slurm/prepare.sh submits)."""
    common = ["prepare", str(corpus), "--out", str(out), "--cache-dir", str(cache), "--workers", "1", *SPLIT_OPTIONS]
    for step in ("plan", "read", "merge", "segment", "vocab", "encode", "finish"):
        partition_step = step in ("read", "segment", "encode")
        for task in range(tasks if partition_step else 1):
            assert main([*common, "--step", step, "--task", str(task), "--tasks", str(tasks)]) == 0, step


def test_same_bytes_for_any_workers_and_any_number_of_tasks(tmp_path, sample_text, cache_dir, capsys):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    assert run_prepare([corpus], tmp_path / "w1", cache_dir, "--workers", "1", *SPLIT_OPTIONS) == 0
    report = json.loads((tmp_path / "w1" / "report.json").read_text())
    assert report["totals"]["partitions"] == 4 and report["files"][3]["chars_removed"]["duplicate_chapter"] > 0
    assert [f["encoding"] for f in report["files"]] == ["utf-8", "gbk", "utf-8-sig", "utf-8"]
    assert not (tmp_path / ".w1.work").exists()  # removed once the dataset is published
    assert run_prepare([corpus], tmp_path / "w2", cache_dir, "--workers", "2", *SPLIT_OPTIONS) == 0
    _steps(corpus, tmp_path / "t3", cache_dir, tasks=3)
    assert re.search(r"^read: task 2 of 3: \d+ of \d+ file\(s\), partition\(s\) 2 of 4$", capsys.readouterr().out, re.M)
    reference = dataset_bytes(tmp_path / "w1")
    assert dataset_bytes(tmp_path / "w2") == reference
    assert dataset_bytes(tmp_path / "t3") == reference


def test_a_step_before_its_inputs_are_complete_is_one_line(tmp_path, sample_text, cache_dir, capsys):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    common = ["prepare", str(corpus), "--out", str(tmp_path / "d"), "--cache-dir", str(cache_dir), *SPLIT_OPTIONS]
    assert main([*common, "--step", "read"]) == 2
    assert "holds no plan: run the plan step first" in capsys.readouterr().err
    assert main([*common, "--step", "plan"]) == 0
    assert main([*common, "--step", "read", "--task", "0", "--tasks", "2"]) == 0
    assert main([*common, "--step", "merge"]) == 2
    assert "the read step is not complete for partition(s) 1,3" in capsys.readouterr().err
    assert main([*common, "--step", "read", "--task", "1", "--tasks", "2"]) == 0
    assert main([*common, "--step", "segment"]) == 2
    assert "the merge step is not complete in " in capsys.readouterr().err
    assert main([*common[:-len(SPLIT_OPTIONS)], "--seq-len", "64", *SPLIT_OPTIONS[2:], "--step", "read"]) == 2
    assert "was planned with other options (seq_len)" in capsys.readouterr().err


def test_a_prepare_killed_in_a_partition_step_is_finished_by_the_next_run(tmp_path, sample_text, cache_dir):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    out, work, fresh = tmp_path / "d", tmp_path / ".d.work", tmp_path / "fresh-cache"
    cmd = [sys.executable, "-m", "gpt_novel", "prepare", str(corpus), "--out", str(out), "--cache-dir", str(fresh),
           "--workers", "1", "--keep-work", *SPLIT_OPTIONS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = work / "segment" / "p00001" / "DONE.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not out.exists()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.glob("*/*/DONE.json")}
    assert not (work / "segment" / "p00003" / "DONE.json").exists()  # killed in the middle of the step
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "read: 4 of 4 file(s) done earlier, kept (partition(s) 0-3)\n" in rerun.stdout
    assert "segment: 2 of 4 file(s) done earlier, kept (partition(s) 0-1)\n" in rerun.stdout
    for path, stamp in finished.items():  # not redone: the very same files
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    assert run_prepare([corpus], tmp_path / "ref", cache_dir, "--workers", "1", *SPLIT_OPTIONS) == 0
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "ref")


def test_a_damaged_step_output_is_redone(tmp_path, sample_text, cache_dir, capsys):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    args = [corpus], tmp_path / "d", cache_dir, "--workers", "1", "--keep-work", *SPLIT_OPTIONS
    assert run_prepare(*args) == 0
    reference = dataset_bytes(tmp_path / "d")
    words = tmp_path / ".d.work" / "segment" / "p00002" / "words.jsonl"
    words.write_text(words.read_text().replace("镇", "真"))  # same size, other bytes: the digest tells
    assert run_prepare(*args, "--force") == 0
    redone = r"^segment: \d+ of \d+ file\(s\) done earlier, kept \(partition\(s\) 0-1,3\)\nsegment: [\d,]+ chapters, "
    assert re.search(redone, capsys.readouterr().out, re.M)
    assert dataset_bytes(tmp_path / "d") == reference
