"""The benchmark scripts still run end to end and print the JSON they document (their numbers are not judged here:
speed targets belong to the benchmarks, not to timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, train_env


@pytest.mark.slow
def test_train_benchmark_prints_its_report(train_data):
    cmd = [sys.executable, "benchmarks/train.py", "--data", str(train_data), "--steps", "3", "--warmup", "1",
           "--repeats", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--micro-batch", "2",
           "--grad-accum", "2", "--deepspeed", "ds_configs/zero2.json"]
    done = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["deepspeed"] == "ds_configs/zero2.json" and report["model"]["seq_len"] == 32
    assert len(report["trainer_tokens_per_s"]) == 1 and len(report["bare_tokens_per_s"]) == 2
    bare = sum(report["bare_tokens_per_s"]) / 2
    assert report["ratio"] == pytest.approx(report["trainer_tokens_per_s"][0] / bare, abs=2e-3)
    assert 0 <= report["data_wait_fraction"] < 1
    assert report["ratio_ok"] == (report["ratio"] >= 0.95)
