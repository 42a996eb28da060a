"""The prepared data directory (`gpt-novel prepare --out DATA_DIR`) as one typed object.

prepare writes `manifest.json` with `Manifest.write`; the trainer, the evaluator and the benchmarks receive a
`Dataset` from `Dataset.load` and never open the manifest themselves. So the layout of the directory is known in one
place, and a missing, damaged, foreign or outdated directory is refused once, in one line, before any work starts.
The manifest is JSON read with `json.loads` and checked field by field: reading it never executes anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gpt_novel.data.shards import ShardInfo
from gpt_novel.errors import UserError

FORMAT = "gpt-novel-shards/2"  # /2: samples are packed within partitions, plus a tail shard set
MANIFEST = "manifest.json"
REPORT = "report.json"
TOKENIZER_DIR = "tokenizer"


class FormatError(ValueError):
    """A manifest of another format: it says nothing about this version's fields, so it is refused as outdated (or
    newer), not as damaged."""

    def __init__(self, found: str):
        super().__init__(f"format {found!r} is not {FORMAT!r}")
        self.found = found


@dataclass
class TokenizerInfo:
    dir: str  # relative to the data directory
    kind: str  # word | char
    vocab_size: int
    to_simplified: bool


@dataclass
class Split:
    chapters: int
    samples: int
    tokens: int  # label positions trained on: samples × seq_len
    dropped_tail_tokens: int
    shards: list[ShardInfo]


@dataclass
class Manifest:
    """What prepare made and how: every field the readers need, and the options and inputs that made it."""

    format: str
    created_by: str
    fingerprint: str
    seq_len: int
    sample_len: int
    dtype: str
    sample_field: str
    seed: int
    packing: str
    tokenizer: TokenizerInfo
    partitions: int
    args: dict
    inputs: list[dict]
    splits: dict[str, Split]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> Manifest:
        """Strict: a missing or unknown key, a value of the wrong type or a broken invariant is a ValueError naming
        the field (a FormatError for another format), so a reader never meets a KeyError deep in training."""
        if not isinstance(obj, dict):
            raise ValueError(f"the manifest must be a JSON object, not {_type(obj)}")
        found = obj.get("format")
        if not isinstance(found, str):
            raise ValueError("'format' is missing or not a string")
        if found != FORMAT:
            raise FormatError(found)
        manifest = _decode(cls, obj, "manifest")
        manifest._check()
        return manifest

    def write(self, directory: Path) -> None:
        """directory/manifest.json, atomically: a reader or a crash sees the old manifest or the new one, never half
        of one. What is written is read back first, so prepare can never publish a manifest that `load` refuses."""
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n"
        Manifest.from_json(json.loads(text))
        path = Path(directory) / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _check(self) -> None:
        """The invariants the readers rely on beyond types: each sample is seq_len inputs + 1 label, paths stay
        inside the data directory, a split's sample count is its shards' (the batch arithmetic is checked on it)."""
        if self.seq_len < 1 or self.sample_len != self.seq_len + 1:
            raise ValueError(f"seq_len {self.seq_len} and sample_len {self.sample_len} do not fit (sample_len is "
                             "seq_len + 1, seq_len at least 1)")
        if self.tokenizer.vocab_size < 1 or self.partitions < 1:
            raise ValueError("tokenizer.vocab_size and partitions must be at least 1")
        _inside(self.tokenizer.dir, "tokenizer.dir")
        for name, split in self.splits.items():
            for i, shard in enumerate(split.shards):
                _inside(shard.path, f"splits[{name!r}].shards[{i}].path")
                if shard.samples < 0:
                    raise ValueError(f"splits[{name!r}].shards[{i}].samples is negative")
            if split.samples != sum(s.samples for s in split.shards):
                raise ValueError(f"splits[{name!r}].samples {split.samples} is not the sum of its shards' samples")


@dataclass(frozen=True)
class Dataset:
    """A prepared data directory whose manifest and tokenizer were checked; what everything else receives."""

    root: Path
    manifest: Manifest

    @classmethod
    def load(cls, data_dir: str | Path) -> Dataset:
        """Every problem is a one-line UserError that says what to do (prepare first, or again)."""
        root = Path(data_dir)
        dataset = cls(root, _read_manifest(root))
        dataset._check_tokenizer()
        return dataset

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def sample_len(self) -> int:
        return self.manifest.sample_len

    @property
    def vocab_size(self) -> int:
        return self.manifest.tokenizer.vocab_size

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.tokenizer.dir

    def split(self, name: str) -> Split | None:
        return self.manifest.splits.get(name)

    def train_samples(self) -> int:
        train = self.split("train")
        return train.samples if train else 0

    def _check_tokenizer(self) -> None:
        """The shards' ids index this vocabulary: a tokenizer of another size (a directory pieced together from two
        runs) would train on the wrong words without any error."""
        vocab_file = self.tokenizer_dir / "vocab.txt"
        try:
            tokens = vocab_file.read_text(encoding="utf-8").count("\n")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise UserError(f"{self.root} has no {self.manifest.tokenizer.dir}/vocab.txt; prepare the data "
                            "again") from None
        except OSError as e:
            raise UserError(f"cannot read {vocab_file}: {e.strerror}; prepare the data again") from None
        except UnicodeDecodeError:
            raise UserError(f"{vocab_file} is not UTF-8 text; prepare the data again") from None
        if tokens != self.vocab_size:
            raise UserError(f"the tokenizer in {self.root} has {tokens} tokens but the shards were made with "
                            f"{self.vocab_size}; prepare the data again")


def _read_manifest(root: Path) -> Manifest:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(f"data directory {root} {what}; run `gpt-novel prepare` first")
    path = root / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{root} is not a prepared data directory (no {MANIFEST}); run `gpt-novel prepare` "
                        "first") from None
    except OSError as e:
        raise _invalid(path, f"cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise _invalid(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return Manifest.from_json(json.loads(text))
    except FormatError as e:
        raise UserError(f"{root} was prepared in format {e.found!r}, which this version of gpt-novel does not read "
                        f"(it reads {FORMAT!r}); prepare it again with this version") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise _invalid(path, str(e)) from None
    except RecursionError:
        raise _invalid(path, "nested too deeply") from None


def _invalid(path: Path, reason: str) -> UserError:
    return UserError(f"{path} is not a valid gpt-novel manifest: {reason}")


# --- strict decoding of JSON into the dataclasses above ------------------------------------------------------------

def _decode(cls: type, obj: object, where: str):
    """A dataclass from a JSON object with exactly its fields, each of its declared type."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, not {_type(obj)}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in obj]
    unknown = sorted(repr(k)[:40] for k in obj if k not in names)
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    if unknown:
        problems.append(f"has unknown key(s) {', '.join(unknown[:5])}")
    if problems:
        raise ValueError(f"{where} {'; '.join(problems)}")
    hints = typing.get_type_hints(cls)
    return cls(**{n: _value(hints[n], obj[n], f"{where}.{n}") for n in names})


def _value(hint, value: object, where: str):
    """One JSON value checked against a type hint (bool is not an int here, nor an int a float)."""
    if dataclasses.is_dataclass(hint):
        return _decode(hint, value, where)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if not _is(origin, value):
        raise ValueError(f"{where} must be {_NAMES[origin]}, not {_type(value)}")
    if origin is list and args:
        return [_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and args:
        return {k: _value(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    return value


def _is(kind: type, value: object) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def _type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _inside(path: str, where: str) -> None:
    """A path in the manifest names a file of the data directory: never an absolute path or one that climbs out."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise ValueError(f"{where} {path!r} is not a path inside the data directory")
