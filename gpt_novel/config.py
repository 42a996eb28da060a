"""Typed configs: dataclasses filled from an optional YAML file, then CLI overrides, then validated.

Validation happens here, before any work (or any process group) starts, and a bad value gets one line naming
the option, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from gpt_novel.data.dataset import Dataset
from gpt_novel.errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(text: str | int, option: str) -> int:
    """'256MB', '64KiB', '1e6'-free plain integers → bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower().removesuffix("b") if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"{option} {text!r} is not a size (examples: 256MB, 64KiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


@dataclass
class PrepareConfig:
    """Options of `gpt-novel prepare`; see the README for what each does."""

    inputs: list[str] = field(default_factory=list)
    out: str = ""
    tokenizer: str = "word"
    vocab_size: int = 50000
    seq_len: int = 1024
    val_ratio: float = 0.01
    seed: int = 1234
    shard_size: str = "256MB"
    partition_size: str = "32MB"
    workers: int = 0  # 0: all cores
    to_simplified: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    force: bool = False
    work_dir: str | None = None  # None: .NAME.work next to --out
    keep_work: bool = False
    step: str = "all"
    task: int = 0
    tasks: int = 1

    # Options that change the bytes of the output; the rest (workers, cache, force, work dir, steps) never do.
    OUTPUT_OPTIONS: typing.ClassVar = ("tokenizer", "vocab_size", "seq_len", "val_ratio", "seed", "shard_size",
                                       "partition_size", "to_simplified")
    STEPS: typing.ClassVar = ("all", "plan", "read", "merge", "segment", "vocab", "encode", "finish")

    def validate(self) -> PrepareConfig:
        if not self.inputs:
            raise UserError("give at least one input file or directory")
        if not self.out:
            raise UserError("--out DATA_DIR is required")
        if self.tokenizer not in ("word", "char"):
            raise UserError(f"--tokenizer must be 'word' or 'char', not {self.tokenizer!r}")
        _in_range("--vocab-size", self.vocab_size, 16, 4_000_000)
        _in_range("--seq-len", self.seq_len, 8, 65536)
        if not 0 <= self.val_ratio <= 0.5:
            raise UserError(f"--val-ratio {self.val_ratio} is out of range (0 to 0.5)")
        if self.workers == 0:
            self.workers = default_workers()
        _in_range("--workers", self.workers, 1, 1024)
        if parse_size(self.shard_size, "--shard-size") < 1000:
            raise UserError(f"--shard-size {self.shard_size} is too small (at least 1KB)")
        if parse_size(self.partition_size, "--partition-size") < 1000:
            raise UserError(f"--partition-size {self.partition_size} is too small (at least 1KB)")
        if self.step not in self.STEPS:
            raise UserError(f"--step must be one of {', '.join(self.STEPS)}, not {self.step!r}")
        _in_range("--tasks", self.tasks, 1, 1_000_000)
        _in_range("--task", self.task, 0, self.tasks - 1)
        return self

    def output_options(self) -> dict:
        return {k: getattr(self, k) for k in self.OUTPUT_OPTIONS}


def _in_range(option: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{option} {value} is out of range ({lo} to {hi})")


def load_config(cls: type, yaml_path: str | None, overrides: dict):
    """Build a config dataclass: defaults ← YAML file ← CLI overrides (None means 'not given')."""
    values: dict = {}
    if yaml_path:
        values.update(_read_yaml(Path(yaml_path)))
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key(s) in {yaml_path or 'options'}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        values[key] = _coerce(key, value, hints[key])
    return cls(**values)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _coerce(key: str, value, hint):
    """YAML and argparse give the right types already; reject what does not fit instead of failing later."""
    base = typing.get_origin(hint) or hint
    if base in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return value if value is None else _coerce(key, value, options[0])
    if base is list:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key.replace('_', '-')} must be true or false, not {value!r}")
    if base in (int, float):
        try:
            return base(value) if not isinstance(value, bool) else _bad(key, value, base)
        except (TypeError, ValueError):
            _bad(key, value, base)
    if base is str:
        return str(value)
    return value


def _bad(key: str, value, base):
    raise UserError(f"{key.replace('_', '-')} must be {'an integer' if base is int else 'a number'}, not {value!r}")


