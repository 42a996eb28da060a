"""Checkpoints: save, find the newest complete one, load; atomic, with a completion marker and keep-last-N.

Layout: RUN_DIR/checkpoints/step-00000100/ holds DeepSpeed's sharded checkpoint (any ZeRO stage) under the tag
`ds/`, `trainer_state.pt` (step, tokens, data position, scheduler, resolved config), one `rng-rank00000.pt` per rank
(python, numpy, torch and CUDA RNG: per-rank state never goes through DeepSpeed's client_state, which ZeRO-1/2 only
keep for rank 0), a copy of the tokenizer, `config.yaml`, and last `COMPLETE.json`, which lists every file with its
size. Everything is written under a `.tmp-` name and renamed when all ranks are done; only then is the marker
written, so a directory without a valid marker, or whose files do not match it, is incomplete and skipped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

MARKER = "COMPLETE.json"
STATE = "trainer_state.pt"
DS_TAG = "ds"
PREFIX = "step-"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, run_dir: str | Path, step: int, state: dict, cfg, tokenizer_dir: Path, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    root = checkpoints_dir(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    torch.save(rng_state(), tmp / f"rng-rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        torch.save(state, tmp / STATE)
        _write_config(tmp / "config.yaml", cfg)
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        if final.exists():  # a checkpoint of the same step from an earlier, interrupted run
            shutil.rmtree(final)
        tmp.rename(final)
        files = {str(p.relative_to(final)): p.stat().st_size for p in sorted(final.rglob("*")) if p.is_file()}
        marker = {"step": step, "world_size": state["world_size"], "global_batch_size": state["global_batch_size"],
                  "files": files}
        _write_atomic(final / MARKER, json.dumps(marker, indent=1))
        _prune(root, keep_last)
    _barrier()
    return final


def _write_config(path: Path, cfg) -> None:
    import yaml

    path.write_text(yaml.safe_dump(asdict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest keep_last complete checkpoints; drop temporaries left by saves that were interrupted."""
    complete = [p for p in _candidates(root) if _problem(p) is None]
    for old in complete[keep_last:] + sorted(root.glob(".tmp-*")):
        shutil.rmtree(old, ignore_errors=True)


def _candidates(root: Path) -> list[Path]:
    """Checkpoint directories, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def _problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be used, or None when it is complete."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no completion marker (interrupted while saving)"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "damaged completion marker"
    for name, size in marker.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} expected"
    return None


def find_latest(run_dir: str | Path, warn=print) -> Path | None:
    """The newest complete checkpoint; incomplete or damaged newer ones are skipped with a warning."""
    for path in _candidates(checkpoints_dir(run_dir)):
        problem = _problem(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path.name}: {problem}")
    return None


def check_usable(path: Path) -> dict:
    """The marker of a checkpoint given by path; raises ValueError with the reason when it cannot be used."""
    problem = _problem(path)
    if problem:
        raise ValueError(f"checkpoint {path} cannot be used: {problem}")
    return json.loads((path / MARKER).read_text(encoding="utf-8"))


def load(engine, path: Path) -> dict:
    """Load weights, optimizer and DeepSpeed state into the engine; return the trainer state. Collective."""
    load_path, _ = engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {path}")
    return torch.load(path / STATE, weights_only=False)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(path: Path, rank: int) -> None:
    """Restore this rank's RNG states (call it after the DataLoader iterator exists, right before training)."""
    file = path / f"rng-rank{rank:05d}.pt"
    if not file.exists():
        print(f"warning: {file} missing; RNG not restored on rank {rank}", file=sys.stderr)
        return
    state = torch.load(file, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
