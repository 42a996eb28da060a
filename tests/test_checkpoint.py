"""Which checkpoints pruning keeps (the newest --keep-last and, whatever their age, the best by validation loss), and
the one-line refusals of a checkpoint that cannot be resumed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpt_novel import checkpoint, resume
from gpt_novel.errors import UserError


def _fake(root: Path, step: int, val_loss: float | None) -> Path:
    """A complete checkpoint directory as far as markers go (no files listed, so every size check passes)."""
    path = root / f"{checkpoint.PREFIX}{step:08d}"
    path.mkdir(parents=True)
    marker = {"step": step, "world_size": 1, "global_batch_size": 8, "val_loss": val_loss, "files": {}}
    (path / checkpoint.MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return path


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    for step, val in [(10, 5.0), (20, 4.0), (30, None), (40, 4.5), (50, 4.8)]:
        _fake(root, step, val)
    (root / ".tmp-step-00000060").mkdir()
    checkpoint.prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000020", "step-00000040", "step-00000050"]
    assert checkpoint.find_best(tmp_path).name == "step-00000020"
    assert checkpoint.val_loss(root / "step-00000050") == 4.8


def test_best_prefers_the_newest_of_equals_and_skips_damaged_ones(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    _fake(root, 10, 4.0)
    newest = _fake(root, 20, 4.0)
    assert checkpoint.find_best(tmp_path) == newest
    (newest / checkpoint.MARKER).write_text('{"step": 20, "val_loss": 3.0, "files": {"x": 5}}', encoding="utf-8")
    warnings = []
    assert checkpoint.find_best(tmp_path, warn=warnings.append).name == "step-00000010"
    assert warnings == ["warning: skipping checkpoint step-00000020: x is missing"]
    assert checkpoint.find_best(tmp_path / "nothing") is None


def test_a_failed_copy_names_the_checkpoint_file_it_could_not_write(tmp_path):
    """shutil's sendfile copy puts the source in `filename` and the destination in `filename2`: the line a user
    reads names the destination, on the full file system, not DeepSpeed's own file that was being copied."""
    import errno

    tmp = tmp_path / ".tmp-step-00000006"
    copy = OSError(errno.ENOSPC, "No space left on device", "/site-packages/deepspeed/zero_to_fp32.py", None,
                   str(tmp / "zero_to_fp32.py"))
    assert checkpoint._write_failure(tmp, copy).filename == str(tmp / "zero_to_fp32.py")
    elsewhere = OSError(errno.EIO, "Input/output error", "/somewhere/else")
    assert checkpoint._write_failure(tmp, elsewhere).filename == str(tmp)


def test_an_rng_state_that_is_not_json_is_one_line(tmp_path):
    (tmp_path / "rng-rank00000.json").write_bytes(b"\x80\x04not json")
    with pytest.raises(UserError, match=r"^checkpoint .*: rng-rank00000.json is unreadable \(UnicodeDecodeError: "):
        checkpoint.restore_rng(tmp_path, 0)
    (tmp_path / "rng-rank00000.json").write_text('{"python": [3, "x", null]}')
    with pytest.raises(UserError, match="rng-rank00000.json is unreadable"):
        checkpoint.restore_rng(tmp_path, 0)


@pytest.mark.parametrize(("theirs", "said"), [
    (1396, "another vocabulary (as many tokens, 1,396, but other tokens or ids than the checkpoint's)"),
    (8342, "another vocabulary (1,396 tokens, the checkpoint's 8,342)")])
def test_a_resume_with_another_vocabulary_says_how_it_differs(tmp_path, theirs, said):
    for name, token in (("ckpt/tokenizer", "甲"), ("data/tokenizer", "乙")):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "vocab.txt").write_text(token + "\n", encoding="utf-8")
    point = SimpleNamespace(path=tmp_path / "ckpt", model_config={"vocab_size": theirs})
    dataset = SimpleNamespace(tokenizer_dir=tmp_path / "data" / "tokenizer", vocab_size=1396)
    with pytest.raises(UserError, match="^cannot resume .* with " + re.escape(said) + r"\. Use the same data"):
        resume.check_compatible(point, SimpleNamespace(run_dir="run"), dataset)


def test_rng_state_round_trips_through_json(tmp_path):
    import random

    import torch

    (tmp_path / "rng-rank00000.json").write_text(json.dumps(checkpoint.rng_state()))
    expected = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    checkpoint.restore_rng(tmp_path, 0)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == expected
