"""The model built from a preset, its optimizer groups, and the training config's checks (no process group)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import ROOT

from gpt_novel import plan
from gpt_novel.config import TrainConfig, train_config
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.vocab import Vocab
from gpt_novel.errors import UserError
from gpt_novel.model import build_model, count_params, param_groups


@pytest.fixture(scope="module")
def cfg(sample_data) -> TrainConfig:
    return plan.start(train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "unused"]), 2).config


def test_preset_and_overrides(sample_data):
    cfg = train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "r", "--n-layer", "3",
                           "--lr", "1e-3", "--compile", "true"])
    assert (cfg.preset, cfg.n_layer, cfg.n_embd, cfg.lr, cfg.compile) == ("tiny", 3, 128, 1e-3, True)


def test_model_follows_the_config_and_the_tokenizer(cfg, sample_data):
    vocab = Vocab.load(sample_data / "tokenizer")
    model = build_model(cfg, vocab)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.n_positions) == (2, 4, 128, len(vocab), 64)
    assert (c.eos_token_id, c.pad_token_id, c.bos_token_id) == (vocab.cls, vocab.pad, vocab.mask)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    assert c._attn_implementation == "sdpa"
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_no_weight_decay_on_biases_and_layernorm(cfg, sample_data):
    model = build_model(cfg, Vocab.load(sample_data / "tokenizer"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ln = model.transformer.h[0].ln_1
    assert any(p is ln.weight for p in no_decay["params"]) and any(p is ln.bias for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_activation_checkpointing_recomputes_the_same_gradients(cfg, sample_data):
    """Checkpointing trades memory for a second forward in backward; the gradients must not change."""
    vocab = Vocab.load(sample_data / "tokenizer")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(TrainConfig(**{**cfg.__dict__, "activation_checkpointing": checkpointing,
                                           "dropout": 0.0}), vocab).train()
        assert model.is_gradient_checkpointing == checkpointing
        ids = torch.arange(2 * 33).remainder(len(vocab)).view(2, 33)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--n-embd", "130"], "n_embd 130 is not divisible by n_head 4"),
     (["--n-positions", "32"], "n_positions 32 is shorter than the data's seq_len 64"),
     (["--global-batch-size", "60"], "--global-batch-size 60 is not divisible by --micro-batch-size 8 × 2 processes "
                                     "= 16: choose a micro batch size that divides it"),
     (["--micro-batch-size", "0"], "--micro-batch-size must be at least 1"),
     (["--warmup-steps", "500"], "--warmup-steps 500 must be at least 0 and below --max-steps 200"),
     (["--max-steps", "20"], "below --max-steps 20: lower it too (e.g. --warmup-steps 2)"),
     (["--min-lr", "1"], "min_lr 1.0 must be between 0 and lr"),
     (["--deepspeed", "nope.json"], "DeepSpeed config not found: nope.json"),
     (["--resume", "/no/such/ckpt"], "--resume must be auto, never or a checkpoint directory"),
     (["--micro-batch-size", "64", "--grad-accum", "64"], "fewer than one optimizer step needs")],
)
def test_bad_configs_are_refused_with_one_line(sample_data, args, message):
    cfg = train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "r", *args])
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan.start(cfg, 2)


@pytest.mark.parametrize(("world", "accum"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_the_global_batch_decides_the_accumulation_for_any_world_size(sample_data, world, accum):
    parsed = train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "r", "--global-batch-size",
                           "64", "--micro-batch-size", "8", "--grad-accum", "3"])
    planned = plan.start(parsed, world)
    assert (planned.config.global_batch_size, planned.config.grad_accum) == (64, accum)
    assert (planned.ds_config["train_batch_size"], planned.ds_config["gradient_accumulation_steps"]) == (64, accum)
    assert (parsed.global_batch_size, parsed.grad_accum) == (64, 3)  # the parsed config is never changed


def test_missing_data_directory(tmp_path):
    cfg = train_config(["--config", "tiny", "--data", str(tmp_path), "--run-dir", "r"])
    with pytest.raises(UserError, match="not a prepared data directory"):
        plan.start(cfg, 1)


def test_accelerate_s_deepspeed_config_is_the_one_used_and_recorded(sample_data, monkeypatch, tmp_path):
    """Under `accelerate launch` DeepSpeed gets the JSON named in accelerate's YAML: the run records that one and
    says once that --deepspeed (here the preset's zero2) is not used; the same content under another name is no
    disagreement."""
    seq_len = str(Dataset.load(sample_data).seq_len)  # the data the preset is sized for: no warning about it
    cfg = train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "r", "--data-seq-len", seq_len])
    assert plan.read_inputs(cfg).warnings == ()  # no accelerate: --deepspeed is used
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ROOT / "ds_configs" / "zero3.json"))
    planned = plan.start(cfg, 2)
    (warning,) = planned.inputs.warnings
    assert planned.config.deepspeed == str(ROOT / "ds_configs" / "zero3.json") and planned.zero_stage == 3
    assert warning.startswith(f"warning: accelerate's config names the DeepSpeed config {planned.config.deepspeed} "
                              "(ZeRO-3), which this run uses and records; --deepspeed ")
    assert "zero2.json (ZeRO-2, from the flag or the preset) is not used" in warning
    copy = tmp_path / "mine.json"
    copy.write_bytes((ROOT / "ds_configs" / "zero3.json").read_bytes())
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(copy))
    inputs = plan.read_inputs(dataclasses.replace(cfg, deepspeed=str(ROOT / "ds_configs" / "zero3.json")))
    assert inputs.warnings == () and inputs.deepspeed == str(copy)
    copy.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=f"DeepSpeed config {copy} is unreadable"):
        plan.read_inputs(cfg)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    with pytest.raises(UserError, match="sets DeepSpeed options inline"):
        plan.read_inputs(cfg)


def test_an_explicit_deepspeed_batch_value_that_disagrees_is_refused(sample_data, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({**json.loads((ROOT / "ds_configs" / "zero2.json").read_text()),
                                "gradient_accumulation_steps": 3}), encoding="utf-8")
    cfg = train_config(["--config", "tiny", "--data", str(sample_data), "--run-dir", "r", "--deepspeed", str(mine)])
    with pytest.raises(UserError, match='sets gradient_accumulation_steps = 3, the run\'s config 2; use "auto"'):
        plan.start(cfg, 2)
