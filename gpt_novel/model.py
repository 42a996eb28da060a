"""Preset → `GPT2Config` → `GPT2LMHeadModel`, the optimizer's parameter groups, and FLOPs per token for MFU."""

from __future__ import annotations

import torch

from gpt_novel.config import TrainConfig
from gpt_novel.data.vocab import Vocab


def build_model(cfg: TrainConfig, vocab: Vocab):
    """A freshly initialised GPT-2 (the seed is set by the caller, the same on every rank) with SDPA attention,
    which PyTorch runs as flash attention on GPUs that support it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=vocab.mask,
        eos_token_id=vocab.cls,
        pad_token_id=vocab.pad,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only, never on biases and LayerNorm weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_params(model: torch.nn.Module) -> int:
    """Parameters, each tied tensor once (named_parameters de-duplicates the tied embedding and head)."""
    return sum(p.numel() for p in model.parameters())
