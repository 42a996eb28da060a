"""`gpt-novel prepare` end to end: shards decode back to the text, determinism, cache, atomicity, bad input."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import SAMPLE_DIR, run_prepare

from gpt_novel import prepare
from gpt_novel.data import chapters, clean
from gpt_novel.data.vocab import Vocab


def _read_split(data: Path, split: str) -> list[np.ndarray]:
    manifest = json.loads((data / "manifest.json").read_text())
    urls = [str(data / s["path"]) for s in manifest["splits"][split]["shards"]]
    return [x["tokens.npy"] for x in wds.WebDataset(urls, shardshuffle=False).decode()]


def _unpack(samples: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([samples[0]] + [s[1:] for s in samples[1:]])


def _sample_chapters(sample_text: str) -> list[str]:
    lines = clean.clean_lines(clean.normalize(sample_text).split("\n"), Counter())
    return [c.text for c in chapters.split_chapters(lines, Counter())]


def test_shards_decode_back_to_the_chapters(sample_data, sample_text):
    vocab = Vocab.load(sample_data / "tokenizer")
    manifest = json.loads((sample_data / "manifest.json").read_text())
    seq_len = manifest["seq_len"]
    texts = []
    for split in ("train", "val"):
        samples = _read_split(sample_data, split)
        assert all(s.shape == (seq_len + 1,) and s.dtype == np.uint16 for s in samples)
        assert len(samples) == manifest["splits"][split]["samples"]
        decoded = vocab.decode(_unpack(samples), keep_special=True)
        texts += [t.removesuffix("[CLS]") for t in decoded.split("[MASK]")[1:]]
    expected = _sample_chapters(sample_text)
    # every chapter comes back whole except the last of each split, cut by the dropped tail (< seq_len ids)
    assert len(texts) == len(expected)
    for got in texts:
        assert any(want == got or want.startswith(got) for want in expected)
    assert sum(t in expected for t in texts) >= len(expected) - 2


def test_manifest_lists_shards_with_counts_and_hashes(sample_data):
    manifest = json.loads((sample_data / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == len(Vocab.load(sample_data / "tokenizer"))
    assert manifest["args"]["seq_len"] == 64 and manifest["seed"] == 1234
    assert manifest["dtype"] == "uint16" and "overlapping by one" in manifest["packing"]
    train = manifest["splits"]["train"]
    assert len(train["shards"]) > 1 and manifest["splits"]["val"]["chapters"] == 1
    for split in manifest["splits"].values():
        assert split["samples"] == sum(s["samples"] for s in split["shards"])
        for shard in split["shards"]:
            data = (sample_data / shard["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
            assert shard["tokens"] == shard["samples"] * 64


def test_report_accounts_for_every_character(sample_data):
    report = json.loads((sample_data / "report.json").read_text())
    (f,) = report["files"]
    assert f["encoding"] == "utf-8" and f["script"] == "simplified" and f["chapters"] == 6 and f["unk"] == 0
    assert f["chars_kept"] + sum(f["chars_removed"].values()) == f["chars_in"]
    assert set(f["chars_removed"]) <= {"front_matter", "whitespace"}


def test_same_output_whatever_the_workers_and_warm_cache(tmp_path, sample_data, cache_dir):
    out = tmp_path / "w2"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64", "--shard-size", "8KB", "--workers", "2",
                       "--tokenizer", "word") == 0  # as sample_data: thulac, whose segmentations the cache holds
    for a in sorted(p for p in sample_data.rglob("*") if p.is_file() and p.suffix in (".tar", ".txt", ".json")):
        rel = a.relative_to(sample_data)
        if rel.name not in ("manifest.json", "report.json"):  # these record workers and time
            assert (out / rel).read_bytes() == a.read_bytes(), rel
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["segmented_chapters"] == 0  # everything came from the cache


def test_rerun_after_a_vocab_change_does_not_segment_again(tmp_path, cache_dir, sample_data):
    out = tmp_path / "small-vocab"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64", "--vocab-size", "1700", "--workers", "1",
                       "--tokenizer", "word") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["segmented_chapters"] == 0 and report["totals"]["vocab_size"] <= 1700


def test_char_tokenizer(tmp_path, cache_dir):
    out = tmp_path / "char"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64", "--tokenizer", "char") == 0
    vocab = Vocab.load(out / "tokenizer")
    assert vocab.kind == "char" and all(len(t) == 1 for t in vocab.tokens[5:])
    assert vocab.decode(vocab.encode("青石镇的雨")) == "青石镇的雨"


def test_existing_output_is_protected(tmp_path, cache_dir, capsys):
    out = tmp_path / "d"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64") == 0
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "32") == 2
    assert "already holds a different dataset" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 64
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "32", "--force") == 0
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 32
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_prepare([SAMPLE_DIR], foreign, cache_dir, "--force") == 2
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, cache_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare.shards.ShardWriter, "add", boom)
    out = tmp_path / "d"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64") == 130
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".d.work"]  # no partial directory; the steps done are kept
    assert not [p for p in (tmp_path / ".d.work").rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "4"], "--seq-len 4 is out of range"),
        (["--vocab-size", "3"], "--vocab-size 3 is out of range"),
        (["--vocab-size", "100"], "--vocab-size 100 is too small"),
        (["--val-ratio", "0.9"], "--val-ratio 0.9 is out of range"),
        (["--shard-size", "lots"], "--shard-size 'lots' is not a size"),
        (["--seq-len", "60000"], "too small for --seq-len 60000"),
    ],
)
def test_bad_options_get_one_line(tmp_path, cache_dir, capsys, args, message):
    assert run_prepare([SAMPLE_DIR], tmp_path / "d", cache_dir, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_bad_files_are_listed_and_the_rest_goes_on(tmp_path, cache_dir, capsys, sample_text):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.txt").write_text(sample_text, encoding="utf-8")
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
    body = clean.normalize(sample_text[sample_text.index("第一章"):]).replace("\n", "")
    (inputs / "oneline.txt").write_text((body * 30)[:400_000], encoding="utf-8")
    assert run_prepare([inputs], tmp_path / "d", cache_dir, "--seq-len", "64") == 0
    captured = capsys.readouterr()
    assert "empty.txt: empty file" in captured.err and "binary.txt: binary file" in captured.err
    assert "a line of 400000 characters" in captured.err
    files = {Path(f["path"]).name: f for f in json.loads((tmp_path / "d" / "report.json").read_text())["files"]}
    assert files["empty.txt"]["status"] == "refused" and files["binary.txt"]["status"] == "refused"
    assert files["good.txt"]["chapters"] == 6 and files["oneline.txt"]["status"] == "ok"
    assert "REFUSED empty.txt" in captured.out


def test_directory_without_text_files(tmp_path, cache_dir, capsys):
    (tmp_path / "empty").mkdir()
    assert run_prepare([tmp_path / "empty"], tmp_path / "d", cache_dir) == 2
    assert "no .txt, .json or .jsonl files" in capsys.readouterr().err


def test_duplicate_chapters_across_files_are_dropped(tmp_path, cache_dir, sample_text):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text(sample_text, encoding="utf-8")
    (inputs / "b.txt").write_text(sample_text, encoding="utf-8")
    assert run_prepare([inputs], tmp_path / "d", cache_dir, "--seq-len", "64") == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["totals"]["chapters"] == 6
    b = next(f for f in report["files"] if f["path"].endswith("b.txt"))
    assert b["chapters"] == 0 and b["chars_removed"]["duplicate_chapter"] > 10000


def test_gpt2_chinese_train_json(tmp_path, cache_dir, sample_text):
    chapters_text = _sample_chapters(sample_text)
    (tmp_path / "train.json").write_text(json.dumps(chapters_text, ensure_ascii=False), encoding="utf-8")
    assert run_prepare([tmp_path / "train.json"], tmp_path / "d", cache_dir, "--seq-len", "64") == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["totals"]["chapters"] == 6 and report["totals"]["unk"] == 0


def test_options_from_yaml_with_cli_overrides(tmp_path, cache_dir):
    config = tmp_path / "prepare.yaml"
    config.write_text("seq_len: 32\nval-ratio: 0.2\nseed: 7\ntokenizer: char\n", encoding="utf-8")
    out = tmp_path / "d"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--config", str(config), "--seed", "8") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seq_len"], manifest["seed"], manifest["tokenizer"]["kind"]) == (32, 8, "char")
    assert manifest["splits"]["val"]["chapters"] == 1  # round(0.2 × 6) = 1


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [("seq_lenn: 32\n", "unknown option 'seq_lenn'"), ("seq_len: many\n", "--seq-len: expected int, not many"),
     ("[1, 2]\n", "must hold a mapping"), ("to_simplified: 3\n", "--to-simplified: expected bool, not 3")],
)
def test_bad_yaml_config_gets_one_line(tmp_path, cache_dir, capsys, yaml_text, message):
    config = tmp_path / "prepare.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    assert run_prepare([SAMPLE_DIR], tmp_path / "d", cache_dir, "--config", str(config)) == 2
    assert message in capsys.readouterr().err


def test_empty_json_list_is_refused(tmp_path, cache_dir, sample_text):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.json").write_text("[]", encoding="utf-8")
    (tmp_path / "in" / "novel.txt").write_text(sample_text, encoding="utf-8")
    assert run_prepare([tmp_path / "in"], tmp_path / "d", cache_dir, "--seq-len", "64") == 0
    files = json.loads((tmp_path / "d" / "report.json").read_text())["files"]
    assert next(f for f in files if f["path"].endswith("train.json"))["reason"].startswith("no articles")
