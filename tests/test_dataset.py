"""The prepared data directory as one typed object: a strict manifest that round-trips, and one-line refusals of a
missing, damaged, foreign or outdated directory (also through `gpt-novel train`, before any process group)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt_novel import cli, plan
from gpt_novel.config import train_config
from gpt_novel.data import shards
from gpt_novel.data.dataset import (
    FORMAT,
    MANIFEST,
    TOKENIZER_DIR,
    Dataset,
    Manifest,
    Split,
    TokenizerInfo,
)
from gpt_novel.data.stream import ShardSet
from gpt_novel.errors import UserError

VOCAB, SEQ = 40, 8


def _manifest(infos: list[shards.ShardInfo]) -> Manifest:
    samples = sum(i.samples for i in infos)
    return Manifest(
        format=FORMAT, created_by="gpt-novel test", fingerprint="f" * 64, seq_len=SEQ, sample_len=SEQ + 1,
        dtype="uint16", sample_field=shards.SAMPLE_FIELD, seed=7, packing="test rule",
        tokenizer=TokenizerInfo(TOKENIZER_DIR, "char", VOCAB, False), partitions=2,
        args={"inputs": ["小说/"], "seq_len": SEQ}, inputs=[{"path": "小说/一.txt", "bytes": 3, "sha256": "0" * 64}],
        splits={"train": Split(chapters=3, samples=samples, tokens=samples * SEQ, dropped_tail_tokens=2,
                               shards=infos)},
    )


@pytest.fixture
def data(tmp_path) -> Path:
    """A small complete data directory: 10 train samples in shards of 4, a tokenizer of VOCAB tokens."""
    root = tmp_path / "data"
    rows = (np.arange(10 * (SEQ + 1)) % VOCAB).astype(np.uint16).reshape(10, SEQ + 1)
    infos = shards.write_shards(rows, root / "train", "train", 4, root)
    (root / TOKENIZER_DIR).mkdir()
    (root / TOKENIZER_DIR / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(VOCAB)), encoding="utf-8")
    _manifest(infos).write(root)
    return root


def _raw(data: Path) -> dict:
    return json.loads((data / MANIFEST).read_text(encoding="utf-8"))


def _one_line_error(data: Path) -> str:
    with pytest.raises(UserError) as e:
        Dataset.load(data)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- the manifest ----------------------------------------------------------------------------------------------

def test_manifest_round_trips_through_json(data):
    manifest = Dataset.load(data).manifest
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert manifest.splits["train"].shards[0] == shards.ShardInfo("train/train-000000.tar", 4, 4 * SEQ,
                                                                  shards.sha256_file(data / "train/train-000000.tar"))
    text = (data / MANIFEST).read_text(encoding="utf-8")
    assert '\n  "format": "gpt-novel-shards/2",' in text and "小说" in text  # indent 2, not ASCII-escaped
    assert sorted(p.name for p in data.iterdir()) == [MANIFEST, TOKENIZER_DIR, "train"]  # no temporary file left


def _set(obj: dict, path: str, value) -> dict:
    *parents, last = path.split("/")
    node = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("seed", _DELETE, "manifest lacks seed"),
    ("extra", 1, "manifest has unknown key(s) 'extra'"),
    ("seq_len", "8", "manifest.seq_len must be an integer, not a string"),
    ("seq_len", True, "manifest.seq_len must be an integer, not a boolean"),
    ("tokenizer/to_simplified", 0, "manifest.tokenizer.to_simplified must be true or false, not an integer"),
    ("tokenizer", [], "manifest.tokenizer must be an object, not a list"),
    ("splits/train/shards/0/samples", 4.0, "manifest.splits['train'].shards[0].samples must be an integer"),
    ("splits/train/shards/1/sha256", None, "manifest.splits['train'].shards[1].sha256 must be a string, not null"),
    ("inputs", {}, "manifest.inputs must be a list"),
    ("sample_len", SEQ, "sample_len is seq_len + 1"),
    ("splits/train/samples", 11, "splits['train'].samples 11 is not the sum of its shards' samples"),
    ("splits/train/shards/0/path", "../elsewhere.tar", "'../elsewhere.tar' is not a path inside the data directory"),
    ("tokenizer/dir", "/etc", "tokenizer.dir '/etc' is not a path inside the data directory"),
])
def test_manifest_from_json_is_strict(data, path, value, message):
    with pytest.raises(ValueError, match=_literal(message)):
        Manifest.from_json(_set(_raw(data), path, value))


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_write_refuses_a_manifest_that_load_would_refuse(data, tmp_path):
    manifest = Dataset.load(data).manifest
    manifest.seq_len = 0
    with pytest.raises(ValueError, match="seq_len 0"):
        manifest.write(tmp_path)
    assert list(tmp_path.iterdir()) == [data]


# --- the directory ----------------------------------------------------------------------------------------------

def test_dataset_gives_what_the_readers_need(data):
    dataset = Dataset.load(str(data))
    assert (dataset.seq_len, dataset.sample_len, dataset.vocab_size) == (SEQ, SEQ + 1, VOCAB)
    assert dataset.fingerprint == "f" * 64 and dataset.tokenizer_dir == data / TOKENIZER_DIR
    assert dataset.train_samples() == 10 and dataset.split("val") is None
    train = ShardSet.load(dataset, "train")
    assert train.total == 10 and train.read(2, 1).tolist() == [(9 * 9 + i) % VOCAB for i in range(SEQ + 1)]  # sample 9
    with pytest.raises(UserError, match="has no val split"):
        ShardSet.load(dataset, "val")


def _write(data: Path, name: str, content: str | bytes) -> None:
    path = data / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "data directory {data}/nowhere does not exist; run `gpt-novel prepare` first"),
    ("file", "data directory {data}/file is not a directory; run `gpt-novel prepare` first"),
    ("no manifest", "{data} is not a prepared data directory (no manifest.json); run `gpt-novel prepare` first"),
    ("manifest is a directory", "{data}/manifest.json is not a valid gpt-novel manifest: cannot read it (Is a "
                                "directory)"),
    ("not UTF-8", "{data}/manifest.json is not a valid gpt-novel manifest: not UTF-8 text"),
    ("bad JSON", "{data}/manifest.json is not a valid gpt-novel manifest: Expecting ':' delimiter: line 2"),
    ("deep JSON", "{data}/manifest.json is not a valid gpt-novel manifest: nested too deeply"),
    ("a list", "{data}/manifest.json is not a valid gpt-novel manifest: the manifest must be a JSON object, not a "
               "list"),
    ("wrong type", "{data}/manifest.json is not a valid gpt-novel manifest: manifest.tokenizer.vocab_size must be "
                   "an integer, not a string"),
    ("no format", "{data}/manifest.json is not a valid gpt-novel manifest: 'format' is missing or not a string"),
    ("other format", "{data} was prepared in format 'gpt-novel-shards/9', which this version of gpt-novel does not "
                     "read (it reads 'gpt-novel-shards/2'); prepare it again with this version"),
    ("no vocab", "{data} has no tokenizer/vocab.txt; prepare the data again"),
    ("vocab size", "the tokenizer in {data} has 41 tokens but the shards were made with 40; prepare the data "
                   "again"),
])
def test_a_bad_directory_is_refused_in_one_line(data, damage, message):
    target = _damage(data, damage)
    assert _one_line_error(target).startswith(message.format(data=data))


def _damage(data: Path, damage: str) -> Path:
    """Break the data directory one way; returns the path to give to Dataset.load."""
    raw = _raw(data)
    if damage == "missing":
        return data / "nowhere"
    if damage == "file":
        (data / "file").write_text("")
        return data / "file"
    if damage in ("no manifest", "manifest is a directory"):
        (data / MANIFEST).unlink()
        if damage == "manifest is a directory":
            (data / MANIFEST).mkdir()
    elif damage == "no vocab":
        (data / TOKENIZER_DIR / "vocab.txt").unlink()
    elif damage == "vocab size":
        with open(data / TOKENIZER_DIR / "vocab.txt", "a", encoding="utf-8") as f:
            f.write("extra\n")
    else:
        _write(data, MANIFEST, {
            "not UTF-8": b'{"format": "\xff"}', "bad JSON": '{\n"format" 1}', "deep JSON": "[" * 100_000,
            "a list": "[]", "wrong type": json.dumps(_set(raw, "tokenizer/vocab_size", "40")),
            "no format": json.dumps(_set(raw, "format", _DELETE)),
            "other format": json.dumps(_set(raw, "format", "gpt-novel-shards/9")),
        }[damage])
    return data


def test_the_plan_reads_no_file(data):
    """The options are checked against the dataset object alone: a dataset whose directory is gone and a DeepSpeed
    path that does not exist still make a plan (reading those is `plan.read_inputs`' job)."""
    inputs = plan.Inputs(Dataset(Path("/gone"), Dataset.load(data).manifest), "nope.json", {}, None)
    args = ["--config", "tiny", "--data", "/gone", "--run-dir", "r", "--micro-batch-size", "2", "--grad-accum", "1",
            "--deepspeed", "nope.json", "--resume", "/gone/ckpt"]
    assert plan.build(train_config(args), inputs, 5, None).config.n_positions == SEQ
    with pytest.raises(UserError, match="has 10 training samples, fewer than one optimizer step needs"):
        plan.build(train_config(args), inputs, 6, None)


@pytest.mark.parametrize("damage", ["missing", "other format", "vocab size"])
def test_train_cli_refuses_bad_data_in_one_line(data, tmp_path, capsys, damage):
    target = _damage(data, damage)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny", "--data", str(target), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("gpt-novel train: error: "), err
    assert not run_dir.exists()  # refused before the run directory (and any process group)
