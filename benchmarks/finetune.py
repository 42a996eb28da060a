"""Does fine-tuning pay off? Pretrain on 7 of the 8 shared novels, fine-tune on the 8th, and compare with training the
same model from scratch on the 8th with the same compute for that stage. Prints JSON (and writes it to --json).

usage: python benchmarks/finetune.py [--corpus ../shared/corpus] [--target rulinwaishi.txt] [--pretrain-steps N]
                                     [--steps N] [--nproc 2] [--work DIR] [--json PATH]

The two commands of the README's fine-tuning flow, for real: `prepare` the 7 novels (character vocabulary),
pretrain, `tools/consolidate.py`, then `prepare --tokenizer` that folder on the 8th novel and `train --config
finetune --init-from` it; against `train` from scratch on that same data (same architecture, batch and steps; the
pretraining learning rate); the fine-tuning runs twice, with the finetune preset's peak learning rate (1e-4) and with
the pretraining one (1e-3). The figure is the held-out bits per character on the 8th novel's validation chapters at
the end of each run (and the best along the way). Not part of CI: it takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from resume import report_of  # --work, --json and the printed report, as the resume benchmarks

ROOT = Path(__file__).resolve().parent.parent
SEQ = 128
MODEL = ["--n-layer", "4", "--n-head", "4", "--n-embd", "192", "--dropout", "0.1"]
BATCH = ["--micro-batch-size", "8", "--grad-accum", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--target", default="rulinwaishi.txt", help="the novel to fine-tune on (the smallest)")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=200, help="steps of the fine-tuning and the from-scratch run")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    report_of(run, parser.parse_args())


def run(args, work: Path) -> dict:
    novels = sorted(p for p in args.corpus.glob("*.txt"))
    target = args.corpus / args.target
    if target not in novels:
        raise SystemExit(f"{target} is not one of the corpus's novels")
    start = time.time()
    pre_data = _prepare(work / "pre-in", [p for p in novels if p != target], work / "pre-data", "--tokenizer", "char")
    pre_run = _train(work / "pre-run", pre_data, args, args.pretrain_steps, *MODEL, "--lr", "1e-3",
                     "--warmup-steps", str(min(50, args.pretrain_steps // 10)))
    hf = work / "pre-hf"
    _call([sys.executable, "tools/consolidate.py", str(pre_run), str(hf)])
    pretrain_seconds = time.time() - start
    data = _prepare(work / "target-in", [target], work / "target-data", "--tokenizer", str(hf), "--val-ratio", "0.1")
    warmup = str(min(20, args.steps // 10))
    runs = {"finetuned": ("--config", "finetune", "--init-from", str(hf), "--warmup-steps", warmup),
            "finetuned_pretraining_lr": ("--config", "finetune", "--init-from", str(hf), "--warmup-steps", warmup,
                                         "--lr", "1e-3", "--min-lr", "1e-4"),
            "from_scratch": (*MODEL, "--lr", "1e-3", "--warmup-steps", warmup)}
    results = {}
    for name, extra in runs.items():
        t0 = time.time()
        run_dir = _train(work / name, data, args, args.steps, *extra)
        results[name] = {**_heldout(run_dir), "seconds": round(time.time() - t0, 1)}
    return {"corpus": str(args.corpus), "target": args.target, "pretrain_novels": len(novels) - 1,
            "seq_len": SEQ, "model": "4 layers, 4 heads, 192 dims (character vocabulary of the 7 novels)",
            "global_batch": 16 * args.nproc, "pretrain_steps": args.pretrain_steps,
            "pretrain_seconds": round(pretrain_seconds, 1), "steps": args.steps, "nproc": args.nproc,
            **results, "bpc_gain": {name: round(results["from_scratch"]["val_bpc"] - results[name]["val_bpc"], 4)
                                    for name in ("finetuned", "finetuned_pretraining_lr")}}


def _prepare(inputs: Path, novels: list[Path], out: Path, *extra: str) -> Path:
    inputs.mkdir(parents=True, exist_ok=True)
    for novel in novels:
        link = inputs / novel.name
        if not link.exists():
            link.symlink_to(novel.resolve())
    _call([sys.executable, "-m", "gpt_novel", "prepare", str(inputs), "--out", str(out), "--seq-len", str(SEQ),
           "--force", *extra])
    return out


def _train(run_dir: Path, data: Path, args, steps: int, *extra: str) -> Path:
    every = str(max(steps // 4, 1))
    _call([sys.executable, "-m", "gpt_novel", "launch", sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(args.nproc), "-m", "gpt_novel.train", "--data", str(data), "--run-dir",
           str(run_dir), *BATCH, "--max-steps", str(steps), "--eval-every", every, "--save-every", every,
           "--eval-batches", "50", "--sample-every", str(steps), "--progress", "false", "--deepspeed",
           str(ROOT / "ds_configs" / "zero2.json"), *extra])
    return run_dir


def _heldout(run_dir: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from gpt_novel.metrics import read_metrics

    evals = [r for r in read_metrics(run_dir) if "val_bpc" in r]
    return {"val_bpc": round(evals[-1]["val_bpc"], 4), "best_val_bpc": round(min(r["val_bpc"] for r in evals), 4),
            "val_bpc_by_step": {r["step"]: round(r["val_bpc"], 4) for r in evals}}


def _call(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


if __name__ == "__main__":
    main()
