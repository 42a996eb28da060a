"""Starting from a pretrained GPT-2: `prepare --tokenizer HF_DIR` and `train --init-from HF_DIR`.

Nothing is downloaded: the "pretrained" folder is a small GPT-2 and a BERT-style character tokenizer made here from
the sample corpus (as GPT2-Chinese's checkpoints are: [PAD] [UNK] [CLS] [SEP] [MASK] + characters), saved with
`save_pretrained` and used exactly as a downloaded folder would be.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    SAMPLE_DIR,
    assert_folder_logits_equal_the_engines,
    interrupted,
    run_command,
    run_prepare,
    train_lines,
)

from gpt_novel.cli import main
from gpt_novel.data.vocab import Vocab, tokenizer_digest

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEQ = 32


def make_pretrained(folder: Path, text: str, n_positions: int = 64, seed: int = 0) -> Path:
    """A GPT-2 with a BERT-style character vocabulary of `text`, saved as a Hugging Face folder. Its embedding is
    scaled up, so its loss is far from a freshly initialised model's: a run that did not load it shows."""
    from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True)
    chars = sorted(set(text) - set(" \t\r\n\u3000[]"))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in BERT_SPECIALS + chars), encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(BERT_SPECIALS) + len(chars), n_positions=n_positions,
                                       n_embd=64, n_layer=2, n_head=4, bos_token_id=2, eos_token_id=2))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def sample_text() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(SAMPLE_DIR.glob("*.txt")))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, sample_text) -> Path:
    return make_pretrained(tmp_path_factory.mktemp("pretrained") / "gpt2-chinese", sample_text)


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory, bert_folder, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("bert") / "data"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--tokenizer", str(bert_folder), "--seq-len", str(SEQ),
                       "--shard-size", "8KB", "--val-ratio", "0.2") == 0
    return out


# --- prepare --tokenizer ----------------------------------------------------------------------------------------


def test_prepare_encodes_with_the_pretrained_tokenizer(bert_folder, bert_data, tmp_path, cache_dir):
    from transformers import AutoTokenizer

    manifest = json.loads((bert_data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tokenizer"]["kind"] == "pretrained"
    assert manifest["args"]["tokenizer_sha256"] == tokenizer_digest(bert_folder)
    assert manifest["args"]["special_tokens"]["newline"] == "[SEP]"
    vocab, theirs = Vocab.load(bert_data / "tokenizer"), AutoTokenizer.from_pretrained(bert_folder)
    assert vocab.index == theirs.get_vocab()
    line = "青石桥在镇子南面一里开外，"
    assert vocab.encode(f"{line}\n{line}") == [*theirs(line, add_special_tokens=False)["input_ids"], vocab.sep,
                                              *theirs(line, add_special_tokens=False)["input_ids"]]
    saved = AutoTokenizer.from_pretrained(bert_data / "tokenizer")  # what a model trained on the data ships
    assert saved(line)["input_ids"] == theirs(line, add_special_tokens=False)["input_ids"]  # no [CLS] … [SEP]
    assert saved.decode(saved(line)["input_ids"]) == line
    lengths = vocab.char_lengths()  # bits per character count the text's characters, whatever the tokenizer
    assert sum(lengths[i] for i in vocab.encode(f"{line}\n{line}", new_chapter=True)) == 2 * len(line) + 1
    # characters the tokenizer lacks become [UNK] and are counted per file
    (tmp_path / "in").mkdir()
    for p in SAMPLE_DIR.glob("*.txt"):
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "emoji.txt").write_text("第一章 笑\n" + "青石镇😀😀，好。\n" * 40, encoding="utf-8")
    assert run_prepare([tmp_path / "in"], tmp_path / "d", cache_dir, "--tokenizer", str(bert_folder), "--seq-len",
                       str(SEQ)) == 0
    files = json.loads((tmp_path / "d" / "report.json").read_text(encoding="utf-8"))["files"]
    assert next(f for f in files if f["path"].endswith("emoji.txt"))["unk"] == 40  # BERT: one [UNK] a word


def test_a_tokenizer_that_lacks_the_corpus_characters_is_warned_about(tmp_path, cache_dir, sample_text, capsys):
    narrow = make_pretrained(tmp_path / "narrow", sample_text[:300])  # a few hundred of the sample's characters
    capsys.readouterr()
    assert run_prepare([SAMPLE_DIR], tmp_path / "data", cache_dir, "--tokenizer", str(narrow), "--seq-len",
                       "32") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "are [UNK]" in line]
    totals = json.loads((tmp_path / "data" / "report.json").read_text(encoding="utf-8"))["totals"]
    (most, count), *_ = totals["unknown_chars"]
    assert len(warnings) == 1 and totals["unk"] > 0.01 * totals["tokens"], warnings
    assert warnings[0].startswith(f"warning: {totals['unk']:,} of {totals['tokens']:,} tokens (")
    assert f"most often {most} ({count:,})、" in warnings[0] and most not in sample_text[:300]