@dataclass
class TrainConfig:
    """Everything a training run needs; a preset YAML gives the defaults, flags override any field."""

    # where
    data: str = ""
    run_dir: str = ""
    # model (GPT-2)
    preset: str = "custom"
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 0  # 0: the data's seq_len
    dropout: float = 0.1
    activation_checkpointing: bool = False
    compile: bool = False
    # optimisation
    max_steps: int = 200
    micro_batch_size: int = 8
    grad_accum: int = 1
    global_batch_size: int = 0  # 0: whatever micro_batch_size × grad_accum × world size gives; else checked
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    deepspeed: str = "ds_configs/zero2.json"
    seed: int = 1234
    num_workers: int = 1
    # checkpoints
    save_every: int = 100
    keep_last: int = 3
    resume: str = "auto"  # auto | never | PATH of a checkpoint
    max_bad_steps: int = 5
    # observability
    eval_every: int = 100
    eval_batches: int = 20
    sample_every: int = 500
    sample_tokens: int = 48
    peak_flops: float = 0.0  # per device, for MFU; 0: from the GPU's name where known
    tensorboard: bool = True
    progress: bool = True
    log_all_ranks: bool = False

    def validate(self, world_size: int, dataset: Dataset) -> TrainConfig:
        """Check the options against each other and against the data, without touching the file system (that is
        `check_files`, run first); raise UserError on the first problem. Fills n_positions and global_batch_size."""
        if not self.run_dir:
            raise UserError("--run-dir RUN_DIR is required")
        for name in ("n_layer", "n_head", "n_embd", "max_steps", "micro_batch_size", "grad_accum", "save_every",
                     "keep_last", "eval_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_positions == 0:
            self.n_positions = dataset.seq_len
        if self.n_positions < dataset.seq_len:
            raise UserError(f"n_positions {self.n_positions} is shorter than the data's seq_len {dataset.seq_len}")
        global_batch = self.micro_batch_size * self.grad_accum * world_size
        if self.global_batch_size and self.global_batch_size != global_batch:
            raise UserError(
                f"global_batch_size {self.global_batch_size} != micro_batch_size {self.micro_batch_size} × grad_accum "
                f"{self.grad_accum} × world size {world_size} = {global_batch}"
            )
        self.global_batch_size = global_batch
        if not 0 <= self.min_lr <= self.lr:
            raise UserError(f"min_lr {self.min_lr} must be between 0 and lr {self.lr}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout {self.dropout} must be in [0, 1)")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise UserError(f"warmup_steps {self.warmup_steps} must be in [0, max_steps {self.max_steps})")
        if dataset.train_samples() < global_batch:
            raise UserError(f"{dataset.root} has {dataset.train_samples()} training samples, fewer than one "
                            f"optimizer step needs ({global_batch} = world size × micro batch × accumulation)")
        return self


def check_files(cfg: TrainConfig) -> Dataset:
    """The file-system half of the config check, run by every rank before any process group starts (so a bad path
    stops the job in one line, not in a collective): the data directory (loaded, with its tokenizer), the DeepSpeed
    config (resolved against this checkout when relative and absent from the working directory) and a --resume
    path. Returns the dataset, which `TrainConfig.validate` and the trainer receive."""
    if not cfg.data:
        raise UserError("--data DATA_DIR is required (a directory made by `gpt-novel prepare`)")
    dataset = Dataset.load(cfg.data)
    if not Path(cfg.deepspeed).is_file() and (REPO / cfg.deepspeed).is_file():
        cfg.deepspeed = str(REPO / cfg.deepspeed)  # ds_configs/… of this checkout, from any directory
    if not Path(cfg.deepspeed).is_file():
        raise UserError(f"DeepSpeed config not found: {cfg.deepspeed}")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_dir():
        raise UserError(f"--resume must be auto, never or a checkpoint directory; {cfg.resume} does not exist")
    return dataset


def train_config(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse `train` arguments: --config PRESET.yaml, then any field as --field-name VALUE."""
    parser = argparse.ArgumentParser(prog="gpt-novel train", description="Train GPT-2 on prepared shards.")
    parser.add_argument("--config", metavar="YAML", help="a preset (launch/presets/tiny.yaml …) or a saved config")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            parser.add_argument(flag, type=_parse_bool, metavar="true|false", default=None)
        else:
            parser.add_argument(flag, type=str, default=None, metavar=f.name.upper())
    args = parser.parse_args(argv)
    config = args.config
    if config and not Path(config).exists() and (PRESETS / f"{config}.yaml").exists():
        config = str(PRESETS / f"{config}.yaml")
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return load_config(TrainConfig, config, overrides), args


REPO = Path(__file__).resolve().parent.parent
PRESETS = REPO / "launch" / "presets"


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
