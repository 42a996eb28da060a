"""Progress of long work: a plain line every STATUS_SECONDS in a log, and each prepare step's closing line, in
files, characters and seconds (in-process)."""

from __future__ import annotations

import io
import re

from conftest import SPLIT_OPTIONS, run_prepare, split_corpus

from gpt_novel import progress
from gpt_novel.cli import main
from gpt_novel.progress import Progress


def test_a_log_gets_a_status_line_with_the_file_the_speed_and_the_time_left():
    out = io.StringIO()
    with Progress("segment", 3000, 3, out=out, every=0) as bar:
        bar.advance(1000, 1)
        bar.advance(1000, 2)
        bar.advance(1000, 3)
        bar.done("3 chapters")
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"segment: file 1 of 3, 1,000 of 3,000 characters \(\S+ characters/s\), about \d+ s left",
                        lines[0])
    assert lines[1].startswith("segment: file 2 of 3, 2,000 of 3,000 characters")
    assert lines[2].startswith("segment: file 3 of 3, 3,000 of 3,000") and "left" not in lines[2]
    assert re.fullmatch(r"segment: 3 chapters in \d+\.\d s \(\S+ characters/s\)", lines[3])
    quiet = io.StringIO()
    with Progress("read", 10_000_000, 2, "bytes", out=quiet, every=3600) as bar:
        bar.advance(5_000_000, 1)
        assert quiet.getvalue() == ""  # not before STATUS_SECONDS
        assert bar.status().startswith("read: file 1 of 2, 5.0 of 10.0 MB (")


def test_numbers_and_times_are_short():
    assert [progress.short(n) for n in (850, 41_234, 1_312_000)] == ["850", "41.2K", "1.31M"]
    assert progress.amount(12_345, "characters") == "12,345 characters"


def test_prepare_counts_files_across_partitions_and_closes_each_step_with_what_it_did(tmp_path, sample_text,
                                                                                       cache_dir, capsys,
                                                                                       monkeypatch):
    monkeypatch.setattr(progress, "STATUS_SECONDS", 0.0)
    corpus = split_corpus(sample_text, tmp_path / "novels")
    assert run_prepare([corpus], tmp_path / "d", cache_dir, "--workers", "1", *SPLIT_OPTIONS) == 0
    out = capsys.readouterr().out
    assert [int(n) for n in re.findall(r"^read: file (\d) of 4, ", out, re.M)] == [1, 2, 3, 4]
    # the last file segmented is c.txt: d.txt's chapters are duplicates, never segmented
    assert re.search(r"^segment: file 3 of 4, [\d,]+ of [\d,]+ characters", out, re.M)
    assert re.search(r"^read: 4 file\(s\), 8 chapters, [\d,]+ characters in \d+\.\d s \([\d.]+ MB/s\)$", out, re.M)
    assert re.search(r"^merge: 4 file\(s\): \d+ boilerplate line\(s\) repeated across files, 2 duplicate chapter",
                     out, re.M)
    assert re.search(r"^encode: 6 chapters encoded to [\d,]+ ids, \d+ train shard\(s\) in ", out, re.M)
    assert re.search(r"^hash: 4 file\(s\), [\d.]+ MB in ", out, re.M)
    assert "partition(s)" not in out  # one machine: files, not partitions


def test_more_tasks_than_partitions_is_said_with_a_size_that_gives_each_work(tmp_path, sample_text, cache_dir,
                                                                              capsys):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    common = ["prepare", str(corpus), "--out", str(tmp_path / "d"), "--cache-dir", str(cache_dir), *SPLIT_OPTIONS]
    assert main([*common, "--step", "plan", "--tasks", "6"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^plan: 4 file\(s\), [\d.]+ MB, in 4 partition\(s\) of up to --partition-size 1KB", captured.out,
                     re.M)
    assert re.search(r"warning: 4 partition\(s\) for 6 tasks: 2 task\(s\) of each array will have nothing to do; "
                     r"--partition-size [\d.]+MB would give each task work", captured.err)
    assert main([*common, "--step", "read", "--task", "5", "--tasks", "6"]) == 0
    assert "read: task 5 of 6 has nothing to do: the plan has 4 partition(s) for 6 tasks" in capsys.readouterr().out
