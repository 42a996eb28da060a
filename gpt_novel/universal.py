"""A checkpoint of another world size or ZeRO stage → DeepSpeed's universal checkpoint, converted in a process of
its own.

DeepSpeed's `ds_to_universal` extracts the ZeRO fragments with a pool of forked workers. Forked from the trainer,
whose OpenMP threads (torch's intra-op pool), watchdog and store client are running, those workers deadlocked
(`gomp_team_barrier_wait_end`, 0% CPU, forever) whenever OMP_NUM_THREADS was unset, as it is under a plain
`python -m`, `torchrun --nproc_per_node 1` or one process per Slurm node; and they inherited the trainer's signal
handlers, so SIGTERM did not end them. So rank 0 starts `python -m gpt_novel.universal` instead: a fresh process
with one OpenMP thread, nothing running beside its main thread when the pool forks, the default signal handlers,
and a parent-death signal on it and on every process it forks, so nothing outlives the trainer. The trainer waits
for it in Python, where a stop request reaches it at once (`train._StopRequest`).

    python -m gpt_novel.universal CHECKPOINT/ds OUT_DIR ZERO_STAGE     # OUT_DIR/shapes.json: the model's shapes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpt_novel.checkpoint import DS_TAG
from gpt_novel.errors import UserError
from gpt_novel.lifetime import die_with_parent

PREFIX = ".universal-"
SHAPES = "shapes.json"
PARENT_ENV = "GPT_NOVEL_CONVERTER_PARENT"
EXTRACT_WORKERS, MERGE_WORKERS = 2, 1


def convert(checkpoint_dir: Path, zero_stage: int, shapes: dict[str, tuple[int, ...]]) -> Path:
    """Rank 0: convert `checkpoint_dir` into RUN_DIR/checkpoints/.universal-step-N/ (removed by `discard`) for
    loading at `zero_stage` (`shapes`: the model's parameter shapes); returns the folder DeepSpeed loads. A stop
    request or an error at any point kills the converter and removes its output."""
    out = checkpoint_dir.parent / f"{PREFIX}{checkpoint_dir.name}"
    try:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / SHAPES).write_text(json.dumps(shapes), encoding="utf-8")
        _run_converter(checkpoint_dir, out, zero_stage)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _run_converter(checkpoint_dir: Path, out: Path, zero_stage: int) -> None:
    """`python -m gpt_novel.universal`, waited for in Python (a signal's handler runs at once); killed on any
    exception, its output shown when it fails."""
    command = [sys.executable, "-m", "gpt_novel.universal", str(checkpoint_dir / DS_TAG), str(out), str(zero_stage)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", PARENT_ENV: str(os.getpid())}
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                time.sleep(0.1)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            log.seek(0)
            raise _failure(checkpoint_dir, proc.returncode, log.read())


def _failure(checkpoint_dir: Path, code: int, output: str) -> Exception:
    """The converter's own one line (exit status 2), or its whole output on stderr and a line naming it."""
    lines = [line for line in output.splitlines() if line.strip()]
    if code == 2 and lines:
        return UserError(lines[-1].removeprefix("error: "))
    sys.stderr.write(output)
    return RuntimeError(f"converting {checkpoint_dir} to a universal checkpoint failed (status {code})")


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# --- the converter process ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt_novel.universal", description=__doc__.splitlines()[0])
    parser.add_argument("input_folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("zero_stage", type=int)
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL, int(os.environ.get(PARENT_ENV, os.getppid())))  # the trainer, even if gone
    os.register_at_fork(after_in_child=die_with_parent)  # ds_to_universal's pool workers too
    try:
        shapes = {name: tuple(shape) for name, shape in
                  json.loads((args.out / SHAPES).read_text(encoding="utf-8")).items()}
        _ds_to_universal(args.input_folder, args.out / DS_TAG)
        bridge_stages(args.out / DS_TAG, args.zero_stage, shapes)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _ds_to_universal(input_folder: str, output_folder: Path) -> None:
    """DeepSpeed's own conversion, its progress chatter kept out of the trainer's output."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=input_folder, output_folder=str(output_folder),
                              num_extract_workers=EXTRACT_WORKERS, num_merge_workers=MERGE_WORKERS,
                              keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # the version key a Megatron client would save
    with contextlib.redirect_stdout(io.StringIO()):
        ds_to_universal.main(args)


def bridge_stages(folder: Path, zero_stage: int, shapes: dict[str, tuple[int, ...]]) -> None:
    """DeepSpeed's universal checkpoints come in two dialects: ds_to_universal writes a ZeRO-1/2 checkpoint's
    parameters as {param, cat_dim} with a step.pt each and a flat optimizer_state.pt, a ZeRO-3 checkpoint's as flat
    tensors with the Adam step inside optimizer_state.pt's optimizer_state_dict; and each stage's loader reads only
    its own dialect and model-states file name. Neither tool crosses between stage 3 and stages 1/2, so this adds
    what the loading stage looks for (the same tensors, reshaped or renamed; nothing recomputed)."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    zero = folder / "zero"
    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum]):  # tensors and these two only: no code runs
        optim = torch.load(_known(zero / "optimizer_state.pt"), weights_only=True)
    saved_stage3 = "optimizer_state_dict" in optim
    if (zero_stage == 3) == saved_stage3:
        return
    wanted = "zero_pp_rank_0_mp_rank_00_model_states.pt" if zero_stage == 3 else "mp_rank_00_model_states.pt"
    (folder / wanted).hardlink_to(_first(folder, "*model_states.pt"))  # a universal load reads only its metadata
    if zero_stage == 3:
        step = torch.load(_first(zero, "*/step.pt"), weights_only=True)
        optim["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": optim["param_groups"]}
    else:
        import deepspeed

        step = _layout(optim, "optimizer_state_dict", "state", 0, "step")
        optim.setdefault("ds_version", deepspeed.__version__)
        for name, shape in shapes.items():
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                flat = torch.load(_known(zero / name / f"{key}.pt"), weights_only=True)
                if not isinstance(flat, torch.Tensor) or flat.numel() != math.prod(shape):
                    raise _unknown_layout(f"zero/{name}/{key}.pt is not a flat tensor of {math.prod(shape)} values")
                torch.save({"param": flat.view(shape), "cat_dim": 0}, zero / name / f"{key}.pt")
            torch.save(step, zero / name / "step.pt")
    torch.save(optim, zero / "optimizer_state.pt")


def _known(path: Path) -> Path:
    if not path.is_file():
        raise _unknown_layout(f"it wrote no {path.parent.name}/{path.name}")
    return path


def _first(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise _unknown_layout(f"it wrote no {pattern} in {folder.name}/")
    return found[0]


def _layout(tree: dict, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            raise _unknown_layout(f"optimizer_state.pt has no {'/'.join(map(str, keys))}")
        tree = tree[key]
    return tree


def _unknown_layout(what: str) -> UserError:
    import deepspeed

    from gpt_novel.versions import supported

    return UserError(f"DeepSpeed {deepspeed.__version__}'s universal checkpoint is not laid out as gpt-novel knows "
                     f"({what}): use a DeepSpeed in the tested range {supported('deepspeed')}")


if __name__ == "__main__":
    sys.exit(main())
