"""Resume under change (real DeepSpeed, torchrun, gloo): another world size or ZeRO stage through DeepSpeed's
universal checkpoint, the same samples whatever the layout, a longer or shorter --max-steps, and one-line refusals.

One uninterrupted 2-process ZeRO-2 run (global batch 24, no dropout, every sample logged) is the reference
(`elastic_run`); an "interrupted" copy of it keeps only what existed at its step-12 checkpoint, as after a SIGKILL at
step 13-17.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    ELASTIC_CUT,
    ELASTIC_STEPS,
    ROOT,
    elastic_command,
    interrupted,
    run_command,
    run_prepare,
    train_env,
    train_lines,
)

from gpt_novel import checkpoint, train

pytestmark = pytest.mark.slow

STEPS, CUT = ELASTIC_STEPS, ELASTIC_CUT


def _samples_by_step(run_dir: Path) -> dict[int, list[tuple[int, int]]]:
    """Every (shard, index) each step trained on, all ranks together (--log-samples)."""
    steps: dict[int, list[tuple[int, int]]] = {}
    for log in run_dir.glob("samples-rank*.jsonl"):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(map(tuple, record["samples"]))
    return steps


def _losses(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {step: (loss, lr) for step, loss, lr, *_ in train_lines(run_dir) if loss is not None}


@pytest.mark.parametrize(("nproc", "stage"), [(1, 2), (3, 3)])
def test_resume_on_another_world_size_and_stage_trains_on_the_same_samples(train_data, elastic_run, tmp_path, nproc,
                                                                           stage):
    run_dir = interrupted(elastic_run, tmp_path / "run")
    result = run_command(elastic_command(train_data, run_dir, nproc, stage))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "saved on 2 processes, ZeRO-2, converted to a DeepSpeed universal checkpoint" in output
    assert not list((run_dir / "checkpoints").glob(".universal-*"))  # the conversion is removed once loaded
    want, got = _samples_by_step(elastic_run), _samples_by_step(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # the same 24 samples at every step, none twice, whatever the layout
        assert len(got[step]) == len(set(got[step])) == 24 and sorted(got[step]) == sorted(want[step])
    ref, now = _losses(elastic_run), _losses(run_dir)
    assert abs(now[CUT + 1][0] - ref[CUT + 1][0]) < 1e-2  # the first resumed step
    assert [now[s][1] for s in range(CUT + 1, STEPS + 1)] == [ref[s][1] for s in range(CUT + 1, STEPS + 1)]
    config = json.loads((run_dir / "checkpoints" / f"step-{STEPS:08d}" / "COMPLETE.json").read_text())
    assert (config["world_size"], config["global_batch_size"]) == (nproc, 24)


def _loaded_state(ckpt: Path, nproc: int, stage: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "tests" / "elastic_state.py"), str(ckpt), str(ROOT / "ds_configs" / f"zero{stage}.json"),
           str(out)]
    result = run_command(cmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """The checkpoint's fp32 weights and Adam moments, each parameter whole, as DeepSpeed's ds_to_universal reads
    them from the saved files: converted once per checkpoint."""
    converted: dict[Path, Path] = {}

    def of(ckpt: Path) -> Path:
        if ckpt not in converted:
            out = tmp_path_factory.mktemp("universal")
            subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                            str(ckpt / checkpoint.DS_TAG), "--output_folder", str(out), "--inject_missing_state"],
                           check=True, capture_output=True, env=train_env(), timeout=300)
            converted[ckpt] = out / "zero"
        return converted[ckpt]

    return of


def _saved(zero: Path, name: str, key: str) -> torch.Tensor:
    value = torch.load(zero / name / f"{key}.pt", weights_only=True)
    return (value["param"] if isinstance(value, dict) else value).reshape(-1)


@pytest.mark.parametrize(("source", "nproc", "stage"), [("zero2", 3, 3), ("zero3", 1, 1), ("zero2", 1, "3_offload")])
def test_master_weights_and_adam_moments_survive_the_change(elastic_run, zero_runs, saved_state, tmp_path, source,
                                                          nproc, stage):
    ckpt = (elastic_run / "checkpoints" / f"step-{CUT:08d}" if source == "zero2"
            else zero_runs[3] / "checkpoints" / "step-00000012")
    zero = saved_state(ckpt)
    loaded = _loaded_state(ckpt, nproc, stage, tmp_path / "loaded.pt")
    assert len(loaded) > 10
    for name, values in loaded.items():
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(values[key].reshape(-1), _saved(zero, name, key)), (name, key)


def test_raising_max_steps_continues_the_decay_without_a_jump(train_data, elastic_run, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(elastic_run, run_dir)
    result = run_command(elastic_command(train_data, run_dir, 2, 2, "--max-steps", "30"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "--max-steps 30 (the checkpoint planned 18)" in output
    lrs = [lr for _, (_, lr) in sorted(_losses(run_dir).items())]
    peak = max(lr for _, lr in _losses(elastic_run).values())
    assert len(lrs) == 30 and max(lrs) == peak and lrs[:STEPS] == [lr for _, lr in _losses(elastic_run).values()]
    steepest = max(a - b for a, b in zip(lrs[4:17], lrs[5:18], strict=True))  # the planned decay's own slope
    assert all(0 <= a - b <= steepest for a, b in zip(lrs[17:], lrs[18:], strict=False))
    assert lrs[-1] == pytest.approx(peak / 10, rel=0.2)  # close to tiny's min_lr at the new last step
    again = elastic_command(train_data, run_dir, 2, 2, "--max-steps", "30")  # the plan is kept
    code, lines = _main_on_rank_0_of(2, again, monkeypatch, capsys)
    assert code == 0 and "nothing to train" in lines[-1]


def _main_on_rank_0_of(world: int, cmd: list[str], monkeypatch, capsys) -> tuple[int, list[str]]:
    """The trainer's start in-process, as rank 0 of `world` processes would run it from `cmd` (a torchrun command
    line): what it decides before any process group is decided here, with no process group. Its status and lines."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world)}.items():
        monkeypatch.setenv(name, value)
    code = train.main(cmd[cmd.index("gpt_novel.train") + 1:])
    return code, capsys.readouterr().err.splitlines()


