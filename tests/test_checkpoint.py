"""Which checkpoints pruning keeps: the newest --keep-last and, whatever their age, the best by validation loss."""

from __future__ import annotations

import json
from pathlib import Path

from gpt_novel import checkpoint


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
    checkpoint._prune(root, keep_last=2)
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
