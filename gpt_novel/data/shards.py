"""Token ids → fixed-length samples → WebDataset tar shards.

Packing rule: the chapters of a split (each `[MASK]` … `[CLS]`) are concatenated in order into one stream of ids,
which is cut into samples of `seq_len + 1` ids; consecutive samples overlap by one id, so sample i is
`stream[i*seq_len : i*seq_len + seq_len + 1]`, inputs are `sample[:-1]` and labels `sample[1:]`. Every id is a
label exactly once, there is no padding, and only the last `< seq_len` ids of the stream are left over (counted
in the manifest as `dropped_tail_tokens`).

Each sample is one tar member `<key>.tokens.npy` (uint16 when the vocabulary fits, else uint32), so
`webdataset.WebDataset(url).decode()` yields it as a numpy array. Shards hold a fixed number of samples, derived
from the target shard size; tar headers carry fixed times and owners, so the same ids give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PACKING_RULE = (
    "chapters of a split ([MASK] text [CLS]) are concatenated in order and cut into samples of seq_len+1 ids "
    "overlapping by one id (sample i = stream[i*seq_len : i*seq_len+seq_len+1]; inputs sample[:-1], labels "
    "sample[1:]); no padding, the last < seq_len ids are dropped"
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


def write_shards(samples: np.ndarray, out_dir: Path, split: str, per_shard: int, root: Path) -> list[ShardInfo]:
    """Write `split-000000.tar`, … under out_dir; keys are the global sample index so order is recoverable.

    A WebDataset shard is a plain tar whose members are `<key>.<field>`; the standard library writes it as
    webdataset's TarWriter would (that one imports torch, a second of start-up for nothing here).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    seq_len = samples.shape[1] - 1
    for shard_no, start in enumerate(range(0, len(samples), per_shard)):
        path = out_dir / f"{split}-{shard_no:06d}.tar"
        chunk = samples[start : start + per_shard]
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, sample in enumerate(chunk):
                _add_member(tar, f"{split}-{start + offset:09d}.{SAMPLE_FIELD}", _npy_bytes(sample))
        shards.append(ShardInfo(str(path.relative_to(root)), len(chunk), len(chunk) * seq_len, sha256_file(path)))
    return shards


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed metadata: byte-identical shards
    info.uname = info.gname = "gpt-novel"
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path: Path) -> str:
    """The digest that decides whether a file is intact (shards, checkpoint files, inputs), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
