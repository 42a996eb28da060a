"""Real 2-process DeepSpeed training on CPU (torchrun, gloo): ZeRO 1/2/3, exact resume, signals, refusals.

Each launch costs ~10 s of start-up, so the runs are shared: one uninterrupted run per ZeRO stage (module fixture)
serves both the loss-goes-down check and as the reference for the resume tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    COMMON,
    LAUNCH,
    ROOT,
    STEPS,
    assert_no_leftovers,
    final_weights,
    interrupted,
    kill_job,
    rank_pid,
    run_command,
    start_run,
    train_command,
    train_env,
    train_lines,
    wait_for_step,
)

from gpt_novel import parallel

pytestmark = pytest.mark.slow


@pytest.fixture
def data(train_data) -> Path:
    return train_data


@pytest.fixture
def reference(zero_runs) -> dict[int, Path]:
    return zero_runs

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_and_the_loss_goes_down(reference, stage):
    run_dir = reference[stage]
    losses = [loss for step, loss, *_ in train_lines(run_dir) if loss is not None]
    assert len(losses) == STEPS
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0
    assert any(v is not None for *_, v in train_lines(run_dir))  # validation ran
    assert (run_dir / "loss.png").stat().st_size > 0 and any((run_dir / "tensorboard").iterdir())
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == [f"step-{s:08d}" for s in (12, 18, 24)]  # keep_last 3


@pytest.mark.parametrize(("stage", "how"), [(1, None), (3, signal.SIGKILL), (2, signal.SIGTERM)])
def test_interrupted_run_resumes_exactly(data, reference, tmp_path, stage, how):
    """SIGKILL of the whole job, as a crash; or SIGTERM to rank 1 alone, through `gpt-novel launch`: every rank
    saves and stops, the caller gets 75 (the other graceful stops: test_faults.py). The ZeRO-1 run resumes a copy
    of the reference as it was at its step-12 checkpoint, with --deterministic true: a CPU is deterministic
    already, so it still repeats the reference run bit for bit."""
    run_dir = tmp_path / "run"
    cmd = train_command(data, run_dir, stage, 2, *(["--deterministic", "true"] if stage == 1 else []))
    if how is None:
        interrupted(reference[stage], run_dir)
    else:
        log = tmp_path / "first.log"
        proc = start_run(cmd if how == signal.SIGKILL else LAUNCH + cmd, log)
        kill_at = random.Random(stage).randint(8, 16)  # after the step-6 checkpoint
        wait_for_step(run_dir, kill_at, proc)
        if how == signal.SIGKILL:
            kill_job(str(run_dir))
        else:
            os.kill(rank_pid(str(run_dir), 1), how)
        code = proc.wait(timeout=120)
        assert_no_leftovers(str(run_dir), timeout=10)
        out = log.read_text()
        if how == signal.SIGTERM:
            assert code == 75 and "stop requested" in out, out[-3000:]
            saved = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
            assert (saved / "COMPLETE.json").exists() and int(saved.name[5:]) >= kill_at
    result = run_command(cmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert train_lines(run_dir) == train_lines(reference[stage])  # every loss, lr, grad norm, val loss: bitwise
    a, b = final_weights(reference[stage]), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_config_is_refused_before_launch(data, tmp_path):
    result = run_command(train_command(data, tmp_path / "run", 2, 2, "--n-embd", "130"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpt-novel train: error:")]
    assert errors == ["gpt-novel train: error: n_embd 130 is not divisible by n_head 4"]  # once, from rank 0
    # no traceback from any rank (torchrun still reports the failed launch in its own words)
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    assert "DeepSpeed" not in result.stdout + result.stderr  # no DeepSpeed start-up
    assert not (tmp_path / "run").exists()


def test_non_finite_updates_are_skipped_then_training_stops(data, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpt_novel.train", *COMMON, "--data", str(data), "--run-dir", str(run_dir),
           "--grad-accum", "1", "--lr", "1e6", "--min-lr", "0", "--warmup-steps", "0", "--max-bad-steps", "3",
           "--save-every", "1"]
    result = run_command(cmd)  # one plain process: a world of one
    assert result.returncode == 1
    assert "3 bad steps in a row" in result.stdout + result.stderr
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["skipped_steps"] == 3 and lines[0]["skipped_steps"] == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001"]  # the last good one


def test_compiled_model_trains_like_the_eager_one_and_consolidates(data, tmp_path):
    """--compile true (torch.compile through DeepSpeed; inductor builds C++ on a CPU): the first loss is the eager
    run's to bf16 precision, training goes on, and the checkpoint holds the plain model's weights. The model is
    compiled again for evaluation (no grad) alone: sampling runs eagerly, where each new length would recompile."""
    from transformers import AutoModelForCausalLM

    from gpt_novel import consolidate

    short = ["--n-layer", "1", "--max-steps", "4", "--warmup-steps", "1", "--save-every", "4", "--eval-every", "4",
             "--sample-every", "4"]
    losses = {}
    for compiled in ("false", "true"):
        run_dir = tmp_path / f"compile-{compiled}"
        cmd = [sys.executable, "-m", "gpt_novel.train", *COMMON, "--data", str(data), "--run-dir", str(run_dir),
               *short, "--compile", compiled]
        inductor = tmp_path / f"inductor-{compiled}"
        env = dict(train_env(), TORCHINDUCTOR_CACHE_DIR=str(inductor), TORCH_LOGS="recompiles")
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert result.stderr.count("Recompiling function") == (compiled == "true")  # for evaluation only
        assert result.stdout.count("--compile: inductor builds kernels") == (compiled == "true")  # said once
        losses[compiled] = [loss for _, loss, *_ in train_lines(run_dir) if loss is not None]
        kernels = [f for f in inductor.rglob("*") if f.is_file()] if inductor.exists() else []
        assert bool(kernels) == (compiled == "true")  # inductor built kernels for the compiled run only
    assert losses["true"][0] == pytest.approx(losses["false"][0], rel=1e-2)
    assert len(losses["true"]) == 4 and all(torch.isfinite(torch.tensor(losses["true"])))
    hf = consolidate.consolidate(tmp_path / "compile-true", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_accelerate_gives_the_torchrun_run_and_says_each_thing_once_from_rank_0(data, reference, tmp_path):
    """Two ranks through `gpt-novel launch accelerate launch`, whose YAML names zero2.json while --deepspeed names
    zero3.json: the run is torchrun's ZeRO-2 run sample for sample, the disagreement is said once and the config
    used (zero2.json) recorded. DeepSpeed's own "Setting accelerator to CPU" and "built successfully" lines are
    gone, rank 0 alone describes the run, and outside a terminal the progress is one status line at the last step,
    not redrawn bars. (The first-build announcement is tested in-process, `test_parallel.py`: building the op from
    an empty cache here cost 1–2 minutes.)"""
    import yaml

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpt_novel", "launch", sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "launch" / "zero2.yaml"), "--num_processes", "2", "-m", "gpt_novel.train",
           *COMMON, "--progress", "true", "--data", str(data), "--run-dir", str(run_dir), "--deepspeed",
           "ds_configs/zero3.json"]
    built = parallel.shm_op_built()  # normally by an earlier run of the session
    result = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert train_lines(run_dir) == train_lines(reference[2])
    lines = (result.stdout + result.stderr).splitlines()

    def count(text: str) -> int:
        return sum(text in line for line in lines)

    assert count("first start on this machine: DeepSpeed is compiling its CPU communication op") == (0 if built else 1)
    assert count("built successfully") == 0 and count("Setting accelerator") == 0
    assert count("parameters on cpu, ZeRO-2, world size 2") == 1
    assert count(f"step {STEPS}/{STEPS}: loss") == 1 and count("done:") == 1
    assert "\r" not in result.stdout + result.stderr and "[rank 1]" not in result.stdout
    warnings = [line for line in lines if "accelerate's config names the DeepSpeed" in line]
    assert len(warnings) == 1 and "--deepspeed ds_configs/zero3.json (ZeRO-3, from the flag or the preset)" in \
        warnings[0]
    saved = yaml.safe_load((run_dir / "checkpoints" / f"step-{STEPS:08d}" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["deepspeed"] == str(ROOT / "ds_configs" / "zero2.json")
    assert_no_leftovers(str(run_dir))


def test_overfitting_is_flagged_and_the_best_checkpoint_kept_and_consolidated(sample_data, tmp_path, capsys):
    """A tiny model trained far too long on the sample: the val loss turns up while the train loss keeps falling.
    One warning names the best checkpoint; --keep-last 1 still keeps it; consolidate --best picks it."""
    from gpt_novel import consolidate
    from gpt_novel.metrics import read_metrics

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpt_novel", "train", "--config", "tiny", "--data", str(sample_data), "--run-dir",
           str(run_dir), "--max-steps", "120", "--warmup-steps", "5", "--eval-every", "10", "--save-every", "10",
           "--keep-last", "1", "--overfit-evals", "2", "--dropout", "0", "--sample-every", "1000", "--progress",
           "false"]
    result = run_command(cmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"])["step"]
    assert best < 120, "the val loss never turned up: the test no longer overfits"
    warnings = [line for line in result.stdout.splitlines() if "the model is overfitting" in line]
    assert len(warnings) == 1 and f"the best checkpoint so far is step-{best:08d}" in warnings[0]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == [f"step-{best:08d}", "step-00000120"]
    out = tmp_path / "hf"
    capsys.readouterr()
    assert consolidate.main([str(run_dir), str(out), "--best"]) == 0
    assert f"the best checkpoint is step-{best:08d}" in capsys.readouterr().err
    assert f"step {best}" in (out / "README.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as refused:
        consolidate.main([str(run_dir), str(out), "--best", "--step", "120"])
    assert refused.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
