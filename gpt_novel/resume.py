"""Which checkpoint a run resumes from and whether it may, decided from the checkpoint's JSON files before any
weights load (`plan.build` runs these checks on the checkpoint actually loaded).

Why before anything loads: a run directory resumed with another dataset or model shape used to run for a minute and
die in a 36-line `size mismatch` traceback. Every rank reads the same small JSON files here, so every rank reaches
the same verdict and rank 0 says it in one line.

Elastic resume: a checkpoint saved with another world size or ZeRO stage is converted by DeepSpeed's own universal
checkpoint tool (`universal.py`) and loaded with its `load_universal` option; the global batch (and so the data
order, see `data.stream`) is kept, the gradient accumulation derived for the new world size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from gpt_novel import checkpoint
from gpt_novel.checkpoint import TrainerState
from gpt_novel.config import TrainConfig
from gpt_novel.data.dataset import Dataset
from gpt_novel.errors import UserError


@dataclass(frozen=True)
class ResumePoint:
    """A complete checkpoint and what its JSON files say (reading them cannot run code)."""

    path: Path
    state: TrainerState
    model_config: dict | None

    @classmethod
    def read(cls, path: Path) -> ResumePoint:
        try:
            config = json.loads((path / checkpoint.MODEL_CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:  # saved by an older gpt-novel
            config = None
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {path}: {checkpoint.MODEL_CONFIG} is unreadable ({e})") from None
        try:
            state = checkpoint.load_state(path)
        except ValueError as e:
            raise UserError(str(e)) from None
        return cls(path, state, config)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def world_size(self) -> int:
        return self.state.world_size

    @property
    def global_batch_size(self) -> int:
        return self.state.global_batch_size

    @property
    def zero_stage(self) -> int | None:
        """The ZeRO stage it was saved with; for one saved before the stage was recorded, 3 or (stages 1 and 2
        write the same files) None."""
        if self.state.zero_stage is not None:
            return self.state.zero_stage
        return 3 if (self.path / checkpoint.DS_TAG / "zero_pp_rank_0_mp_rank_00_model_states.pt").exists() else None

    def saved_max_steps(self) -> int:
        """The --max-steps the checkpoint's schedule was planned for."""
        if self.state.schedule:
            return int(self.state.schedule["max_steps"])
        with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            return int(yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))["max_steps"])
        return self.step

    def elastic(self, world_size: int, zero_stage: int) -> bool:
        """Whether resuming needs the universal conversion (another world size or ZeRO stage)."""
        saved = self.zero_stage
        return self.world_size != world_size or (saved != zero_stage if saved is not None else zero_stage == 3)


def candidate(cfg: TrainConfig, warn=lambda line: None, check=checkpoint.problem) -> ResumePoint | None:
    """The checkpoint --resume names (auto: the newest usable one), or None for a fresh start. `check` is
    `checkpoint.problem` (sizes: before any process group) or `checkpoint.verify` (digests, collective: before the
    load); `warn` tells which newer checkpoints were skipped."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        path = checkpoint.find_latest(cfg.run_dir, warn=warn, check=check)
        if path is None:
            return None
    else:
        path = Path(cfg.resume)
    try:
        checkpoint.check_usable(path, check=check)
    except ValueError as e:
        raise UserError(str(e)) from None
    return ResumePoint.read(path)


def kept_global_batch(point: ResumePoint, cfg: TrainConfig, world_size: int) -> int:
    """The run's global batch decides its data order: an unset --global-batch-size takes the checkpoint's (refused
    when this world size cannot split it), another one is refused."""
    saved = point.global_batch_size
    if cfg.global_batch_size and cfg.global_batch_size != saved:
        raise UserError(f"{point.path} was trained with global batch {saved}; this run asks for "
                        f"{cfg.global_batch_size}. The global batch decides which samples each step trains on: "
                        f"resume with --global-batch-size {saved} (or leave it unset), or start a new --run-dir")
    per_pass = cfg.micro_batch_size * world_size
    if per_pass > 0 and saved % per_pass:
        raise UserError(f"{point.path} was trained with global batch {saved}, which --micro-batch-size "
                        f"{cfg.micro_batch_size} × {world_size} process{'es' if world_size > 1 else ''} does not "
                        f"divide: choose a micro batch size that divides {saved}, or start a new --run-dir")
    return saved


def check_compatible(point: ResumePoint, cfg: TrainConfig, dataset: Dataset) -> None:
    """Refuse, naming every change, a resume with another vocabulary, dataset or model shape (`cfg` resolved)."""
    way_out = "start a new --run-dir"
    if _folder_digest(point.path / "tokenizer") != _folder_digest(dataset.tokenizer_dir):
        changes = [_vocabulary_change(dataset.vocab_size, (point.model_config or {}).get("vocab_size"))]
    else:
        changes = _shape_changes(point, cfg)
        if point.state.data_fingerprint not in (None, dataset.fingerprint):
            changes.insert(0, f"another dataset (fingerprint {dataset.fingerprint[:12]}…, the checkpoint's "
                              f"{point.state.data_fingerprint[:12]}…)")
            if len(changes) == 1:
                way_out += (f", or train its weights on the new data: tools/consolidate.py {cfg.run_dir} HF_DIR, "
                            "then --init-from HF_DIR with a new --run-dir")
    if changes:
        raise UserError(f"cannot resume {point.path} with {'; '.join(changes)}. Use the same data and shape, or "
                        f"{way_out}")


def _vocabulary_change(ours: int, theirs: object) -> str:
    """The data's tokenizer differs from the checkpoint's copy: in size, or in its tokens or ids alone."""
    if theirs == ours:
        return f"another vocabulary (as many tokens, {ours:,}, but other tokens or ids than the checkpoint's)"
    return f"another vocabulary ({ours:,} tokens, the checkpoint's {f'{theirs:,}' if isinstance(theirs, int) else '?'})"


def _shape_changes(point: ResumePoint, cfg: TrainConfig) -> list[str]:
    if point.model_config is None:
        return []
    asked = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.n_positions}
    return [f"--{name.replace('_', '-')} {value} (the checkpoint's {point.model_config.get(name)})"
            for name, value in asked.items() if point.model_config.get(name) != value]


def _folder_digest(folder: Path) -> str:
    """sha256 over a folder's file names and bytes: the vocabulary a dataset was encoded with."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def nothing_to_train(point: ResumePoint, cfg: TrainConfig) -> str | None:
    """The line that ends a run already at or past --max-steps, or None."""
    if point.step < cfg.max_steps:
        return None
    beyond = "" if point.step == cfg.max_steps else f", beyond --max-steps {cfg.max_steps}"
    return (f"{cfg.run_dir} has trained {point.step} steps{beyond}: nothing to train (raise --max-steps to train "
            f"longer; tools/consolidate.py {cfg.run_dir} HF_DIR to use it)")
