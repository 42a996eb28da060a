"""Checkpoints: save, find the newest complete one, load; atomic, with a completion marker and keep-last-N.

Layout: RUN_DIR/checkpoints/step-00000100/ holds DeepSpeed's sharded checkpoint (any ZeRO stage) under the tag
`ds/`, `trainer_state.json` (step, tokens, data position, scheduler, resolved config), `model_config.json` (the
model's `GPT2Config`), one `rng-rank00000.json` per
rank (python, numpy, torch and CUDA RNG: per-rank state never goes through DeepSpeed's client_state, which ZeRO-1/2
only keep for rank 0), a copy of the tokenizer, `config.yaml`, and last `COMPLETE.json`, which lists every file with
its size and sha256 (the ranks hash their share of the files in parallel). Everything is written under a `.tmp-`
name and renamed when all ranks are done; only then is the marker written, so a directory without a valid marker is
incomplete and skipped. Before a load every file is checked against its digest (again split among the ranks), and
a file the marker does not list is refused: a damaged or added file makes the checkpoint unusable, named in a
warning, and resume falls back to the previous one.

Trust: our own files are JSON and cannot run code. DeepSpeed's `ds/*.pt` are pickles that its loader unpickles; the
digests and the exact file list protect against damage and against a file dropped into a finished checkpoint, not
against someone who rewrites the marker too: a checkpoint is code unless it came from you (see the README).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gpt_novel.data.shards import sha256_file
from gpt_novel.errors import UserError, free_bytes

MARKER = "COMPLETE.json"
STATE = "trainer_state.json"
MODEL_CONFIG = "model_config.json"  # the GPT2Config trained (from the run's options, or the --init-from folder's)
DS_TAG = "ds"
PREFIX = "step-"


@dataclass(frozen=True)
class TrainerState:
    """Where a run stands: the trainer's progress while it trains, and `trainer_state.json` in each checkpoint (the
    marker repeats step, world size, global batch and val loss). The trainer, `resume` and `consolidate` read and
    write it only through this class; JSON, so reading it cannot run code."""

    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    elapsed: float = 0.0
    world_size: int = 1
    global_batch_size: int = 0
    scheduler: dict | None = None
    """the learning-rate scheduler's state_dict"""
    schedule: dict | None = None
    """the learning-rate plan (`schedule.plan`); None in a checkpoint saved before it was recorded"""
    zero_stage: int | None = None
    """None in a checkpoint saved before it was recorded (`resume.ResumePoint.zero_stage` tells stage 3 by files)"""
    val_loss: float | None = None
    data_fingerprint: str | None = None
    n_params: int | None = None

    REQUIRED = ("step", "tokens", "world_size", "global_batch_size", "scheduler")  # in every checkpoint ever saved

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        """The state a checkpoint saved; ValueError when it is not one (keys of a later version are ignored)."""
        raw = json.loads(text)
        missing = [key for key in cls.REQUIRED if not isinstance(raw, dict) or key not in raw]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def barrier() -> None:
    """Between saving steps; a rank that fails meanwhile ends every rank through `faults`, not by a timeout."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, run_dir: str | Path, state: TrainerState, cfg, tokenizer_dir: Path, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path. A failed write (a full disk, a quota)
    is an OSError naming the checkpoint, whatever the writer (DeepSpeed's C++ stream says only `iostream error`)."""
    root, step = checkpoints_dir(run_dir), state.step
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    rank, world = _rank_world()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=True)  # DeepSpeed's zero_to_fp32.py needs no -t
        _write_atomic(tmp / f"rng-rank{rank:05d}.json", json.dumps(rng_state()))
        barrier()
        if rank == 0:
            _write_atomic(tmp / STATE, state.to_json())
            _write_atomic(tmp / MODEL_CONFIG, engine.module.config.to_json_string())
            _write_config(tmp / "config.yaml", cfg)
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        barrier()  # every file is written before the ranks list and hash them
    except (OSError, RuntimeError) as e:
        failure = _write_failure(tmp, e)  # judged while the disk is still full
        if rank == 0:  # the owner of the folder; another rank removing it would free the disk under rank 0's verdict
            shutil.rmtree(tmp, ignore_errors=True)  # of no use, and it holds the space it took
        raise failure from e
    files = _gather(_hash_share(tmp, rank, world))
    if rank == 0:
        if final.exists():  # a checkpoint of the same step from an earlier, interrupted run
            shutil.rmtree(final)
        tmp.rename(final)
        marker = {"step": step, "world_size": state.world_size, "global_batch_size": state.global_batch_size,
                  "val_loss": state.val_loss, "files": dict(sorted(files.items()))}
        _write_atomic(final / MARKER, json.dumps(marker, indent=1))
        prune(root, keep_last)
    barrier()
    return final


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _write_failure(tmp: Path, e: Exception) -> OSError:
    """The error of a failed save, naming the file of the checkpoint it could not write. A copy that fails names
    its source first (shutil's sendfile path puts the destination in `filename2`): the destination is the one."""
    if isinstance(e, OSError) and (e.filename2 or e.filename):
        written = str(e.filename2 or e.filename)
        return OSError(e.errno, e.strerror, written if written.startswith(str(tmp)) else str(tmp))
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    code = errno.ENOSPC if free_bytes(tmp) < 1 << 20 else getattr(e, "errno", None) or errno.EIO
    text = os.strerror(errno.ENOSPC) if code == errno.ENOSPC else f"could not write the checkpoint ({reason})"
    return OSError(code, text, str(tmp))


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != MARKER)


