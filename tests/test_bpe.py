"""`prepare --tokenizer bpe`: a byte-pair vocabulary learnt from the corpus with Hugging Face `tokenizers`, the same
bytes however the work is spread, every corpus character in it, loadable by AutoTokenizer, and a model trained on it
that never needs thulac."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_DIR, SPLIT_OPTIONS, dataset_bytes, run_prepare, split_corpus

from gpt_novel.cli import main
from gpt_novel.data import stages
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.stream import ShardSet
from gpt_novel.data.vocab import SPECIAL_TOKENS, Vocab, train_bpe
from gpt_novel.evaluate import held_out_chapters

BPE = ["--tokenizer", "bpe", "--vocab-size", "2500"]  # after SPLIT_OPTIONS (thulac words): the last given wins


def _steps(corpus: Path, out: Path, cache: Path, tasks: int) -> None:
    common = ["prepare", str(corpus), "--out", str(out), "--cache-dir", str(cache), "--workers", "1",
              *SPLIT_OPTIONS, *BPE]
    for step in ("plan", "read", "merge", "segment", "vocab", "encode", "finish"):
        for task in range(tasks if step in ("read", "segment", "encode") else 1):
            assert main([*common, "--step", step, "--task", str(task), "--tasks", str(tasks)]) == 0, step


def test_bpe_prepare_gives_the_same_bytes_for_any_workers_and_tasks(tmp_path, sample_text, cache_dir):
    corpus = split_corpus(sample_text, tmp_path / "novels")
    assert run_prepare([corpus], tmp_path / "w1", cache_dir, "--workers", "1", *SPLIT_OPTIONS, *BPE) == 0
    assert run_prepare([corpus], tmp_path / "w2", cache_dir, "--workers", "2", *SPLIT_OPTIONS, *BPE) == 0
    _steps(corpus, tmp_path / "t3", cache_dir, tasks=3)
    reference = dataset_bytes(tmp_path / "w1")
    assert dataset_bytes(tmp_path / "w2") == reference and dataset_bytes(tmp_path / "t3") == reference
    vocab = Vocab.load(tmp_path / "w1" / "tokenizer")
    assert vocab.kind == "bpe" and len(vocab) == 2500 and vocab.tokens[:5] == list(SPECIAL_TOKENS)
    assert any(len(t) > 1 for t in vocab.tokens[5:])  # merges were learnt


def test_past_the_cap_bpe_learns_from_a_sample_drawn_the_same_for_any_tasks(tmp_path, sample_text, cache_dir,
                                                                             monkeypatch):
    read = []

    def counting(lines, *args):
        lines = list(lines)
        read.append(sum(map(len, lines)))
        return train_bpe(lines, *args)

    corpus = split_corpus(sample_text, tmp_path / "novels")
    monkeypatch.setattr(stages, "train_bpe", counting)
    assert run_prepare([corpus], tmp_path / "all", cache_dir, "--workers", "1", *SPLIT_OPTIONS, *BPE) == 0
    monkeypatch.setattr(stages, "BPE_SAMPLE_CHARS", read[0] // 3)
    assert run_prepare([corpus], tmp_path / "w1", cache_dir, "--workers", "1", *SPLIT_OPTIONS, *BPE) == 0
    _steps(corpus, tmp_path / "t3", cache_dir, tasks=3)
    assert read[1] == read[2] and 0 < read[1] < read[0]  # whole chapters drawn by digest, about a third
    assert dataset_bytes(tmp_path / "t3") == dataset_bytes(tmp_path / "w1") != dataset_bytes(tmp_path / "all")


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "data"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--workers", "1", "--seq-len", "64", *BPE) == 0
    return out


def test_no_corpus_text_encodes_to_unk_and_decoding_gives_it_back(bpe_data):
    report = json.loads((bpe_data / "report.json").read_text(encoding="utf-8"))
    assert report["totals"]["unk"] == 0 and report["totals"]["tokenizer"] == "bpe"
    vocab = Vocab.load(bpe_data / "tokenizer")
    dataset = Dataset.load(bpe_data)
    text = "\n".join(held_out_chapters(vocab, ShardSet.load(dataset, "train")))  # the corpus as prepare kept it
    ids = vocab.encode(text)
    assert vocab.unk not in ids and vocab.decode(ids) == text
    assert len(text) / len(ids) > 1.2  # merges compress: fewer tokens than characters


def test_the_default_bpe_grows_past_12000_for_a_corpus_of_many_characters(tmp_path, sample_text, cache_dir):
    """A download folder keeps rare characters: with --vocab-size unset, 9,500 distinct ones more than the sample's
    get a vocabulary that holds them all and still has merges, where 12,000 would be refused as too small."""
    rare = [chr(0x4E00 + i) for i in range(9_500)]
    lines = ["，".join("".join(rare[i:i + 10][j:j + 5]) for j in (0, 5)) + "。" for i in range(0, len(rare), 10)]
    (tmp_path / "novels").mkdir()
    (tmp_path / "novels" / "a.txt").write_text(sample_text + "\n第九十九章 字表\n" + "\n".join(lines * 2), "utf-8")
    assert run_prepare([tmp_path / "novels"], tmp_path / "d", cache_dir, "--workers", "1", "--seq-len", "64") == 0
    vocab = Vocab.load(tmp_path / "d" / "tokenizer")
    chars = {t for t in vocab.tokens[5:] if len(t) == 1}
    assert vocab.kind == "bpe" and set(rare) <= chars and len(vocab) > 12_000
    assert len(vocab) - len(chars) - 5 > 1_000  # merges, not only characters


def test_auto_tokenizer_encodes_as_training_did_and_decodes_without_spaces(bpe_data):
    from transformers import AutoTokenizer

    vocab = Vocab.load(bpe_data / "tokenizer")
    auto = AutoTokenizer.from_pretrained(str(bpe_data / "tokenizer"))
    text = held_out_chapters(vocab, ShardSet.load(Dataset.load(bpe_data), "val"))[0]
    ids = auto.encode(text, add_special_tokens=False)
    assert ids == vocab.encode(text)  # a newline is [SEP], as in the shards
    assert auto.decode(ids) == text  # pieces joined without spaces, [SEP] a newline again


# consolidate, sample and serve (its app, in this process) a BPE model; thulac must never have been imported
AFTER_TRAINING = """
import sys
from fastapi.testclient import TestClient
from gpt_novel import consolidate, generate, serve
assert consolidate.main(["run", "hf"]) == 0
assert generate.main(["hf", "--prompt", "青石镇", "--max-new-tokens", "30", "--seed", "1"]) == 0
with TestClient(serve.create_app("hf", "cpu")) as client:  # its lifespan starts the generation worker
    events = client.post("/api/generate", json={"prompt": "青石镇", "max_new_tokens": 20, "seed": 1}).text
assert '"type": "end"' in events and '"type": "error"' not in events, events
assert "thulac" not in sys.modules
"""


@pytest.mark.slow
def test_train_consolidate_sample_and_serve_a_bpe_model_without_thulac(tmp_path, bpe_data):
    shim = tmp_path / "no-thulac"
    shim.mkdir()
    (shim / "thulac.py").write_text('raise ImportError("a BPE model must not need thulac")\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    for cmd in ([sys.executable, "-m", "gpt_novel.train", "--config", "tiny", "--data", str(bpe_data), "--run-dir",
                 "run", "--max-steps", "21", "--data-seq-len", "64", "--progress", "false"],
                [sys.executable, "-c", AFTER_TRAINING]):
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "training.json").read_text())["tokenizer"] == "bpe"


def test_a_pair_seen_once_is_not_merged():
    """As a word vocabulary keeps only words seen twice: on a small corpus, merges of pairs seen once would spend
    the size on pieces of single sentences."""
    vocab = train_bpe(["甲乙丙丁", "甲乙"], "甲乙丙丁", 100, to_simplified=False)
    assert "甲乙" in vocab.tokens and not {"丙丁", "乙丙", "甲乙丙"} & set(vocab.tokens)
