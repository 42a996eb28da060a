"""`--init-from HF_DIR`: a Hugging Face GPT-2 folder to start training from, checked before any process group starts.

The folder is read as JSON (config.json) and safetensors only: a `pytorch_model.bin` is a pickle, which could run
code when loaded, so it is refused with a line saying how to convert it. Its architecture becomes the run's (a flag
that contradicts it is refused), its tokenizer must be the data's (same tokens, same ids: the data was prepared with
`--tokenizer HF_DIR`), and its context must cover the data's seq len.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt_novel.config import preset_values
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.vocab import Vocab, read_tokenizer
from gpt_novel.errors import UserError
from gpt_novel.model_folder import SHAPE, check_model_folder


@dataclass(frozen=True)
class InitFolder:
    path: Path
    config: dict  # its config.json

    @classmethod
    def load(cls, path: str | Path) -> InitFolder:
        """The folder's config, every file of it checked (`model_folder`) before anything loads it; one line
        otherwise."""
        path = Path(path).absolute()  # recorded with the run: where it started from, from any directory
        if not (path / "config.json").is_file():
            raise UserError(f"--init-from {path} is not a Hugging Face model folder (no config.json)")
        return cls(path, check_model_folder(path, f"--init-from {path}"))

    def tokens(self) -> dict[str, int] | None:
        """The folder's tokenizer as token → id (tokenizer.json, else vocab.txt), or None when it has none."""
        if (self.path / "tokenizer.json").is_file():
            return read_tokenizer(self.path / "tokenizer.json").get_vocab(with_added_tokens=True)
        if (self.path / "vocab.txt").is_file():
            lines = (self.path / "vocab.txt").read_text(encoding="utf-8").split("\n")
            return {t: i for i, t in enumerate(lines[:-1] if lines[-1] == "" else lines)}
        return None

    def shape(self, cfg) -> dict[str, int]:
        """The folder's architecture, which the run takes; a flag of `cfg` that says otherwise is refused, and
        named as the preset's when the preset set that value (the user may never have typed it)."""
        preset = preset_values(cfg.preset)
        for name in SHAPE:
            given, theirs, flag = getattr(cfg, name), self.config.get(name), f"--{name.replace('_', '-')}"
            if given not in (None, 0) and given != theirs:
                said, fix = ((f"the {cfg.preset} preset's {name} {given}", f"use --config finetune, which takes the "
                              f"folder's shape, or pass {flag} {theirs}") if preset.get(name) == given
                             else (f"{flag} {given}", f"leave {flag} out"))
                raise UserError(f"{said} contradicts --init-from {self.path}, whose {name} is {theirs}: {fix}")
        return {name: self.config.get(name) for name in SHAPE}

    def check_data(self, dataset: Dataset) -> None:
        """The data against the folder: the same vocabulary, seq len within its context."""
        if self.config["n_positions"] < dataset.seq_len:
            raise UserError(f"--init-from {self.path} has {self.config['n_positions']} positions, fewer than the "
                            f"data's seq len {dataset.seq_len}: prepare the data with --seq-len "
                            f"{self.config['n_positions']} or less")
        self._check_vocabulary(dataset)

    def _check_vocabulary(self, dataset: Dataset) -> None:
        ours, theirs = Vocab.load(dataset.tokenizer_dir).index, self.tokens()
        fix = f"prepare the data with --tokenizer {self.path}"
        if theirs is None:
            raise UserError(f"--init-from {self.path} has no tokenizer (tokenizer.json or vocab.txt) to check "
                            f"{dataset.root}'s vocabulary against: {fix}")
        if ours != theirs:
            differ = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])
            first = f"; first difference at id {differ[0][1]}" if differ else ""
            raise UserError(f"{dataset.root} was encoded with another vocabulary ({len(ours):,} tokens) than "
                            f"--init-from {self.path} ({len(theirs):,}{first}): {fix}")
        if self.config.get("vocab_size") != len(theirs):
            raise UserError(f"--init-from {self.path}: its config's vocab_size {self.config.get('vocab_size')} is not "
                            f"its tokenizer's {len(theirs):,} tokens")
