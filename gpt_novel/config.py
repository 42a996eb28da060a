"""Typed configs: dataclasses filled from an optional YAML file, then CLI overrides, then validated.

Validation happens here, before any work (or any process group) starts, and a bad value gets one line naming
the option, not a traceback.
"""

from __future__ import annotations

import dataclasses
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
