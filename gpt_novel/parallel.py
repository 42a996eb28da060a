"""Process group, accelerate + DeepSpeed set-up, and the few collectives the trainer needs.

Works the same under `accelerate launch`, `torchrun` and as one plain process. On a host without GPUs the gloo
backend is requested explicitly: without it accelerate + DeepSpeed silently run every process as a world of one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from gpt_novel.plan import Plan


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


def shm_op_built() -> bool:
    """Whether DeepSpeed's CPU communication op is compiled for this machine (torch's JIT extension cache; the
    private helper is the one torch itself uses to place it, so the answer follows TORCH_EXTENSIONS_DIR)."""
    from torch.utils.cpp_extension import _get_build_directory

    return (Path(_get_build_directory(SHM_OP, verbose=False)) / f"{SHM_OP}.so").is_file()


def installed_ninja() -> Path | None:
    """The ninja executable the `ninja` package (a DeepSpeed dependency) installed, wherever its environment is: a
    venv's bin directory, or the one a path entry borrows the packages of."""
    with contextlib.suppress(metadata.PackageNotFoundError):
        for file in metadata.distribution("ninja").files or []:
            if file.name == "ninja" and "bin" in file.parts and Path(file.locate()).is_file():
                return Path(file.locate()).resolve()
    return None


def ninja_of_this_environment() -> None:
    """torch builds DeepSpeed's CPU op with the first `ninja` on PATH, and checks it at every start. The installed
    ninja and the system's differ in version and each discards the other's build log, so a trainer started in turn
    with the venv activated and by its python's path rebuilt the op every time, silently (4 s became 20 s on 2
    cores). Put the installed one first on PATH, as activating the venv does."""
    ninja = installed_ninja()
    found = shutil.which("ninja")
    if ninja is not None and (found is None or Path(found).resolve() != ninja):
        os.environ["PATH"] = f"{ninja.parent}{os.pathsep}{os.environ.get('PATH', '')}"


@contextlib.contextmanager
def deepspeed_start(is_main: bool):
    """On a CPU host DeepSpeed compiles its communication op the first time it starts on a machine (1–2 minutes of
    silence), then prints "… built successfully" on every rank at every start. Say what is happening once, from rank
    0, before it happens; drop DeepSpeed's line and pass anything else it printed through."""
    ninja_of_this_environment()
    if is_main and not torch.cuda.is_available() and not shm_op_built():
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


@contextlib.contextmanager
def no_compile_at_import():
    """DeepSpeed's ZeRO optimizer check imports its Muon optimizer, whose module calls torch.compile at import: a
    second of every rank's start-up (measured: 8.2 s → 7.2 s for a 2-rank tiny run) spent setting up inductor for an
    optimizer never used. torch.compile reads TORCHDYNAMO_DISABLE when called and then returns the function as it
    is; `--compile` compiles the model after this."""
    before = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = before


def init_process_group() -> None:
    """The process group, before the trainer's first collective (the checkpoint's digests, split among the ranks);
    accelerate and DeepSpeed then use it. gloo on a host without GPUs (NCCL needs one), each rank on its own GPU."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def wait_for_all() -> None:
    """A barrier waited for in Python, a few times a second, not inside gloo or NCCL: a stop request that a signal's
    handler raises (while rank 0 converts a checkpoint, say) ends the wait at once."""
    if not dist.is_initialized():
        return
    work = dist.barrier(async_op=True)
    while not work.is_completed():
        time.sleep(0.05)
    work.wait()


def make_accelerator(plan: Plan):
    """An Accelerator driving DeepSpeed with the plan's DeepSpeed config, over the process group already made."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    plugin = DeepSpeedPlugin(hf_ds_config=copy.deepcopy(plan.ds_config))
    with deepspeed_start(rank_from_env() == 0):
        accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16",
                                  gradient_accumulation_steps=plan.config.grad_accum, kwargs_handlers=handlers)
    if accelerator.num_processes != world_size_from_env():
        raise RuntimeError(f"accelerate sees {accelerator.num_processes} processes, the launcher "
                           f"{world_size_from_env()}: the process group was not set up")
    return accelerator


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