def _hash_share(path: Path, rank: int, world: int) -> dict[str, dict]:
    """Size and sha256 of this rank's share of the files (every world-th one)."""
    return {name: {"bytes": (path / name).stat().st_size, "sha256": sha256_file(path / name)}
            for name in _files(path)[rank::world]}


def _gather(share: dict) -> dict:
    if not (dist.is_available() and dist.is_initialized()):
        return share
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, share)  # between our own processes, never from a file
    return {k: v for s in shares for k, v in s.items()}


BYTES_PER_PARAM = 16  # bf16 weights 2 + fp32 master weights 4 + Adam's two moments 8, plus headroom
SPACE_MARGIN = 1.1


def size(path: Path) -> int:
    """Bytes in a checkpoint directory."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_space(run_dir: Path, n_params: int) -> None:
    """Refuse to start when the run directory cannot hold one more checkpoint (the newest one's size, or an estimate
    from the parameter count), rather than fail at the first save hours later. Rank 0, holding the run's lock: the
    leftovers of an earlier crash go first, so that the space they hold is not counted against this run."""
    for old in leftovers(checkpoints_dir(run_dir)):
        print(f"removing {old}, left by a save or conversion that was interrupted ({size(old) / 1e6:,.1f} MB)",
              file=sys.stderr)
        shutil.rmtree(old, ignore_errors=True)
    newest = find_latest(run_dir, warn=lambda text: None)
    need = size(newest) if newest else n_params * BYTES_PER_PARAM
    free = shutil.disk_usage(run_dir).free
    if free < need * SPACE_MARGIN:
        raise UserError(f"--run-dir {run_dir} has {free / 1e6:,.1f} MB free, a checkpoint needs about "
                        f"{need * SPACE_MARGIN / 1e6:,.1f} MB; free some space or choose another --run-dir")


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


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest keep_last complete checkpoints and the best by validation loss; drop temporaries left by
    saves and universal conversions that were interrupted."""
    complete = [p for p in _candidates(root) if problem(p) is None]
    best = _best(complete)
    for old in [p for p in complete[keep_last:] if p != best] + leftovers(root):
        shutil.rmtree(old, ignore_errors=True)


def leftovers(root: Path) -> list[Path]:
    """The temporary folders of saves and universal conversions that were interrupted."""
    return sorted(root.glob(".tmp-*")) + sorted(root.glob(".universal-*")) if root.is_dir() else []


def val_loss(path: Path) -> float | None:
    """The validation loss evaluated at a checkpoint's step (in its marker), or None when none was."""
    value = (_marker(path)[0] or {}).get("val_loss")
    return value if isinstance(value, int | float) and not isinstance(value, bool) and value == value else None


def _best(paths: list[Path]) -> Path | None:
    """The checkpoint with the lowest validation loss (the newest of equals), or None when none has one."""
    scored = [p for p in paths if val_loss(p) is not None]
    return min(scored, key=lambda p: (val_loss(p), paths.index(p))) if scored else None


