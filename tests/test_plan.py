"""The start-up plan, in-process: decided once from a config that never changes, and every check run on the
checkpoint actually loaded, the fallback after a damaged newest one included."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from gpt_novel import checkpoint, plan
from gpt_novel.checkpoint import TrainerState
from gpt_novel.config import train_config
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.shards import sha256_file
from gpt_novel.errors import UserError


def _checkpoint(run_dir: Path, data: Path, step: int, world: int, global_batch: int) -> Path:
    """A complete checkpoint as the trainer writes its JSON side (DeepSpeed's files stand in as one small file)."""
    dataset = Dataset.load(data)
    path = checkpoint.checkpoints_dir(run_dir) / f"{checkpoint.PREFIX}{step:08d}"
    (path / checkpoint.DS_TAG).mkdir(parents=True)
    (path / checkpoint.DS_TAG / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 100)
    shutil.copytree(dataset.tokenizer_dir, path / "tokenizer")
    state = TrainerState(step=step, tokens=step * global_batch * dataset.seq_len, world_size=world,
                         global_batch_size=global_batch, zero_stage=2, data_fingerprint=dataset.fingerprint,
                         scheduler={"_last_lr": [3e-3], "base_lrs": [3e-3]},
                         schedule={"max_steps": 200, "decay_from": None})
    (path / checkpoint.STATE).write_text(state.to_json(), encoding="utf-8")
    (path / checkpoint.MODEL_CONFIG).write_text(json.dumps({"n_layer": 2, "n_head": 4, "n_embd": 128,
                                                            "n_positions": dataset.seq_len}), encoding="utf-8")
    names = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    files = {name: {"bytes": (path / name).stat().st_size, "sha256": sha256_file(path / name)} for name in names}
    marker = {"step": step, "world_size": world, "global_batch_size": global_batch, "val_loss": None, "files": files}
    (path / checkpoint.MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return path


def _damage(path: Path) -> None:
    """Same size, one byte changed: only the digest tells."""
    weights = path / checkpoint.DS_TAG / "mp_rank_00_model_states.pt"
    weights.write_bytes(b"W" + weights.read_bytes()[1:])


def _args(data: Path, run_dir: Path) -> list[str]:
    return ["--config", "tiny", "--data", str(data), "--run-dir", str(run_dir)]


def test_the_parsed_config_is_frozen(sample_data, tmp_path):
    cfg = train_config(_args(sample_data, tmp_path / "run"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.grad_accum = 3
    planned = plan.start(cfg, 2)
    assert (cfg.n_positions, planned.config.n_positions) == (0, Dataset.load(sample_data).seq_len)
    assert (planned.config.global_batch_size, planned.ds_config["train_batch_size"]) == (32, 32)


def test_a_fallback_of_another_world_size_is_planned_again(sample_data, tmp_path):
    """The newest checkpoint (2 processes, global batch 16) fails its digests: the older one, saved by 4 processes
    with global batch 32, is loaded, and the plan follows it (accumulation, elastic load), not the first plan."""
    run_dir = tmp_path / "run"
    _checkpoint(run_dir, sample_data, 12, world=4, global_batch=32)
    _damage(_checkpoint(run_dir, sample_data, 18, world=2, global_batch=16))
    first = plan.start(train_config(_args(sample_data, run_dir)), 2)
    assert first.resume.step == 18 and (first.config.grad_accum, first.elastic) == (1, False)
    warnings = []
    loaded = plan.verified(first, warn=warnings.append)
    assert warnings == ["warning: skipping checkpoint step-00000018: ds/mp_rank_00_model_states.pt does not match its "
                        "sha256 (damaged)"]
    assert loaded.resume.step == 12 and (loaded.config.global_batch_size, loaded.config.grad_accum) == (32, 2)
    assert loaded.elastic and loaded.ds_config["checkpoint"] == {"load_universal": True}
    assert loaded.ds_config["gradient_accumulation_steps"] == 2
    assert plan.verified(loaded, warn=warnings.append) is loaded  # nothing changes once verified


def test_a_fallback_goes_through_the_same_refusals(sample_data, tmp_path):
    """The fallback's global batch (20) cannot be split by this run's 8 × 2: refused as it would be at first."""
    run_dir = tmp_path / "run"
    _checkpoint(run_dir, sample_data, 12, world=1, global_batch=20)
    _damage(_checkpoint(run_dir, sample_data, 18, world=2, global_batch=16))
    first = plan.start(train_config(_args(sample_data, run_dir)), 2)
    with pytest.raises(UserError, match=r"step-00000012 was trained with global batch 20, which --micro-batch-size 8 "
                                        r"× 2 processes does not divide"):
        plan.verified(first, warn=lambda line: None)


def test_a_fallback_past_max_steps_has_nothing_to_train(sample_data, tmp_path):
    run_dir = tmp_path / "run"
    _checkpoint(run_dir, sample_data, 12, world=2, global_batch=16)
    _damage(_checkpoint(run_dir, sample_data, 18, world=2, global_batch=16))
    first = plan.start(train_config([*_args(sample_data, run_dir), "--max-steps", "12", "--warmup-steps", "2"]), 2)
    assert first.finished.startswith(f"{run_dir} has trained 18 steps, beyond --max-steps 12: nothing to train")
    assert plan.verified(first, warn=lambda line: None).finished.startswith(f"{run_dir} has trained 12 steps: "
                                                                             "nothing to train")


def test_trainer_state_round_trips_and_refuses_what_is_not_one():
    state = TrainerState(step=3, tokens=96, world_size=2, global_batch_size=16, scheduler={"_last_lr": [1.0]})
    assert TrainerState.from_json(state.to_json()) == state
    assert TrainerState.from_json(json.dumps({**json.loads(state.to_json()), "later_field": 1})) == state
    with pytest.raises(ValueError, match="no world_size, scheduler"):
        TrainerState.from_json(json.dumps({"step": 3, "tokens": 96, "global_batch_size": 16}))


def test_data_of_another_seq_len_than_the_preset_is_sized_for_is_said_with_both_ways_out(sample_data, tmp_path):
    seq_len = Dataset.load(sample_data).seq_len
    assert seq_len != 256  # the tiny preset is sized for 256
    [warning] = plan.read_inputs(train_config(_args(sample_data, tmp_path / "run"))).warnings
    assert f"the tiny config is sized for data prepared with --seq-len 256; {sample_data} has seq len {seq_len}" \
        in warning
    assert f"pass --data-seq-len {seq_len}" in warning
    agreed = train_config([*_args(sample_data, tmp_path / "run"), "--data-seq-len", str(seq_len)])
    assert plan.read_inputs(agreed).warnings == ()
    longer = dataclasses.replace(agreed, data_seq_len=seq_len // 4)
    assert "each step takes about 4× as long" in plan.seq_len_warning(longer, Dataset.load(sample_data))
