"""The `train` and `prepare` command lines are generated from their config dataclasses: every field is a flag with
its help and default, presets are listed and named in errors, and bad values are one line with exit status 2."""

from __future__ import annotations

import dataclasses
import re

import pytest

from gpt_novel.cli import main
from gpt_novel.config import PrepareConfig, TrainConfig, presets, train_config


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)  # unwrap the help's line breaks


@pytest.mark.parametrize(("command", "cls"), [("train", TrainConfig), ("prepare", PrepareConfig)])
def test_help_has_every_field_with_its_help_and_default(capsys, command, cls):
    text = _help(capsys, command)
    for f in dataclasses.fields(cls):
        if f.name == "inputs":
            assert "[INPUT ...]" in text
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = str(f.default).replace("None", "null")
        described = re.search(re.escape(flag) + r" \S+ (.*?)\(type: [^)]*default: " + re.escape(shown) + r"\)", text)
        assert described and len(described.group(1).strip()) > 5, f"{flag}: no help or default {shown!r}"


def test_train_help_lists_the_presets_and_shows_a_presets_values(capsys):
    text = _help(capsys, "train")
    for name in presets():
        assert f" {name}: " in text
    assert "tiny: a 2-layer GPT-2" in text
    assert "--resume RESUME auto: the newest complete checkpoint" in text
    assert re.search(r"--lr LR peak learning rate \(after warmup\) \(type: float, default: 0\.003\)",
                     _help(capsys, "train", "--config", "tiny"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--config", "tinyy"],
      "--config tinyy: no such file or preset (presets: finetune, large, medium, small, tiny, xl)"),
     (["--config", "tiny", "--n-layer", "two"], "--n-layer: expected int, not two"),
     (["--compile", "maybe"], "--compile: expected bool, not maybe"),
     (["--bogus", "1"], "unrecognized arguments: --bogus 1")],
)
def test_bad_train_options_are_one_line(capsys, argv, message):
    assert main(["train", *argv, "--data", "d", "--run-dir", "r"]) == 2
    err = capsys.readouterr().err
    assert err == f"gpt-novel train: error: {message}\n"


def test_flags_win_over_the_preset_wherever_they_stand(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("n-layer: 5\nlr: 1e-4\ncompile: true\n", encoding="utf-8")
    cfg = train_config(["--n-layer", "3", "--config=tiny", "--config", str(config), "--progress"])
    assert (cfg.n_layer, cfg.lr, cfg.compile, cfg.progress, cfg.warmup_steps) == (3, 1e-4, True, True, 20)
    assert isinstance(cfg.lr, float)  # YAML reads 1e-4 as a string: the field's type decides


def test_bad_prepare_choice_is_one_line(capsys, tmp_path):
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "d"), "--tokenizer", "bpe"]) == 2
    assert capsys.readouterr().err == ("gpt-novel prepare: error: --tokenizer must be word, char or a Hugging Face "
                                       "tokenizer folder; bpe is none of them\n")
