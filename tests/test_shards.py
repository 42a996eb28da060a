"""Packing and WebDataset shards."""

from __future__ import annotations

import numpy as np
import webdataset as wds

from gpt_novel.data import shards


def test_pack_overlaps_by_one_and_reports_the_tail():
    stream = np.arange(23, dtype=np.uint16)
    samples, tail = shards.pack(stream, seq_len=5)
    assert samples.shape == (4, 6)
    assert samples[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert samples[1].tolist() == [5, 6, 7, 8, 9, 10]
    # every id after the first is a label exactly once, up to the tail
    labels = np.concatenate([s[1:] for s in samples])
    assert labels.tolist() == list(range(1, 21))
    assert tail == 2  # ids 21 and 22 did not fill a sample


def test_pack_too_short_stream_gives_no_sample():
    samples, tail = shards.pack(np.arange(5, dtype=np.uint16), seq_len=5)
    assert len(samples) == 0 and tail == 5


def test_dtype_fits_vocabulary():
    assert shards.dtype_for(50000) == np.uint16
    assert shards.dtype_for(65536) == np.uint16
    assert shards.dtype_for(65537) == np.uint32


def test_shards_are_readable_by_webdataset_and_byte_identical(tmp_path):
    samples, _ = shards.pack(np.arange(1000, dtype=np.uint16), seq_len=9)
    per = shards.samples_per_shard(4096, 9, np.dtype(np.uint16))
    a = shards.write_shards(samples, tmp_path / "a" / "train", "train", per, tmp_path / "a")
    b = shards.write_shards(samples, tmp_path / "b" / "train", "train", per, tmp_path / "b")
    assert len(a) > 1 and sum(s.samples for s in a) == len(samples)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert all((tmp_path / "a" / s.path).stat().st_size <= 4096 + 2 * 10240 for s in a)
    urls = [str(tmp_path / "a" / s.path) for s in a]
    read = [x for x in wds.WebDataset(urls, shardshuffle=False).decode()]
    assert [x["__key__"] for x in read] == [f"train-{i:09d}" for i in range(len(samples))]
    got = np.stack([x[shards.SAMPLE_FIELD] for x in read])
    assert got.dtype == np.uint16 and np.array_equal(got, samples)
