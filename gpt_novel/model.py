"""Preset → `GPT2Config` → `GPT2LMHeadModel`, the optimizer's parameter groups, and held-out loss / bits per
character (shared by the trainer's evaluation and `gpt-novel eval`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt_novel.config import TrainConfig
from gpt_novel.data.vocab import Vocab


def build_model(cfg: TrainConfig, vocab: Vocab):
    """A freshly initialised GPT-2 (the seed is set by the caller, the same on every rank), or the --init-from
    folder's, with SDPA attention, which PyTorch runs as flash attention on GPUs that support it.

    From a folder, transformers builds the model on the meta device and assigns the safetensors' tensors, so each
    rank holds one copy of the weights until DeepSpeed takes them. At ZeRO-3 (the accelerator, made first, has
    registered its DeepSpeed config) transformers creates the model under `deepspeed.zero.Init` instead: each rank
    keeps only its partition of every parameter, filled one parameter at a time from the file, so the whole model
    is never held by any rank."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ours = dict(resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, bos_token_id=vocab.mask,
                eos_token_id=vocab.cls, pad_token_id=vocab.pad)
    if cfg.init_from:
        from transformers.utils import logging

        logging.disable_progress_bar()  # one "Loading weights" bar per rank says nothing the trainer's lines don't
        model = GPT2LMHeadModel.from_pretrained(cfg.init_from, use_safetensors=True, dtype=torch.float32,
                                                attn_implementation="sdpa", local_files_only=True, **ours)
    else:
        config = GPT2Config(vocab_size=len(vocab), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, tie_word_embeddings=True, **ours)
        config._attn_implementation = "sdpa"
        model = GPT2LMHeadModel(config)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only, never on biases and LayerNorm weights (1-D tensors). A
    parameter already partitioned by ZeRO-3 (see `build_model`) is judged by its whole shape, `ds_shape`."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def heldout_sums(model, batches, char_lengths: list[int], device) -> list[float]:
    """[nats, label tokens, characters] over (batch, weight) pairs, padding rows weighted 0; the trainer sums them
    over ranks, `gpt-novel eval` uses them as they are. Call under torch.no_grad() with the model in eval mode."""
    chars_of = torch.tensor(char_lengths, dtype=torch.float64)
    nats = tokens = chars = 0.0
    for batch, weight in batches:
        batch = batch.to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        targets = batch[:, 1:]
        per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        w = weight.double()[:, None]
        nats += float((per_token.view_as(targets).double().cpu() * w).sum())
        tokens += float(w.sum()) * targets.size(1)
        chars += float((chars_of[targets.cpu()] * w).sum())
    return [nats, tokens, chars]


def heldout_metrics(nats: float, tokens: float, chars: float) -> dict:
    loss = nats / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpc": nats / math.log(2) / max(chars, 1)}


def count_params(model: torch.nn.Module) -> int:
    """Parameters, each tied tensor once (named_parameters de-duplicates the tied embedding and head), whole even
    when ZeRO-3 holds only a partition of them here."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
