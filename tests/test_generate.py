"""From checkpoint to story: consolidation (ZeRO 1/2/3), sampling and evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, STEPS, assert_folder_logits_equal_the_engines

from gpt_novel import consolidate, evaluate, generate
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.shards import sha256_file
from gpt_novel.data.stream import ShardSet
from gpt_novel.data.vocab import Vocab


@pytest.fixture(scope="module")
def hf_dirs(zero_runs, tmp_path_factory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("hf")
    return {stage: consolidate.consolidate(run, out / f"zero{stage}") for stage, run in zero_runs.items()}


@pytest.mark.slow
def test_consolidated_logits_equal_the_training_engine(zero_runs, hf_dirs, tmp_path):
    """ZeRO-3, whose engine holds its weights partitioned. Under ZeRO-1 and 2 the folder holds the engine's own
    weights (the next test), and this test shows the folder's forward pass is the engine's."""
    ckpt = zero_runs[3] / "checkpoints" / f"step-{STEPS:08d}"
    assert_folder_logits_equal_the_engines(ckpt, hf_dirs[3], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_consolidated_weights_are_the_engines_own(zero_runs, hf_dirs, stage):
    """Under ZeRO-1 and 2 the checkpoint holds the engine's bf16 module weights whole: the folder, consolidated from
    the fp32 master weights, has exactly these; with the same forward pass (the test above), the same logits."""
    from transformers import AutoModelForCausalLM

    states = zero_runs[stage] / "checkpoints" / f"step-{STEPS:08d}" / "ds" / "mp_rank_00_model_states.pt"
    engine = torch.load(states, weights_only=True, map_location="cpu")["module"]
    folder = AutoModelForCausalLM.from_pretrained(hf_dirs[stage], dtype=torch.bfloat16).state_dict()
    assert engine.keys() == folder.keys()
    assert all(torch.equal(folder[name], weights) for name, weights in engine.items())


@pytest.mark.slow
def test_consolidate_draws_no_bar_of_transformers(zero_runs, tmp_path, capsys):
    from transformers.utils import logging

    logging.enable_progress_bar()  # as in a fresh process (another test may have turned it off)
    assert consolidate.main([str(zero_runs[2]), str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err


@pytest.mark.slow
def test_hf_folder_loads_with_auto_classes_and_pipeline(hf_dirs, recwarn):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

    folder = hf_dirs[2]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    vocab = Vocab.load(folder)
    assert len(tok) == model.config.vocab_size == len(vocab)
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.eos_token_id == vocab.cls and gen.pad_token_id == vocab.pad
    assert sorted(gen.bad_words_ids) == sorted([[vocab.unk], [vocab.pad], [vocab.mask]])
    card = (folder / "README.md").read_text()
    assert f"| steps | {STEPS} |" in card and "val loss" in card and "fingerprint" in card
    text = pipeline("text-generation", model=str(folder))("青石镇", max_new_tokens=8)[0]["generated_text"]
    assert text.startswith("青石镇") and len(text) > 3
    assert not [w for w in recwarn.list if "tied" in str(w.message).lower() or "missing" in str(w.message).lower()]


@pytest.mark.slow
def test_consolidate_errors(zero_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(zero_runs[2], run)
    assert consolidate.main([str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert consolidate.main([str(ROOT), str(tmp_path / "o")]) == 2
    assert "neither a training run directory nor a checkpoint" in capsys.readouterr().err
    assert consolidate.main([str(run), str(tmp_path / "o"), "--step", "5"]) == 2
    assert "no checkpoint of step 5" in capsys.readouterr().err
    newest = run / "checkpoints" / f"step-{STEPS:08d}"
    (newest / "COMPLETE.json").unlink()  # interrupted while saving
    assert consolidate.main([str(newest), str(tmp_path / "o")]) == 2
    assert "no completion marker" in capsys.readouterr().err
    older = run / "checkpoints" / f"step-{STEPS - 6:08d}"
    vocab = older / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8") + "多余\n", encoding="utf-8")  # another vocabulary
    marker = json.loads((older / "COMPLETE.json").read_text())
    marker["files"]["tokenizer/vocab.txt"] = {"bytes": vocab.stat().st_size, "sha256": sha256_file(vocab)}
    (older / "COMPLETE.json").write_text(json.dumps(marker))
    assert consolidate.main([str(run), str(tmp_path / "o")]) == 2
    assert "another vocabulary" in capsys.readouterr().err


@pytest.mark.slow
def test_consolidate_replaces_a_model_folder_whole_and_refuses_anything_else(zero_runs, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert consolidate.main([str(zero_runs[2]), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and holds no model folder" in err
    assert [p.name for p in other.iterdir()] == ["mine.txt"]
    hf, old = tmp_path / "hf", os.umask(0o022)
    try:
        assert consolidate.main([str(zero_runs[2]), str(hf)]) == 0
        (hf / "eval.json").write_text("{}")  # the evaluation of the weights about to be replaced
        assert consolidate.main([str(zero_runs[1]), str(hf)]) == 0
    finally:
        os.umask(old)
    assert not (hf / "eval.json").exists() and not list(tmp_path.glob(".hf.*"))
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in hf.iterdir()} == {p.name: "0o644" for p in hf.iterdir()}
    assert f'from_pretrained("{hf}")' in (hf / "README.md").read_text()


# --- sampling on a model built so that its next token is known --------------------------------------------------

def _save_with_tokenizer(model, sample_data: Path, out: Path) -> None:
    """A model folder as tools/consolidate.py leaves it: weights, generation config and the tokenizer files."""
    model.save_pretrained(out)
    for f in (sample_data / "tokenizer").iterdir():
        shutil.copy2(f, out / f.name)


def _rigged_model(sample_data: Path, out: Path, favourite: str, runner_up: str | None = None) -> Path:
    """A tiny GPT-2 whose final hidden state is constant, so it always prefers `favourite` (then `runner_up`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt_novel.config import TrainConfig
    from gpt_novel.consolidate import generation_config
    from gpt_novel.model import build_model

    vocab = Vocab.load(sample_data / "tokenizer")
    torch.manual_seed(0)
    model = build_model(TrainConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, dropout=0.0), vocab)
    assert isinstance(model.config, GPT2Config) and isinstance(model, GPT2LMHeadModel)
    with torch.no_grad():
        direction = torch.randn(16)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(direction)
        model.transformer.wte.weight[vocab.index[favourite]] = direction * 3
        if runner_up:
            model.transformer.wte.weight[vocab.index[runner_up]] = direction * 2.9
    model.generation_config = generation_config(vocab, 64)
    _save_with_tokenizer(model, sample_data, out)
    return out


