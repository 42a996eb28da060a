"""Typed configs: dataclasses filled from an optional YAML file, then CLI overrides, then validated.

Validation happens here, before any work (or any process group) starts, and a bad value gets one line naming
the option, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

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
    workers: int = 0  # 0: all cores
    to_simplified: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    force: bool = False

    # Options that change the bytes of the output; the rest (workers, cache, force) never do.
    OUTPUT_OPTIONS: typing.ClassVar = ("tokenizer", "vocab_size", "seq_len", "val_ratio", "seed", "shard_size",
                                       "to_simplified")

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
        if parse_size(self.shard_size, "--shard-size") < 1024:
            raise UserError(f"--shard-size {self.shard_size} is too small (at least 1KB)")
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

    def validate(self, world_size: int) -> TrainConfig:
        """Check everything that can be checked without starting a process group; raise UserError on the first
        problem."""
        if not self.data:
            raise UserError("--data DATA_DIR is required (a directory made by `gpt-novel prepare`)")
        if not self.run_dir:
            raise UserError("--run-dir RUN_DIR is required")
        manifest = self.manifest()
        seq_len = manifest["seq_len"]
        for name in ("n_layer", "n_head", "n_embd", "max_steps", "micro_batch_size", "grad_accum", "save_every",
                     "keep_last", "eval_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_positions == 0:
            self.n_positions = seq_len
        if self.n_positions < seq_len:
            raise UserError(f"n_positions {self.n_positions} is shorter than the data's seq_len {seq_len}")
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
        if not Path(self.deepspeed).is_file() and (REPO / self.deepspeed).is_file():
            self.deepspeed = str(REPO / self.deepspeed)  # ds_configs/… of this checkout, from any directory
        if not Path(self.deepspeed).is_file():
            raise UserError(f"DeepSpeed config not found: {self.deepspeed}")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise UserError(f"--resume must be auto, never or a checkpoint directory; {self.resume} does not exist")
        vocab_file = Path(self.data) / "tokenizer" / "vocab.txt"
        if not vocab_file.is_file():
            raise UserError(f"{self.data} has no tokenizer/vocab.txt; prepare the data again")
        tokens = vocab_file.read_text(encoding="utf-8").count("\n")
        if tokens != manifest["tokenizer"]["vocab_size"]:
            raise UserError(f"the tokenizer in {self.data} has {tokens} tokens but the shards were made with "
                            f"{manifest['tokenizer']['vocab_size']}; prepare the data again")
        train = manifest["splits"].get("train", {})
        need = world_size * self.micro_batch_size * self.grad_accum
        if train.get("samples", 0) < need:
            raise UserError(f"{self.data} has {train.get('samples', 0)} training samples, fewer than one optimizer "
                            f"step needs ({need} = world size × micro batch × accumulation)")
        return self

    def manifest(self) -> dict:
        path = Path(self.data) / "manifest.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.data} is not a prepared data directory (no manifest.json); run "
                            "`gpt-novel prepare` first") from None


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