def test_lowering_max_steps_below_the_step_reached_ends_at_once(train_data, elastic_run, monkeypatch, capsys):
    cmd = elastic_command(train_data, elastic_run, 2, 2, "--max-steps", "10")
    code, lines = _main_on_rank_0_of(2, cmd, monkeypatch, capsys)
    assert code == 0 and lines == [
        f"{elastic_run} has trained {STEPS} steps, beyond --max-steps 10: nothing to train (raise --max-steps to "
        f"train longer; tools/consolidate.py {elastic_run} HF_DIR to use it)"]


def _refusal(cmd: list[str], monkeypatch, capsys) -> str:
    code, lines = _main_on_rank_0_of(2, cmd, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gpt-novel train: error: "), lines
    return lines[0]


def test_another_shape_dataset_or_vocabulary_is_refused_before_loading(train_data, elastic_run, tmp_path, cache_dir,
                                                                       monkeypatch, capsys):
    """In-process, rank 0 of 2 (these are decided before any process group; `test_train.py` has a refusal through
    torchrun, said once by rank 0)."""
    def refusal(cmd: list[str]) -> str:
        return _refusal(cmd, monkeypatch, capsys)

    line = refusal(elastic_command(train_data, elastic_run, 2, 2, "--n-layer", "3"))
    assert "--n-layer 3 (the checkpoint's 2)" in line and "new --run-dir" in line
    other = tmp_path / "other"  # the same vocabulary, another split
    assert run_prepare([ROOT / "sample" / "corpus"], other, cache_dir, "--tokenizer", str(train_data / "tokenizer"),
                       "--seq-len", "32", "--val-ratio", "0.1") == 0
    capsys.readouterr()
    line = refusal(elastic_command(other, elastic_run, 2, 2))
    assert "with another dataset (fingerprint" in line and "then --init-from HF_DIR" in line
    chars = tmp_path / "chars"
    assert run_prepare([ROOT / "sample" / "corpus"], chars, cache_dir, "--tokenizer", "char", "--seq-len", "32") == 0
    capsys.readouterr()
    line = refusal(elastic_command(chars, elastic_run, 2, 2))
    assert "another vocabulary" in line
    line = refusal(elastic_command(train_data, elastic_run, 2, 2, "--global-batch-size", "48"))
    assert "trained with global batch 24; this run asks for 48" in line
    unset = elastic_command(train_data, elastic_run, 2, 2, "--micro-batch-size", "5")
    del unset[unset.index("--global-batch-size"):unset.index("--global-batch-size") + 2]  # the checkpoint's, then
    line = refusal(unset)
    assert "trained with global batch 24, which --micro-batch-size 5 × 2 processes does not divide" in line


def test_deepspeeds_zero_to_fp32_works_without_a_tag(elastic_run, tmp_path):
    ckpt = elastic_run / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "latest").read_text() == checkpoint.DS_TAG
    result = subprocess.run([sys.executable, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(tmp_path / "out")],
                            capture_output=True, text=True, env=train_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "out").iterdir())
