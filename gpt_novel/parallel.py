"""Process group, accelerate + DeepSpeed set-up, and the few collectives the trainer needs.

Works the same under `accelerate launch`, `torchrun` and as one plain process. On a host without GPUs the gloo
backend is requested explicitly: without it accelerate + DeepSpeed silently run every process as a world of one.
"""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist

from gpt_novel.config import TrainConfig
from gpt_novel.errors import UserError


def world_size_from_env() -> int:
    """The world size the launcher announced (1 for a plain process); known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def single_process_env() -> None:
    """A plain `python -m gpt_novel.train` is a world of one; DeepSpeed still wants the torchrun variables."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def make_accelerator(cfg: TrainConfig):
    """An Accelerator driving DeepSpeed with the run's DeepSpeed JSON, its "auto" values filled from cfg."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    launched_with_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    plugin = None if launched_with_ds else DeepSpeedPlugin(hf_ds_config=_ds_config(cfg))
    accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16",
                              gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=handlers)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.micro_batch_size)
    _fill(ds, "gradient_accumulation_steps", cfg.grad_accum)
    _fill(ds, "gradient_clipping", cfg.grad_clip)
    _fill(ds, "train_batch_size", cfg.global_batch_size)
    if accelerator.num_processes != world_size_from_env():
        raise RuntimeError(f"accelerate sees {accelerator.num_processes} processes, the launcher "
                           f"{world_size_from_env()}: the process group was not set up")
    return accelerator


def _ds_config(cfg: TrainConfig) -> dict:
    with open(cfg.deepspeed, encoding="utf-8") as f:
        return json.load(f)


def _fill(ds: dict, key: str, value) -> None:
    """Fill an "auto" value, and refuse an explicit one that disagrees with the run's config."""
    if ds.get(key, "auto") == "auto":
        ds[key] = value
    elif ds[key] != value:
        raise UserError(f"the DeepSpeed config sets {key} = {ds[key]}, the run's config {value}; "
                        "use \"auto\" in the DeepSpeed JSON")


def zero_stage(accelerator) -> int:
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown() -> None:
    """Every process ends here: without destroying the group, 10-25% of runs abort at interpreter exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
