"""What an elastic resume costs and changes, on the `small` preset (GPT-2 124M shape). Prints JSON (and writes it to
--json).

usage: python benchmarks/resume.py [--corpus sample/corpus] [--steps 2] [--preset small] [--layout NAME ...]
                                  [--work DIR] [--json PATH]

Trains `small` (or --preset) for 2 × --steps steps on 2 processes with ZeRO-2 (the reference, with a checkpoint at
--steps), then resumes that checkpoint, as if the run had been killed right after it, on 1 process (ZeRO-2) and on 2
processes with ZeRO-3: each resume converts the checkpoint with DeepSpeed's ds_to_universal and loads it (the
seconds the trainer reports for both, and the checkpoint's size). The largest difference in loss from the reference
over the resumed steps is reported for each layout. No dropout, so the difference is the reduction order's alone.
Not part of CI: a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEQ = 128
COMMON = ["--micro-batch-size", "1", "--global-batch-size", "4", "--dropout", "0",
          "--warmup-steps", "1", "--eval-every", "1000", "--sample-every", "1000", "--num-workers", "1",
          "--progress", "false"]
LAYOUTS = {"1 process, ZeRO-2": (1, 2), "2 processes, ZeRO-3": (2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "sample" / "corpus")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--preset", default="small", help="the model (tiny: the plumbing alone, in seconds)")
    parser.add_argument("--layout", dest="layouts", action="append", choices=list(LAYOUTS),
                        help="resume in this layout only (repeatable; default: each of them)")
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    report_of(run, parser.parse_args())


def report_of(run, args) -> None:
    """`run(args, work)` in `--work` or a temporary directory; its report printed as JSON, and written to `--json`
    when given (the benchmarks that share these two options)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args, args.work or Path(tmp))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


def run(args, work: Path) -> dict:
    data = work / "data"
    _call([sys.executable, "-m", "gpt_novel", "prepare", str(args.corpus), "--out", str(data), "--seq-len", str(SEQ),
           "--force"])
    total = 2 * args.steps
    train = ["--config", args.preset, "--max-steps", str(total)]
    reference = _train(work / "reference", data, 2, 2, *train, "--save-every", str(args.steps))
    ckpt = reference / "checkpoints" / f"step-{args.steps:08d}"
    report = {"preset": args.preset, "seq_len": SEQ, "global_batch": 4,
              "resumed_at_step": args.steps,
              "checkpoint_mb": round(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20, 1)}
    for name in args.layouts or LAYOUTS:
        nproc, stage = LAYOUTS[name]
        run_dir = cut(reference, work / f"resumed-{nproc}-{stage}", args.steps)
        output = _call(_command(run_dir, data, nproc, stage, *train))
        seconds = float(re.search(r"universal checkpoint and loaded in ([\d.]+) s", output).group(1))
        want, got = _losses(reference), _losses(run_dir)
        report[name] = {"convert_and_load_seconds": seconds,
                        "max_loss_difference": max(abs(got[s] - want[s]) for s in range(args.steps + 1, total + 1)),
                        "first_step_loss_difference": abs(got[args.steps + 1] - want[args.steps + 1])}
    return report


def cut(reference: Path, to: Path, step: int) -> Path:
    """The reference run as it was right after its checkpoint of `step` (as if killed then)."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(reference, to, ignore=shutil.ignore_patterns("DONE", ".lock"))
    for ckpt in (to / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > step:
            shutil.rmtree(ckpt)
    lines = (to / "metrics.jsonl").read_text().splitlines()
    (to / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= step))
    return to


def _command(run_dir: Path, data: Path, nproc: int, stage: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "gpt_novel.train", *COMMON, "--data", str(data), "--run-dir",
            str(run_dir), "--deepspeed", str(ROOT / "ds_configs" / f"zero{stage}.json"), *extra]


def _train(run_dir: Path, data: Path, nproc: int, stage: int, *extra: str) -> Path:
    _call(_command(run_dir, data, nproc, stage, *extra))
    return run_dir


def _losses(run_dir: Path) -> dict[int, float]:
    sys.path.insert(0, str(ROOT))
    from gpt_novel.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def _call(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr


if __name__ == "__main__":
    main()
