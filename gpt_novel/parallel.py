"""Process group, accelerate + DeepSpeed set-up, and the few collectives the trainer needs.

Works the same under `accelerate launch`, `torchrun` and as one plain process. On a host without GPUs the gloo
backend is requested explicitly: without it accelerate + DeepSpeed silently run every process as a world of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
from pathlib import Path

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


def name_deepspeed_accelerator() -> None:
    """DeepSpeed guesses its accelerator when imported and, finding no GPU, warns "Setting accelerator to CPU" in every
    process (the launcher's included). Naming it with DeepSpeed's own switch, before anything imports it, keeps
    start-up to the lines rank 0 prints (its first line says cpu or cuda)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


SHM_OP = "deepspeed_shm_comm"


def _shm_op_built() -> bool:
    """Whether DeepSpeed's CPU communication op is compiled for this machine (torch's JIT extension cache; the
    private helper is the one torch itself uses to place it, so the answer follows TORCH_EXTENSIONS_DIR)."""
    from torch.utils.cpp_extension import _get_build_directory

    return (Path(_get_build_directory(SHM_OP, verbose=False)) / f"{SHM_OP}.so").is_file()


@contextlib.contextmanager
def deepspeed_start(is_main: bool):
    """On a CPU host DeepSpeed compiles its communication op the first time it starts on a machine (1–2 minutes of
    silence), then prints "… built successfully" on every rank at every start. Say what is happening once, from rank
    0, before it happens; drop DeepSpeed's line and pass anything else it printed through."""
    if is_main and not torch.cuda.is_available() and not _shm_op_built():
        print(f"first start on this machine: DeepSpeed is compiling its CPU communication op ({SHM_OP}); this takes "
              "1–2 minutes and happens once (cached under ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR)",
              flush=True)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True) if "built successfully" not in line]
        sys.stdout.write("".join(kept))
        sys.stdout.flush()


def make_accelerator(cfg: TrainConfig):
    """An Accelerator driving DeepSpeed with the run's DeepSpeed JSON, its "auto" values filled from cfg."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    plugin = None if _accelerate_runs_deepspeed() else DeepSpeedPlugin(hf_ds_config=read_ds_config(cfg.deepspeed))
    with deepspeed_start(rank_from_env() == 0):
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


def load_universal(accelerator) -> None:
    """Make DeepSpeed load a universal checkpoint (another world size or ZeRO stage): set before `prepare`."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}


def _accelerate_runs_deepspeed() -> bool:
    """Whether `accelerate launch` started this process with DeepSpeed (then it hands DeepSpeed its own config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def read_ds_config(path: str) -> dict:
    """A DeepSpeed JSON config; one line when it is not one."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"DeepSpeed config {path} is unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"DeepSpeed config {path} must hold a JSON object")
    return config


def resolve_deepspeed(cfg: TrainConfig) -> str | None:
    """Make `cfg.deepspeed` the DeepSpeed config this run will really use, so that the checkpoints' config.yaml
    records it: under `accelerate launch` with DeepSpeed, the JSON its YAML names (accelerate hands that one to
    DeepSpeed whatever --deepspeed says). Returns a warning when --deepspeed (the flag or the preset) named another
    config; call it before any process group starts, on every rank (rank 0 prints the warning)."""
    asked = read_ds_config(cfg.deepspeed)
    if not _accelerate_runs_deepspeed():
        return None
    used = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not used:
        raise UserError("the accelerate config sets DeepSpeed options inline: name a JSON in it with "
                        "deepspeed_config_file (as launch/zero*.yaml do), so that the run records what it uses")
    given, cfg.deepspeed = cfg.deepspeed, str(Path(used).resolve())
    actual = read_ds_config(cfg.deepspeed)
    if actual == asked:
        return None
    return (f"warning: accelerate's config names the DeepSpeed config {used} (ZeRO-{stage_of(actual)}), which this run "
            f"uses and records; --deepspeed {given} (ZeRO-{stage_of(asked)}, from the flag or the preset) is not used. "
            f"Pass --deepspeed {used}, or launch with the accelerate config of the stage you want")


def _fill(ds: dict, key: str, value) -> None:
    """Fill an "auto" value, and refuse an explicit one that disagrees with the run's config."""
    if ds.get(key, "auto") == "auto":
        ds[key] = value
    elif ds[key] != value:
        raise UserError(f"the DeepSpeed config sets {key} = {ds[key]}, the run's config {value}; "
                        "use \"auto\" in the DeepSpeed JSON")


def zero_stage(accelerator) -> int:
    return stage_of(accelerator.state.deepspeed_plugin.deepspeed_config)


def stage_of(ds_config: dict) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 without zero_optimization)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def all_reduce_sum(values: list, device: torch.device) -> list[float]:
    """Sum values across ranks in one all-reduce: host numbers and device tensors alike (a loss not yet read), so
    a step needs one collective and one host sync for all of them."""
    t = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shutdown() -> None:
    """Every process ends here: without destroying the group, 10-25% of runs abort at interpreter exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
