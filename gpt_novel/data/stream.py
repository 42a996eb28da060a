"""The per-rank sample stream: a pure function of (seed, epoch, global batch, position), resumable in O(1).

Every epoch the shards are put in a new order and the samples of each shard in a new order, both drawn from
`(seed, epoch)`; concatenated, they form the epoch's global sequence. Optimizer step k of the epoch consumes the
global batch `sequence[k·B : (k+1)·B]` (B: the global batch size), split among the ranks: rank r takes its
contiguous `B / world` slice of it, micro-batch after micro-batch. So which samples a step trains on depends on B
alone, never on the number of processes or the accumulation that make up B: a run resumed on another world size
(B kept) consumes exactly the samples the uninterrupted run would have, none twice, none skipped (MosaicML
streaming's elastic resume). A step reads a contiguous stretch of the sequence, so the ranks read one or two shards
at a time. The few samples left over at the end of the sequence (fewer than B) wait for the next epoch, whose
order differs. Epochs follow each other without a pause.

Micro-batch g of a rank (counted from the start of training, across epochs) is a function of g alone, and
optimizer step k starts at g = k · accumulation, so the position saved in a checkpoint is the step, and resuming
seeks straight to it: no batch is replayed. DataLoader worker w of W produces micro-batches g0 + w, g0 + w + W, …,
which the DataLoader hands out round robin: the trainer sees the same sequence for any number of workers. Workers
read samples by index (tar member offsets are read once per shard), so any number of shards works with any number
of ranks and workers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import signal
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt_novel.data.dataset import Dataset
from gpt_novel.data.segment import default_cache_dir
from gpt_novel.data.shards import SAMPLE_FIELD, ShardInfo, sha256_file
from gpt_novel.errors import UserError
from gpt_novel.lifetime import die_with_parent


class ShardSet:
    """The shards of one split, as listed in the manifest, with random access to any sample.

    A shard is checked against the manifest's sha256 before this process first reads it (a digest already checked
    for the same file, unchanged since by inode, size, mtime and ctime, is remembered in the user's cache, so a
    rerun does not read every shard twice), and every sample's ids against the vocabulary size: a missing,
    truncated, altered or foreign shard is a `UserError` naming it, never a silent or cryptic failure. After each
    read the open file's identity is compared with the verified one (one fstat): a shard written to during the
    run is hashed again, and its new bytes are never trained on."""

    def __init__(self, root: Path, shards: list[ShardInfo], sample_len: int, vocab_size: int):
        self.root = root
        self.paths = [root / s.path for s in shards]
        self.digests = [s.sha256 for s in shards]
        self.counts = np.array([s.samples for s in shards], dtype=np.int64)
        self.sample_len, self.vocab_size = sample_len, vocab_size
        self._offsets: dict[int, list[int]] = {}
        self._verified: dict[int, tuple[int, ...]] = {}  # shard → `_identity` of the file its digest was checked on
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @classmethod
    def load(cls, dataset: Dataset, split: str) -> ShardSet:
        """The shards of `split` as the dataset's (already checked) manifest lists them."""
        found = dataset.split(split)
        if found is None:
            raise UserError(f"{dataset.root} has no {split} split")
        return cls(dataset.root, found.shards, dataset.sample_len, dataset.vocab_size)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def read(self, shard: int, index: int) -> np.ndarray:
        """Sample `index` of shard `shard` (one pread of its .npy member)."""
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own files
            self._fds, self._pid = {}, os.getpid()
        start, size = self._member_offsets(shard)[index]
        try:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            raw = os.pread(fd, size, start)
            if _identity(os.fstat(fd)) != self._verified[shard]:  # after the read: these bytes are what was checked
                self._verify_again(shard, fd)
                raw = os.pread(fd, size, start)
            sample = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise self._damaged(shard, f"cannot read sample {index} ({e})") from None
        if sample.size and int(sample.max()) >= self.vocab_size:
            raise self._damaged(shard, f"sample {index} holds token id {int(sample.max())}, beyond the vocabulary "
                                f"of {self.vocab_size}")
        return sample

    def _member_offsets(self, shard: int) -> list[tuple[int, int]]:
        if shard not in self._offsets:
            self._verify(shard)
            try:
                with tarfile.open(self.paths[shard], "r:") as tar:
                    found = [(m.offset_data, m.size) for m in tar if m.name.endswith("." + SAMPLE_FIELD)]
            except (OSError, tarfile.TarError) as e:
                raise self._damaged(shard, f"not a readable tar ({e})") from None
            if len(found) != self.counts[shard]:
                raise self._damaged(shard, f"holds {len(found)} samples, the manifest says {self.counts[shard]}")
            self._offsets[shard] = found
        return self._offsets[shard]

    def _verify(self, shard: int) -> None:
        path, digest = self.paths[shard], self.digests[shard]
        try:
            st = path.stat()
            seen = _verified_marker(path, st, digest)
            if not seen.exists():
                self._check_digest(shard, sha256_file(path), "")
                with contextlib.suppress(OSError):
                    seen.parent.mkdir(parents=True, exist_ok=True)
                    seen.touch()
        except FileNotFoundError:
            raise self._damaged(shard, "is missing") from None
        except OSError as e:
            raise self._damaged(shard, f"cannot be read ({e.strerror})") from None
        self._verified[shard] = _identity(st)

    def _verify_again(self, shard: int, fd: int) -> None:
        """The shard changed on disk since it was verified (a write, a truncation, a replaced file): its bytes are
        hashed again, and trained on only if they are still the manifest's (a `touch` changes nothing)."""
        st = os.fstat(fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            actual = sha256_file(f)
        self._check_digest(shard, actual, " since it was verified at the start")
        self._verified[shard] = _identity(st)

    def _check_digest(self, shard: int, actual: str, when: str) -> None:
        digest = self.digests[shard]
        if actual != digest:
            raise self._damaged(shard, f"has changed{when}: sha256 {actual[:12]}…, the manifest says "
                                f"{digest[:12]}… (altered or truncated)")

    def _damaged(self, shard: int, what: str) -> UserError:
        name = self.paths[shard].relative_to(self.root)
        return UserError(f"shard {name} of {self.root} {what}: the data directory is damaged; prepare it again")


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes do: any write or truncation sets its ctime (which no user can set
    back, unlike the mtime), a replaced file has another inode."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _verified_marker(path: Path, st: os.stat_result, digest: str) -> Path:
    """An empty file in the user's cache whose name says "this exact file (`_identity`) was checked against this
    digest"; any change to the file changes its ctime, and so the name. Nothing in it is ever read."""
    key = f"{path.resolve()}|{'|'.join(map(str, _identity(st)))}|{digest}"
    name = hashlib.sha256(key.encode()).hexdigest()
    return default_cache_dir() / "verified-shards" / name[:2] / name


@dataclass(frozen=True)
class StreamSpec:
    """What the sample stream of one rank depends on (besides the shard sizes)."""

    seed: int
    rank: int
    world_size: int
    micro_batch_size: int
    grad_accum: int


class TrainStream(torch.utils.data.IterableDataset):
    """Micro-batches (int64 arrays [micro_batch_size, sample_len]) of one rank from micro-batch `start` on, forever.

    Workers hand out numpy arrays, not tensors: an array is pickled through the worker's pipe (~0.4 ms a batch,
    measured), a tensor goes through a new shared-memory segment and a passed file descriptor (~1.7 ms), which was
    most of the trainer's time waiting for data. `make_loader` turns them into tensors in the trainer's process.
    """

    def __init__(self, shards: ShardSet, spec: StreamSpec, start: int = 0):
        super().__init__()
        self.shards, self.spec, self.start = shards, spec, start
        self.rank_step_samples = spec.micro_batch_size * spec.grad_accum
        self.global_batch = self.rank_step_samples * spec.world_size
        steps = shards.total // self.global_batch
        if steps == 0:
            raise UserError(f"{shards.total} training samples are fewer than one optimizer step needs (global batch "
                            f"{self.global_batch})")
        self.steps_per_epoch = steps
        self.batches_per_epoch = steps * spec.grad_accum

    def sample_ids(self, g: int) -> list[tuple[int, int]]:
        """(shard, index in shard) of each sample of micro-batch g of this rank."""
        step, accumulated = divmod(g, self.spec.grad_accum)
        epoch, k = divmod(step, self.steps_per_epoch)
        order, starts = _epoch_order(tuple(self.shards.counts.tolist()), self.spec.seed, epoch)
        mb = self.spec.micro_batch_size
        first = k * self.global_batch + self.spec.rank * self.rank_step_samples + accumulated * mb
        out = []
        for p in range(first, first + mb):
            j = int(np.searchsorted(starts, p, side="right") - 1)
            shard = int(order[j])
            local = p - int(starts[j])
            out.append((shard, int(_sample_order(int(self.shards.counts[shard]), self.spec.seed, epoch, shard)[local])))
        return out

    def rows(self, g: int) -> np.ndarray:
        return np.stack([self.shards.read(shard, index) for shard, index in self.sample_ids(g)]).astype(np.int64)

    def batch(self, g: int) -> torch.Tensor:
        return torch.from_numpy(self.rows(g))

    def __iter__(self) -> Iterator[np.ndarray | _Failure]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        g = self.start + worker
        while True:
            try:
                rows = self.rows(g)
            except UserError as e:  # handed over as a value: a worker's exception reaches the trainer re-worded,
                yield _Failure(str(e))  # with the worker's traceback inside its message
                return
            yield rows
            g += workers


@functools.lru_cache(maxsize=4)
def _epoch_order(counts: tuple[int, ...], seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's shard order and where each shard starts in the epoch's global sequence."""
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(counts))
    sizes = np.asarray(counts, dtype=np.int64)[order]
    return order, np.concatenate([[0], np.cumsum(sizes)])


@functools.lru_cache(maxsize=64)
def _sample_order(count: int, seed: int, epoch: int, shard: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 1, shard]).permutation(count)


@dataclass(frozen=True)
class _Failure:
    """A data error met in a DataLoader worker, raised again as a one-line UserError in the trainer."""

    message: str


class _Tensors:
    """The DataLoader's arrays as LongTensors, converted in the trainer's process (a view, no copy; pinned: one copy
    into page-locked memory). The DataLoader's own pin_memory does not apply: its workers hand out arrays."""

    def __init__(self, pin: bool, loader: torch.utils.data.DataLoader):
        self.pin, self.loader = pin, loader

    def __iter__(self) -> Iterator[torch.Tensor]:
        for rows in self.loader:
            if isinstance(rows, _Failure):
                raise UserError(rows.message)
            yield torch.from_numpy(rows).pin_memory() if self.pin else torch.from_numpy(rows)


def make_loader(stream: TrainStream, num_workers: int, pin_memory: bool = False) -> _Tensors:
    """Micro-batch tensors from a DataLoader over the stream. The DataLoader has its own RNG, so creating it does not
    draw from the global torch RNG. `pin_memory` (for a CUDA device): each batch lands in page-locked memory, so its
    copy to the device runs asynchronously (`non_blocking=True`) instead of as a host sync."""
    return _Tensors(pin_memory, torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(stream.spec.seed),
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
    ))


def _as_is(rows: np.ndarray) -> np.ndarray:
    """Keep the array (the default collate would make a tensor inside the worker)."""
    return rows


def _worker_init(worker_id: int) -> None:
    """Slurm and `kill -- -PGID` signal every process of the job: the trainer handles SIGTERM/SIGUSR1 (finish the
    step, save, exit) and its data workers must live on until it shuts them down. Since they ignore SIGTERM, they
    ask the kernel to SIGKILL them when the trainer dies, however it dies (no orphaned workers)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent()



def val_batches(shards: ShardSet, rank: int, world_size: int, micro_batch_size: int,
                max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation samples of one rank in fixed order, as (batch, weight) with weight 0 on padding rows.

    Every rank gets the same number of batches (a forward pass under ZeRO-3 is collective), disjoint samples, and
    together at most `max_batches` × world size × micro batch samples, all of them when there are fewer.
    """
    used = min(shards.total, max_batches * world_size * micro_batch_size)
    batches = -(-used // (world_size * micro_batch_size))
    starts = np.concatenate([[0], np.cumsum(shards.counts)])
    for b in range(batches):
        rows, weights = [], []
        for i in range(micro_batch_size):
            p = (rank * batches + b) * micro_batch_size + i
            valid = p < used
            q = p if valid else 0
            j = int(np.searchsorted(starts, q, side="right") - 1)
            rows.append(shards.read(j, q - int(starts[j])))
            weights.append(1.0 if valid else 0.0)
        yield torch.from_numpy(np.stack(rows).astype(np.int64)), torch.tensor(weights)