def find_best(run_dir: str | Path, warn=print) -> Path | None:
    """The complete checkpoint with the lowest validation loss; damaged ones are skipped with a warning."""
    usable = []
    for path in _candidates(checkpoints_dir(run_dir)):
        why = problem(path)
        if why is None:
            usable.append(path)
        elif val_loss(path) is not None:
            warn(f"warning: skipping checkpoint {path.name}: {why}")
    return _best(usable)


def _candidates(root: Path) -> list[Path]:
    """Checkpoint directories, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def _marker(path: Path) -> tuple[dict | None, str | None]:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "no completion marker (interrupted while saving)"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "damaged completion marker"


def problem(path: Path, rank: int = 0, world: int = 1, digests: bool = False) -> str | None:
    """Why a checkpoint directory cannot be used, or None. Sizes always; with `digests`, this rank's share of the
    sha256 checks too (see `verify` for the whole)."""
    marker, problem = _marker(path)
    if problem:
        return problem
    files = marker.get("files", {})
    if digests and any(not isinstance(v, dict) for v in files.values()):
        return "its completion marker records no digests (saved by an older gpt-novel)"
    unlisted = _unlisted(path, files)
    if unlisted:
        return f"{unlisted} is not listed in its {MARKER} (a file added after the save is never loaded)"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = want["bytes"] if isinstance(want, dict) else want
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} expected"
    for name in sorted(files)[rank::world] if digests else []:
        if sha256_file(path / name) != files[name]["sha256"]:
            return f"{name} does not match its sha256 (damaged)"
    return None


def _unlisted(path: Path, files: dict) -> str | None:
    """The first entry of a checkpoint that its marker does not list, or that is not a plain file or folder (a link
    could lead anywhere). DeepSpeed's loaders glob the folder, so an added file would be unpickled: a checkpoint is
    exactly its marker."""
    for entry in sorted(path.rglob("*")):
        name = str(entry.relative_to(path))
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            return name
        if entry.is_file() and name != MARKER and name not in files:
            return name
    return None


def verify(path: Path) -> str | None:
    """Collective: sizes and every digest, the hashing split among the ranks; every rank gets the same answer."""
    rank, world = _rank_world()
    problems = _gather({str(rank): problem(path, rank, world, digests=True)})
    return next((p for _, p in sorted(problems.items()) if p), None)


def find_latest(run_dir: str | Path, warn=print, check=problem) -> Path | None:
    """The newest usable checkpoint; unusable newer ones are skipped with a warning. `check` is `problem` (sizes,
    cheap) or `verify` (digests, collective: before a load)."""
    for path in _candidates(checkpoints_dir(run_dir)):
        problem = check(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path.name}: {problem}")
    return None


def check_usable(path: Path, check=verify) -> dict:
    """The marker of a checkpoint given by path, its files verified; ValueError with the reason otherwise."""
    problem = check(path)
    if problem:
        raise ValueError(f"checkpoint {path} cannot be used: {problem}")
    return _marker(path)[0]


def load(engine, path: Path, universal: Path | None = None) -> TrainerState:
    """Load weights, optimizer and DeepSpeed state into the engine (from `universal`, the checkpoint converted by
    `universal.convert`, when given); return the trainer state. Collective. Call it on a verified checkpoint only:
    DeepSpeed unpickles its files."""
    with _deepspeed_quiet(universal is not None):  # "MPU is not provided" on every rank: we have no tensor parallel
        load_path, _ = engine.load_checkpoint(str(universal or path), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {path}")
    return load_state(path)


@contextlib.contextmanager
def _deepspeed_quiet(quiet: bool):
    """DeepSpeed's logger at ERROR inside the block when `quiet`."""
    from deepspeed.utils import logger

    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_state(path: Path) -> TrainerState:
    """The trainer state (JSON: reading it cannot run code)."""
    try:
        return TrainerState.from_json((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"checkpoint {path}: {STATE} is unreadable ({e})") from None


def rng_state() -> dict:
    """Every RNG this process draws from, as JSON-able lists of integers (no pickle)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng(path: Path, rank: int) -> None:
    """Restore this rank's RNG states (call it after the DataLoader iterator exists, right before training)."""
    file = path / f"rng-rank{rank:05d}.json"
    if not file.exists():
        print(f"warning: {file} missing; RNG not restored on rank {rank}", file=sys.stderr)
        return
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))
    except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as e:  # not the JSON rng_state() writes
        raise UserError(f"checkpoint {path}: {file.name} is unreadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); resume from another checkpoint with "
                        "--resume PATH") from None