def test_the_unk_warning_starts_past_one_percent():
    from gpt_novel.prepare import unk_warning

    totals = {"tokens": 10_000, "unk": 100, "tokenizer": "pretrained", "unknown_chars": [["龘", 60], ["靐", 40]]}
    assert unk_warning(totals) is None
    assert unk_warning({**totals, "unk": 101}).startswith("101 of 10,000 tokens (1.0%) are [UNK]")
    assert "most often 龘 (60)、靐 (40)." in unk_warning({**totals, "unk": 101})


def test_a_tokenizer_without_bert_specials_needs_special_tokens(tmp_path, cache_dir, sample_text, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<nl>", "<eos>", "<bos>", "<pad>", "<unk>"]
    chars = sorted(set(sample_text) - {"\n"})
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(names + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    folder = tmp_path / "other"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(folder))
    assert run_prepare([SAMPLE_DIR], tmp_path / "d", cache_dir, "--tokenizer", str(folder)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks [SEP], [CLS], [MASK], [PAD], [UNK]" in err and "--special-tokens" in err
    assert run_prepare([SAMPLE_DIR], tmp_path / "d", cache_dir, "--tokenizer", str(folder), "--seq-len", str(SEQ),
                       "--special-tokens", ",".join(names)) == 0
    vocab = Vocab.load(tmp_path / "d" / "tokenizer")
    assert (vocab.sep, vocab.cls, vocab.mask, vocab.pad, vocab.unk) == (0, 1, 2, 3, 4)
    assert vocab.decode(vocab.encode("青石\n桥")) == "青石\n桥"


def test_our_own_model_folder_keeps_its_word_vocabulary(sample_data, tmp_path, cache_dir):
    """prepare --tokenizer on a gpt-novel folder segments with thulac over its vocabulary: the same shards as the
    data it came from."""
    out = tmp_path / "again"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--tokenizer", str(sample_data / "tokenizer"), "--seq-len",
                       "64", "--shard-size", "8KB", "--workers", "1") == 0
    assert Vocab.load(out / "tokenizer").kind == "word"
    for tar in sorted((sample_data / "train").glob("*.tar")):
        assert (out / "train" / tar.name).read_bytes() == tar.read_bytes()


# --- train --init-from: refusals before any process group ------------------------------------------------------


def _refused(capsys, *argv: str) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_init_from_refusals(bert_folder, bert_data, sample_data, tmp_path, capsys, sample_text):
    common = ["--config", "finetune", "--run-dir", str(tmp_path / "run")]
    assert "was encoded with another vocabulary" in _refused(capsys, *common, "--data", str(sample_data),
                                                              "--init-from", str(bert_folder))
    assert "--n-layer 3 contradicts --init-from" in _refused(capsys, *common, "--data", str(bert_data),
                                                              "--init-from", str(bert_folder), "--n-layer", "3")
    said = _refused(capsys, "--config", "tiny", "--run-dir", str(tmp_path / "run"), "--data", str(bert_data),
                    "--init-from", str(bert_folder))  # tiny's 128 dims, never typed: the preset is named
    assert f"the tiny preset's n_embd 128 contradicts --init-from {bert_folder}, whose n_embd is 64: use --config " \
           "finetune, which takes the folder's shape, or pass --n-embd 64" in said, said
    short = make_pretrained(tmp_path / "short", sample_text, n_positions=16)
    capsys.readouterr()  # transformers' "Writing model shards" bar
    assert f"has 16 positions, fewer than the data's seq len {SEQ}" in _refused(
        capsys, *common, "--data", str(bert_data), "--init-from", str(short))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((bert_folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    assert "its pytorch_model.bin is a pickle" in _refused(capsys, *common, "--data", str(bert_data),
                                                            "--init-from", str(pickled))
    assert "the finetune preset starts from a trained model" in _refused(capsys, *common, "--data", str(bert_data))
    assert not (tmp_path / "run").exists()


# --- train --init-from: 2 processes, real DeepSpeed --------------------------------------------------------------

FINETUNE = ["--config", "finetune", "--micro-batch-size", "4", "--grad-accum", "2", "--max-steps", "12",
            "--warmup-steps", "2", "--lr", "1e-3", "--save-every", "6", "--eval-every", "6", "--eval-batches", "2",
            "--sample-every", "12", "--num-workers", "1", "--progress", "false", "--dropout", "0"]


def _finetune_command(data: Path, folder: Path, run_dir: Path, stage: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gpt_novel.train", *FINETUNE, "--data", str(data), "--init-from", str(folder),
            "--run-dir", str(run_dir), "--deepspeed", str(ROOT / "ds_configs" / f"zero{stage}.json")]


def _first_step_loss(folder: Path, data: Path) -> float:
    """The loss the folder's model gives on the first optimizer step's micro-batches of both ranks, computed with
    transformers alone (in bf16, as the DeepSpeed engine runs it)."""
    from transformers import GPT2LMHeadModel

    from gpt_novel.data.dataset import Dataset
    from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream

    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    train = ShardSet.load(Dataset.load(data), "train")
    losses = []
    for rank in (0, 1):
        stream = TrainStream(train, StreamSpec(1234, rank, 2, 4, 2))
        for g in (0, 1):
            batch = stream.batch(g)
            with torch.no_grad():
                logits = model(input_ids=batch[:, :-1]).logits.float()
            losses.append(float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                                  batch[:, 1:].reshape(-1))))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def finetuned(bert_folder, bert_data, tmp_path_factory) -> dict[int, Path]:
    runs = {}
    for stage in (2, 3):
        run_dir = tmp_path_factory.mktemp(f"finetune{stage}") / "run"
        result = run_command(_finetune_command(bert_data, bert_folder, run_dir, stage))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (run_dir.parent / "stdout.log").write_text(result.stdout, encoding="utf-8")
        runs[stage] = run_dir
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_init_from_starts_from_the_folders_weights_and_trains(bert_folder, bert_data, finetuned, stage):
    losses = [loss for _, loss, *_ in train_lines(finetuned[stage]) if loss is not None]
    expected = _first_step_loss(bert_folder, bert_data)
    assert expected > 9  # the scaled folder model: a fresh initialisation would give about ln(vocab) ≈ 7.3
    assert abs(losses[0] - expected) < 0.02, (losses[0], expected)
    assert np.mean(losses[-3:]) < losses[0] - 1.0
    saved = json.loads((finetuned[stage] / "checkpoints" / "step-00000012" / "model_config.json").read_text())
    assert (saved["n_layer"], saved["n_embd"], saved["n_positions"]) == (2, 64, 64)
    heads = json.loads((bert_folder / "config.json").read_text())["n_head"]
    said = (finetuned[stage].parent / "stdout.log").read_text(encoding="utf-8")
    assert said.count(f"starting from --init-from {bert_folder}: GPT-2, 2 layers, {heads} heads, 64 dims, 64 "
                      "positions") == 1, said  # once, from rank 0
    recorded = (finetuned[stage] / "checkpoints" / "step-00000012" / "config.yaml").read_text(encoding="utf-8")
    assert f"init_from: {bert_folder}\n" in recorded and bert_folder.is_absolute()


@pytest.mark.slow
def test_finetuned_folder_has_the_pretrained_tokenizer_and_the_engines_logits(bert_folder, bert_data, finetuned,
                                                                               tmp_path, capsys):
    from transformers import AutoTokenizer

    from gpt_novel import consolidate

    ckpt = finetuned[3] / "checkpoints" / "step-00000012"
    folder = consolidate.consolidate(finetuned[3], tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == AutoTokenizer.from_pretrained(bert_folder).get_vocab()
    assert_folder_logits_equal_the_engines(ckpt, folder, tmp_path)
    capsys.readouterr()
    assert main(["sample", str(folder), "--prompt", "青石镇", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("青石镇")
    from transformers import pipeline

    text = pipeline("text-generation", model=str(folder))("青石镇", max_new_tokens=6)[0]["generated_text"]
    assert text.startswith("青石镇") and len(text) > 3 and " " not in text
    assert main(["eval", str(folder), "--data", str(bert_data), "--chapters", "1", "--prompt-chars", "16",
                 "--gen-chars", "16", "--device", "cpu"]) == 0
    assert json.loads((folder / "eval.json").read_text())["val_bpc"] > 0
    probe = run_command([sys.executable, "-c", "import sys; from gpt_novel.generate import load; "
                         f"m, v = load({str(folder)!r}); v.encode('青石镇'); print('thulac' in sys.modules)"])
    assert probe.stdout.strip() == "False", probe.stderr  # a pretrained tokenizer encodes prompts without thulac


@pytest.mark.slow
def test_init_from_run_resumes_exactly(bert_folder, bert_data, finetuned, tmp_path):
    """A fine-tuning run resumes from its checkpoint, not from --init-from's folder (a kill and its leftovers:
    test_train.py)."""
    run_dir = interrupted(finetuned[2], tmp_path / "run", cut=6)
    result = run_command(_finetune_command(bert_data, bert_folder, run_dir, 2))
    assert result.returncode == 0 and "resumed from" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert train_lines(run_dir) == train_lines(finetuned[2])


@pytest.mark.slow
def test_consolidate_init_from_train_consolidate_round_trip(zero_runs, train_data, tmp_path, cache_dir):
    """Our own model (pretrained from scratch, BPE vocabulary) → HF folder → the same corpus prepared with its
    tokenizer → fine-tuned from it → HF folder again."""
    from gpt_novel import consolidate

    first = consolidate.consolidate(zero_runs[2], tmp_path / "hf1")
    data = tmp_path / "data"
    assert run_prepare([SAMPLE_DIR], data, cache_dir, "--tokenizer", str(first), "--seq-len", "32",
                       "--shard-size", "8KB", "--val-ratio", "0.2") == 0
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "gpt_novel.train", *FINETUNE, "--max-steps", "6", "--data", str(data), "--init-from", str(first),
           "--run-dir", str(run_dir)]
    result = run_command(cmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first_loss = train_lines(run_dir)[0][1]
    reference_last = [loss for _, loss, *_ in train_lines(zero_runs[2]) if loss is not None][-1]
    assert abs(first_loss - reference_last) < 1.0  # it goes on from where the first model was, not from scratch
    second = consolidate.consolidate(run_dir, tmp_path / "hf2")
    assert Vocab.load(second).tokens == Vocab.load(first).tokens
    assert json.loads((second / "config.json").read_text())["n_layer"] == 2


@pytest.mark.slow
def test_serve_continues_with_the_pretrained_tokenizer(finetuned, tmp_path):
    """`gpt-novel serve` on a folder fine-tuned from a pretrained GPT-2: prompts go through its BERT-style
    tokenizer, drafts are joined without spaces, and a character it lacks is named."""
    from test_serve import generate, serving

    from gpt_novel import consolidate

    folder = consolidate.consolidate(finetuned[2], tmp_path / "hf")
    with serving(folder) as url:
        status, got = generate(url, prompt="青石镇😀", max_new_tokens=8, drafts=2, seed=1)
    assert status == 200 and got[-1]["type"] == "end", got
    assert any("😀" in note for note in got[0]["notes"]), got[0]
    texts = got[-1]["texts"]
    assert all(text and " " not in text for text in texts), texts
    assert ["".join(e["texts"][i] for e in got if e["type"] == "step") for i in range(2)] == texts
