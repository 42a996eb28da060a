"""The per-rank sample stream: disjoint ranks, every sample once per epoch, worker-independent order, O(1) resume."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import pytest
import torch

from gpt_novel.data import shards
from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream, make_loader, val_batches
from gpt_novel.errors import UserError


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> ShardSet:
    """203 samples whose first id is their global index, in shards of 16 (and a short last one)."""
    root = tmp_path_factory.mktemp("stream")
    samples = np.zeros((203, 9), dtype=np.uint16)
    samples[:, 0] = np.arange(203)
    infos = shards.write_shards(samples, root / "train", "train", 16, root)
    return ShardSet(root, infos, 9, 1 << 16)


def _ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].tolist()


def _epoch(shard_set: ShardSet, rank: int, world: int, epoch: int = 0, mb: int = 4, accum: int = 2) -> list[int]:
    stream = TrainStream(shard_set, StreamSpec(7, rank, world, mb, accum))
    first = epoch * stream.batches_per_epoch
    return [i for g in range(first, first + stream.batches_per_epoch) for i in _ids(stream.batch(g))]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_and_an_epoch_sees_every_sample_once(shard_set, world):
    seen = [_epoch(shard_set, r, world) for r in range(world)]
    flat = [i for ids in seen for i in ids]
    assert len(flat) == len(set(flat))  # no sample twice, within or across ranks
    assert len({len(ids) for ids in seen}) == 1  # the same number of steps on every rank
    step = world * 4 * 2
    assert len(flat) == 203 // step * step  # all but fewer than one optimizer step's worth
    assert set(flat) <= set(range(203))


def test_single_rank_epoch_covers_everything_when_it_divides(tmp_path):
    samples = np.zeros((64, 5), dtype=np.uint16)
    samples[:, 0] = np.arange(64)
    root = tmp_path
    infos = shards.write_shards(samples, root / "train", "train", 10, root)
    ids = _epoch(ShardSet(root, infos, 5, 1 << 16), 0, 2, mb=4, accum=2)
    ids += _epoch(ShardSet(root, infos, 5, 1 << 16), 1, 2, mb=4, accum=2)
    assert sorted(ids) == list(range(64))


def test_each_epoch_has_a_new_order_from_the_seed(shard_set):
    e0, e1 = _epoch(shard_set, 0, 1, 0), _epoch(shard_set, 0, 1, 1)
    assert e0 != e1 and sorted(e0) != e0
    assert _epoch(shard_set, 0, 1, 1) == e1  # a pure function of (seed, epoch, rank, world, position)


def test_a_step_reads_a_contiguous_stretch_of_few_shards(shard_set):
    streams = [TrainStream(shard_set, StreamSpec(7, r, 3, 4, 2)) for r in range(3)]
    for step in range(streams[0].steps_per_epoch):
        used = {shard for s in streams for g in range(step * 2, step * 2 + 2) for shard, _ in s.sample_ids(g)}
        assert len(used) <= 3  # 24 samples span at most three shards of 16 (or of 16, 11 and 16)


def _consumed(shard_set: ShardSet, world: int, accum: int, steps: range) -> list[set[int]]:
    """The samples each optimizer step trains on, all ranks together, with micro batch 4 × accum × world = B."""
    streams = [TrainStream(shard_set, StreamSpec(7, r, world, 4, accum)) for r in range(world)]
    return [{i for s in streams for g in range(k * accum, (k + 1) * accum) for i in _ids(s.batch(g))} for k in steps]


def test_the_samples_of_each_step_depend_on_the_global_batch_not_the_world_size(shard_set):
    steps = range(20)  # crosses an epoch boundary (203 // 24 = 8 steps an epoch)
    reference = _consumed(shard_set, 2, 3, steps)  # B = 24
    assert all(len(ids) == 24 for ids in reference)
    assert _consumed(shard_set, 1, 6, steps) == reference
    assert _consumed(shard_set, 3, 2, steps) == reference
    assert _consumed(shard_set, 6, 1, steps) == reference
    assert _consumed(shard_set, 2, 2, steps) != reference[:20]  # another B, another order


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_the_loader_order_does_not_depend_on_workers_and_resumes_at_any_position(shard_set, workers):
    spec = StreamSpec(7, 1, 2, 4, 2)
    reference = [_ids(TrainStream(shard_set, spec).batch(g)) for g in range(40)]  # crosses an epoch boundary
    loader = make_loader(TrainStream(shard_set, spec), workers)
    assert [_ids(b) for b in itertools.islice(loader, 40)] == reference
    resumed = make_loader(TrainStream(shard_set, spec, start=17), workers)
    assert [_ids(b) for b in itertools.islice(resumed, 23)] == reference[17:]


def test_creating_the_loader_does_not_touch_the_global_rng(shard_set):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    next(iter(make_loader(TrainStream(shard_set, StreamSpec(7, 0, 1, 4, 1)), 2)))
    assert torch.equal(before, torch.get_rng_state())


def test_too_few_samples_is_a_clear_error(shard_set):
    with pytest.raises(UserError, match="fewer than one optimizer step"):
        TrainStream(shard_set, StreamSpec(7, 0, 64, 4, 1))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_batches_cover_the_split_once_with_padding_weighted_out(shard_set, world):
    per_rank = [list(val_batches(shard_set, r, world, 8, max_batches=100)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # same number of forward passes on every rank
    counted = Counter()
    for batches in per_rank:
        for batch, weight in batches:
            for i, w in zip(_ids(batch), weight.tolist(), strict=True):
                counted[i] += w
    assert counted == Counter({i: 1.0 for i in range(203)})


def test_one_shard_serves_more_ranks_and_workers_than_it_has_shards(tmp_path):
    samples = np.zeros((40, 5), dtype=np.uint16)
    samples[:, 0] = np.arange(40)
    infos = shards.write_shards(samples, tmp_path / "train", "train", 1000, tmp_path)
    one = ShardSet(tmp_path, infos, 5, 1 << 16)
    assert len(one.counts) == 1
    seen = []
    for rank in range(2):
        stream = TrainStream(one, StreamSpec(3, rank, 2, 4, 1))
        seen += [i for b in itertools.islice(make_loader(stream, 3), stream.batches_per_epoch) for i in _ids(b)]
    assert sorted(seen) == list(range(40))


def _stream_of_one_shard(root) -> tuple[TrainStream, list]:
    samples = np.zeros((64, 5), dtype=np.uint16)
    samples[:, 0] = np.arange(64)
    infos = shards.write_shards(samples, root / "train", "train", 1000, root)
    return TrainStream(ShardSet(root, infos, 5, 1 << 16), StreamSpec(3, 0, 1, 4, 1)), infos


def test_a_shard_rewritten_during_the_run_is_never_trained_on(tmp_path):
    """Same size, in place, while a DataLoader worker reads it: the worker's next read finds the file changed,
    hashes it again and ends the run in one line; no batch holds the new bytes."""
    stream, infos = _stream_of_one_shard(tmp_path)
    path = tmp_path / infos[0].path
    batches = iter(make_loader(stream, 1))
    assert next(batches)[:, 1:].sum() == 0
    altered = tmp_path / "altered"
    shards.write_shards(np.full((64, 5), 10, dtype=np.uint16), altered / "train", "train", 1000, altered)
    with open(path, "r+b") as f:  # the same inode and size, as a rewrite in place would be
        f.write((altered / infos[0].path).read_bytes())
    with pytest.raises(UserError, match=r"^shard train/train-000000.tar of .* has changed since it was verified at "
                                        r"the start: sha256 .*the data directory is damaged; prepare it again$"):
        for batch in itertools.islice(batches, 100):
            assert batch[:, 1:].sum() == 0


def test_a_shard_truncated_during_the_run_is_one_line_and_a_touch_changes_nothing(tmp_path):
    stream, infos = _stream_of_one_shard(tmp_path)
    path = tmp_path / infos[0].path
    first = stream.batch(0)
    os.utime(path, ns=(0, 0))
    assert torch.equal(stream.batch(0), first)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(UserError, match="has changed since it was verified at the start"):
        stream.batch(15)


@pytest.mark.parametrize(("how", "said"), [
    ("deleted", "is missing"), ("truncated", "altered or truncated"), ("altered", "altered or truncated"),
    ("out-of-vocabulary", "sample 0 holds token id 65000, beyond the vocabulary of 1000")])
def test_a_damaged_shard_is_one_line_naming_it(tmp_path, how, said):
    """Before a process first reads a shard (`test_faults.py` runs one case through two ranks: every rank ends)."""
    samples = np.zeros((40, 5), dtype=np.uint16)
    if how == "out-of-vocabulary":  # a sound shard, listed with its digest, holding an id beyond the vocabulary
        samples[16:32] = 65000
    infos = shards.write_shards(samples, tmp_path / "train", "train", 16, tmp_path)
    path = tmp_path / infos[1].path
    raw = bytearray(path.read_bytes())
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "altered":  # same size, one byte
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(raw)
    with pytest.raises(UserError) as refused:
        ShardSet(tmp_path, infos, 5, 1000).read(1, 0)
    line = str(refused.value)
    assert line.startswith(f"shard {infos[1].path} of {tmp_path} ") and said in line and "\n" not in line
    assert line.endswith(": the data directory is damaged; prepare it again")
