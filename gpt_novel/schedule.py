"""The learning-rate schedule: linear warmup, cosine decay to min_lr, and how it continues when a resumed run
changes --max-steps.

A run that resumes with another --max-steps keeps its warmup and re-plans the decay from where it stands: from the
learning rate of its current step, cosine down to min_lr at the new last step. So the learning rate never jumps and
never exceeds the peak; a run still warming up simply warms up into the longer (or shorter) plan. The plan is
recorded in the trainer state, so resuming again with the same --max-steps follows the same curve.

transformers' `get_cosine_with_min_lr_schedule_with_warmup` is the plan of a run that never changed --max-steps; it
cannot start a decay from a mid-run step and learning rate, which the re-planned one does (a LambdaLR of ours).
"""

from __future__ import annotations

import functools
import math

import torch

from gpt_novel.config import TrainConfig


def plan(cfg: TrainConfig, saved: dict | None, step: int, factor: float) -> dict:
    """The schedule plan of this run: `saved` (the checkpoint's, None for a fresh run) when --max-steps is unchanged,
    else a decay re-planned from `step`, where the learning rate is `factor` × the peak."""
    if saved is not None and saved["max_steps"] == cfg.max_steps:
        return saved
    if saved is None or (step <= cfg.warmup_steps and not saved.get("decay_from")):
        return {"max_steps": cfg.max_steps, "decay_from": None}
    return {"max_steps": cfg.max_steps, "decay_from": [step, factor]}


def make(optimizer: torch.optim.Optimizer, cfg: TrainConfig, plan: dict) -> torch.optim.lr_scheduler.LambdaLR:
    min_rate = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    if plan["decay_from"] is None:
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, cfg.warmup_steps, plan["max_steps"],
                                                            min_lr_rate=min_rate)
    start, factor = plan["decay_from"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        _decay_from, start=start, factor=factor, end=plan["max_steps"], min_rate=min_rate))


def _decay_from(step: int, *, start: int, factor: float, end: int, min_rate: float) -> float:
    """Cosine from `factor` at `start` to `min_rate` at `end` (the peak's multiples)."""
    progress = min(1.0, max(0.0, (step - start) / max(1, end - start)))
    return min_rate + (factor - min_rate) * 0.5 * (1.0 + math.cos(math.pi * progress))
