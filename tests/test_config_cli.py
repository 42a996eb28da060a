"""The `train` and `prepare` command lines are generated from their config dataclasses: every field is a flag with
its help and default, presets are listed and named in errors, and bad values are one line with exit status 2."""

from __future__ import annotations

import dataclasses
import re

import pytest

from gpt_novel.cli import main
from gpt_novel.config import PrepareConfig, TrainConfig, presets, train_config
from gpt_novel.errors import UserError


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
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "d"), "--tokenizer", "wordpiece"]) == 2
    assert capsys.readouterr().err == ("gpt-novel prepare: error: --tokenizer must be bpe, word, char or a Hugging "
                                       "Face tokenizer folder; wordpiece is none of them\n")


def _laughs(levels: int) -> str:
    """A "billion laughs": each anchor a list of 9 aliases to the one before, 9**levels values once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_yaml_bomb_is_refused_at_once_in_one_line(tmp_path, capsys, command):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(9), encoding="utf-8")
    rest = ["--data", "d", "--run-dir", "r"] if command == "train" else [str(tmp_path), "--out", str(tmp_path / "d")]
    assert main([command, "--config", str(bomb), *rest]) == 2
    assert capsys.readouterr().err == (f"gpt-novel {command}: error: --config {bomb}: expands to more than 100,000 "
                                       "values (YAML aliases nested too deeply?)\n")


def test_yaml_read_from_a_flag_or_a_recursive_alias_is_bounded_too(tmp_path):
    bomb = "{" + _laughs(9).replace("\n", ", ").rstrip(", ") + "}"
    for argv in (["--n-layer", bomb], [f"--n-layer={bomb}"]):
        with pytest.raises(UserError, match=r"^--n-layer: expands to more than 100,000 values"):
            train_config(argv)
    looped = tmp_path / "loop.yaml"
    looped.write_text("n_layer: &a [*a]\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"loop\.yaml: expands to more than 100,000 values"):
        train_config(["--config", str(looped)])


def test_a_config_too_big_or_not_utf8_is_one_line_and_a_harmless_alias_is_kept(tmp_path):
    big, gbk, shared = tmp_path / "big.yaml", tmp_path / "gbk.yaml", tmp_path / "shared.yaml"
    big.write_text("#" * (2**20 + 1), encoding="utf-8")
    gbk.write_bytes("preset: 青石\n".encode("gbk"))
    shared.write_text("lr: &lr 1.0e-4\nmin_lr: *lr\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"big\.yaml: 1,048,577 bytes; a config file is at most 1,048,576 \(is it"):
        train_config(["--config", str(big)])
    with pytest.raises(UserError, match=r"gbk\.yaml: not UTF-8 text \(byte 0xc7 at offset 8\)"):
        train_config(["--config", str(gbk)])
    cfg = train_config(["--config", str(shared)])
    assert cfg.lr == cfg.min_lr == 1e-4


def test_a_huge_bad_value_is_cut_in_its_line(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(f"n_layer: [{', '.join(['1'] * 50_000)}]\n", encoding="utf-8")
    with pytest.raises(UserError) as refused:
        train_config(["--config", str(config)])
    assert str(refused.value).endswith("…") and len(str(refused.value)) < 400