def test_the_saved_generation_config_holds_the_sampling_defaults(sample_data):
    vocab = Vocab.load(sample_data / "tokenizer")
    gen, defaults = consolidate.generation_config(vocab, 64), generate.SamplingOptions()
    assert (gen.temperature, gen.top_k, gen.top_p, gen.repetition_penalty) == (
        defaults.temperature, defaults.top_k, defaults.top_p, defaults.repetition_penalty)
    assert gen.do_sample and gen.max_new_tokens == 32 and gen.bos_token_id == vocab.mask
    assert gen.bad_words_ids == generate.never_generated(vocab) == [[vocab.unk], [vocab.pad], [vocab.mask]]


def test_generation_stops_at_cls(sample_data, tmp_path):
    folder = _rigged_model(sample_data, tmp_path / "m", "[CLS]")
    texts = generate.continue_text(folder, "青石镇", generate.SamplingOptions(max_new_tokens=10, seed=1))
    assert texts == [""]


def test_sep_becomes_a_newline(sample_data, tmp_path):
    folder = _rigged_model(sample_data, tmp_path / "m", "[SEP]", "雨")
    options = generate.SamplingOptions(max_new_tokens=6, temperature=0, repetition_penalty=1.0)
    assert generate.continue_text(folder, "青石镇", options) == ["\n" * 6]


def test_unk_pad_mask_are_never_generated(sample_data, tmp_path):
    folder = _rigged_model(sample_data, tmp_path / "m", "[UNK]", "雨")
    options = generate.SamplingOptions(max_new_tokens=5, temperature=0, repetition_penalty=1.0)
    assert generate.continue_text(folder, "青石镇", options) == ["雨" * 5]


@pytest.fixture(scope="module")
def random_model(sample_data, tmp_path_factory) -> Path:
    """An untrained tiny model: every sample differs, which is what the batch and seed tests need."""
    from gpt_novel.config import TrainConfig
    from gpt_novel.consolidate import generation_config
    from gpt_novel.model import build_model

    vocab = Vocab.load(sample_data / "tokenizer")
    torch.manual_seed(1)
    model = build_model(TrainConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, dropout=0.0), vocab)
    model.generation_config = generation_config(vocab, 64)
    out = tmp_path_factory.mktemp("random")
    _save_with_tokenizer(model, sample_data, out)
    return out


def test_same_seed_same_text_and_a_batch_of_different_samples(random_model):
    options = generate.SamplingOptions(max_new_tokens=12, num_samples=3, seed=7, temperature=1.0)
    model = generate.load(random_model, "cpu")
    first = generate.continue_text(model, "沈砚推开门", options)
    assert generate.continue_text(model, "沈砚推开门", options) == first
    assert len(first) == 3 and len(set(first)) == 3
    options.seed = 8
    assert generate.continue_text(model, "沈砚推开门", options) != first


