"""Token ids → fixed-length samples → WebDataset tar shards.

Packing rule: a stream of ids (chapters, each `[MASK]` … `[CLS]`, concatenated in order) is cut into samples of
`seq_len + 1` ids; consecutive samples overlap by one id, so sample i is `stream[i*seq_len : i*seq_len + seq_len
+ 1]`, inputs are `sample[:-1]` and labels `sample[1:]`. Every id is a label exactly once, there is no padding,
and only the last `< seq_len` ids of the stream are left over. `prepare` applies it per partition to the train
chapters, then to the partitions' leftovers concatenated (the tail shards) and to the val chapters (see
PACKING_RULE, which the manifest records). `Packer` applies it to a stream fed in pieces.

Each sample is one tar member `<key>.tokens.npy` (uint16 when the vocabulary fits, else uint32), so
`webdataset.WebDataset(url).decode()` yields it as a numpy array. Shards hold a fixed number of samples, derived
from the target shard size; tar headers carry fixed times and owners, so the same ids give byte-identical shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

PACKING_RULE = (
    "within each partition, its train chapters ([MASK] text [CLS]) are concatenated in input order and cut into "
    "samples of seq_len+1 ids overlapping by one id (sample i = stream[i*seq_len : i*seq_len+seq_len+1]; inputs "
    "sample[:-1], labels sample[1:]) into train-pNNNNN-*.tar; the ids of each partition that never became a label "
    "are concatenated in partition order and packed by the same rule into train-tail-*.tar; the val chapters of "
    "all partitions, in order, into val-*.tar; no padding, only the last < seq_len ids of the tail and val streams "
    "are dropped"
)
_TAR_BLOCK = 512
SAMPLE_FIELD = "tokens.npy"


@dataclass
class ShardInfo:
    path: str  # relative to the data directory
    samples: int
    tokens: int  # label positions trained on: samples × seq_len
    sha256: str

    def to_json(self) -> dict:
        return asdict(self)


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def pack(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Samples of seq_len + 1 ids overlapping by one, and the number of ids left over at the end."""
    n = max(0, (len(stream) - 1) // seq_len)
    if n == 0:
        return np.empty((0, seq_len + 1), dtype=stream.dtype), len(stream)
    index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return stream[index], len(stream) - (n * seq_len + 1)


def _npy_bytes(sample: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(sample), allow_pickle=False)
    return buf.getvalue()


def samples_per_shard(shard_bytes: int, seq_len: int, dtype: np.dtype) -> int:
    """How many samples fit a target shard size (tar header + padded .npy member per sample)."""
    payload = len(_npy_bytes(np.zeros(seq_len + 1, dtype=dtype)))
    member = _TAR_BLOCK + -(-payload // _TAR_BLOCK) * _TAR_BLOCK
    return max(1, shard_bytes // member)


class Packer:
    """The packing rule over a stream fed in pieces (chapter by chapter): memory is one sample, not the stream.

    `feed` returns the samples completed so far; `unused` is what never became a label: the ids after the last
    sample's last label, or the whole stream when not one sample was filled (its first id is never a label)."""

    def __init__(self, seq_len: int, dtype: np.dtype):
        self.seq_len, self.samples = seq_len, 0
        self._buf = np.empty(0, dtype=dtype)

    def feed(self, ids: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, ids.astype(self._buf.dtype, copy=False)])
        out, rest = pack(self._buf, self.seq_len)
        if len(out):
            self._buf = self._buf[len(out) * self.seq_len :]  # the last label is the next sample's first input
            self.samples += len(out)
        return out

    def unused(self) -> np.ndarray:
        return self._buf[1:] if self.samples else self._buf


class ShardWriter:
    """Samples → `<prefix>-000000.tar`, … in `out_dir`, a fixed number per shard, written as they come.

    A WebDataset shard is a plain tar whose members are `<key>.<field>`; the standard library writes it as
    webdataset's TarWriter would (that one imports torch, a second of start-up for nothing here). Keys are
    `<prefix>-<index in this writer>`, so they are unique across a split whose writers have distinct prefixes;
    `split` is the directory the shards have in the data directory (the `path` of each ShardInfo).
    """

    def __init__(self, out_dir: Path, split: str, prefix: str, per_shard: int):
        self.out_dir, self.split, self.prefix, self.per_shard = out_dir, split, prefix, per_shard
        self.written: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._count = self._in_shard = self._seq_len = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._close_shard()

    def add(self, samples: np.ndarray) -> None:
        for sample in samples:
            if self._tar is None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self.prefix}-{len(self.written):06d}.tar"
                self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)
            _add_member(self._tar, f"{self.prefix}-{self._count:09d}.{SAMPLE_FIELD}", _npy_bytes(sample))
            self._count, self._in_shard, self._seq_len = self._count + 1, self._in_shard + 1, len(sample) - 1
            if self._in_shard == self.per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        path = Path(self._tar.name)
        self.written.append(ShardInfo(f"{self.split}/{path.name}", self._in_shard, self._in_shard * self._seq_len,
                                      sha256_file(path)))
        self._tar, self._in_shard = None, 0


def write_shards(samples: np.ndarray, out_dir: Path, split: str, per_shard: int, root: Path) -> list[ShardInfo]:
    """Write `split-000000.tar`, … under out_dir (= root/split); keys are the sample index, so order is recoverable."""
    with ShardWriter(out_dir, str(out_dir.relative_to(root)), split, per_shard) as writer:
        writer.add(samples)
    return writer.written


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed metadata: byte-identical shards
    info.uname = info.gname = "gpt-novel"
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path: Path | BinaryIO) -> str:
    """The digest that decides whether a file is intact (shards, checkpoint files, inputs), read in 1 MiB blocks;
    `path` may be a file already open (the very file a reader holds, even if its name now leads elsewhere)."""
    h = hashlib.sha256()
    with open(path, "rb") if isinstance(path, str | Path) else contextlib.nullcontext(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