def test_long_prompt_keeps_its_tail(random_model, sample_text):
    model, vocab = generate.load(random_model, "cpu")
    options = generate.SamplingOptions(max_new_tokens=16, temperature=0)
    ids = generate.prompt_ids(vocab, sample_text, options, model.config.n_positions)
    full = vocab.encode(sample_text)
    assert len(ids) == generate.slide_keep(64) == 48 and ids == full[-48:]  # what a slide keeps
    assert generate.fit_prompt(full[:63], 64) == full[:63]  # room for one token: kept whole
    assert len(generate.continue_text((model, vocab), sample_text, options)) == 1
    assert generate.prompt_ids(vocab, "", options, 64) == [vocab.mask]  # an empty prompt starts a chapter


def test_sample_cli(random_model, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("青石镇的雨", encoding="utf-8")
    args = [str(random_model), "--prompt-file", str(prompt), "--max-new-tokens", "8", "--seed", "3"]
    assert generate.main(args) == 0
    once = capsys.readouterr().out
    assert generate.main(args) == 0 and capsys.readouterr().out == once and once.startswith("青石镇的雨")
    assert generate.main([*args, "--num-samples", "2"]) == 0 and "--- sample 2 ---" in capsys.readouterr().out
    assert generate.main([*args, "--stream"]) == 0 and capsys.readouterr().out.startswith("青石镇的雨")
    assert generate.main([str(tmp_path), "--prompt", "x"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert generate.main([*args, "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens and --num-samples must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    defaults = generate.SamplingOptions()
    for flag, value in (("max-new-tokens", defaults.max_new_tokens), ("temperature", defaults.temperature),
                        ("top-k", defaults.top_k), ("repetition-penalty", defaults.repetition_penalty)):
        assert re.search(rf"--{flag} [A-Z_]+ [^-]*\(default: {value}\)", shown), (flag, shown)
    assert "default: None" not in shown


def test_a_continuation_longer_than_the_context_slides_it_without_a_seam(random_model):
    """150 new tokens from a 64-position model: generation slides the context (a model shown more positions than
    it has fails), a seed gives the same text, and the stream is the text, one piece per token."""
    model, vocab = generate.load(random_model, "cpu")
    options = generate.SamplingOptions(max_new_tokens=150, seed=5, temperature=1.0)
    pieces: list[str] = []
    streamer = generate.DraftStreamer(vocab, 1, lambda deltas: pieces.append(deltas[0]))
    text = generate.continue_text((model, vocab), "沈砚推开门", options, streamer=streamer)[0]
    assert len(pieces) == 150 and "".join(pieces) == text
    assert generate.continue_text((model, vocab), "沈砚推开门", options) == [text]
    assert generate.continue_text((model, vocab), "沈砚推开门", dataclasses.replace(options, seed=6)) != [text]


@pytest.mark.parametrize("encoding", ["gbk", "big5", "utf-16", "utf-8-sig"])
def test_a_prompt_file_is_decoded_as_prepare_decodes_novels(random_model, tmp_path, capsys, encoding):
    text = "沈砚推开门，雨还在下。" if encoding != "big5" else "沈硯推開門，雨還在下。"
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(text.encode(encoding))
    assert generate.main([str(random_model), "--prompt-file", str(prompt), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith(text)


def test_a_prompt_file_that_cannot_be_read_is_one_line(random_model, tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 50)
    for name, reason in (("empty.txt", "empty file"), ("missing.txt", "cannot read: No such file"),
                         ("binary.txt", "binary")):
        assert generate.main([str(random_model), "--prompt-file", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name}: {reason}" in err and "Traceback" not in err


def test_characters_outside_the_vocabulary_are_named_on_stderr(random_model, capsys):
    args = [str(random_model), "--prompt", "Hello world 😀 青石镇", "--max-new-tokens", "4"]
    assert generate.main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Hello world 😀 青石镇")
    warning = next(line for line in captured.err.splitlines() if "not in the model's vocabulary" in line)
    _, vocab = generate.load(random_model, "cpu")
    unknown = [ch for ch in dict.fromkeys("Hello world 😀") if ch not in vocab.index]
    assert "😀" in unknown and warning.endswith("[UNK]: " + " ".join(repr(c) if c == " " else c for c in unknown))
    assert f"{len(unknown)} character(s)" in warning and "青" not in warning
    assert generate.main([str(random_model), "--prompt", "青石镇", "--max-new-tokens", "4"]) == 0
    assert "vocabulary" not in capsys.readouterr().err


# --- evaluation -------------------------------------------------------------------------------------------------

def test_eval_numbers_match_a_direct_computation(random_model, sample_data):
    model, vocab = generate.load(random_model, "cpu", "fp32")
    val = ShardSet.load(Dataset.load(sample_data), "val")
    got = evaluate.perplexity(model, vocab, val, batch_size=3)
    samples = torch.from_numpy(np.stack([val.read(s, i) for s in range(len(val.counts))
                                         for i in range(int(val.counts[s]))]).astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=samples[:, :-1]).logits
        direct = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), samples[:, 1:].reshape(-1))
    assert got["val_loss"] == pytest.approx(direct.item(), rel=1e-5)
    assert got["val_ppl"] == pytest.approx(math.exp(direct.item()), rel=1e-5)
    targets = samples[:, 1:].reshape(-1).tolist()
    chars = sum(1 if vocab.tokens[t] == "[SEP]" else 0 if vocab.tokens[t] in ("[CLS]", "[MASK]", "[PAD]")
                else len(vocab.tokens[t]) for t in targets)
    assert got["val_bpc"] == pytest.approx(direct.item() * len(targets) / math.log(2) / chars, rel=1e-5)


def test_text_metrics():
    assert evaluate.rouge_l("青石镇的雨", "青石镇的雨") == 1.0
    assert evaluate.rouge_l("青石镇", "雨夜") == 0.0
    assert evaluate.rouge_l("青石ab镇", "青石镇") == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))
    assert evaluate.distinct(["哈哈哈哈"], 1) == 0.25 and evaluate.distinct(["哈哈哈哈"], 2) == 1 / 3
    assert evaluate.repetition_rate("abcdabcd") == pytest.approx(1 - 4 / 5)
    assert evaluate.repetition_rate("abcdefg") == 0.0


def test_eval_cli_is_seeded_and_writes_json_and_card(random_model, sample_data, tmp_path, capsys):
    from gpt_novel.cli import main

    out = tmp_path / "a.json"
    args = ["eval", str(random_model), "--data", str(sample_data), "--chapters", "2", "--prompt-chars", "20",
            "--gen-chars", "20", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "BLEU (zh)" in table and "bits per character" in table
    first = json.loads(out.read_text())
    assert main([*args, "--model-card"]) == 0
    assert json.loads(out.read_text()) == first  # same seed, same numbers
    c = first["continuation"]
    assert c["chapters"] >= 1 and 0 <= c["rouge_l"] <= 1 and 0 <= c["distinct_1"] <= 1
    assert "## Evaluation" in (random_model / "README.md").read_text()
    assert main(["eval", str(tmp_path), "--data", str(sample_data)]) == 2


def test_eval_says_when_it_continues_fewer_chapters_and_which_card_it_updated(random_model, sample_data, tmp_path,
                                                                             capsys):
    from gpt_novel.cli import main

    _, vocab = generate.load(random_model, "cpu")
    n = len(evaluate.held_out_chapters(vocab, ShardSet.load(Dataset.load(sample_data), "val")))
    out, card = tmp_path / "a.json", random_model / "README.md"
    args = ["eval", str(random_model), "--data", str(sample_data), "--prompt-chars", "20", "--gen-chars", "20",
            "--json", str(out)]
    ours = ("gpt-novel", "wrote ", "updated ")  # not transformers' progress bars
    assert main([*args, "--chapters", str(n)]) == 0
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith(ours)] == [f"wrote {out}"]
    assert main([*args, "--chapters", str(n + 7), "--model-card"]) == 0
    s = "s" if n != 1 else ""
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith(ours)] == [
        f"gpt-novel eval: warning: the val split has {n} chapter{s}; continuing {n} of the {n + 7} asked",
        f"wrote {out}", f"updated {card} (evaluation appended)"]
    c = json.loads(out.read_text())["continuation"]
    assert (c["chapters"], c["chapters_asked"]) == (n, n + 7)


def test_shortfall_names_the_chapters_too_short_to_continue():
    assert evaluate.shortfall(1, 1, 8, 128) == "the val split has 1 chapter; continuing 1 of the 8 asked"
    assert (evaluate.shortfall(3, 2, 8, 128)
            == "the val split has 3 chapters, 2 of them with at least 128 characters; continuing 2 of the 8 asked")


def test_a_prompt_with_a_lone_surrogate_is_one_line_before_the_model_loads(tmp_path, capsys):
    """A command-line byte that is not UTF-8 reaches Python as a lone surrogate (surrogateescape): refused here,
    not as a UnicodeEncodeError traceback when the prompt is printed."""
    assert generate.main([str(tmp_path), "--prompt", "话说\udcb0青石"], prog="gpt-novel sample") == 2
    assert capsys.readouterr().err == ("gpt-novel sample: error: --prompt holds a lone surrogate (\\udcb0), which is "
                                       "not text (a byte that is not UTF-8? --prompt-file reads any encoding)\n")
