"""Is a loss rise after an elastic resume the resume's doing? Prints JSON (and writes it to --json).

usage: python benchmarks/resume_loss.py [--corpus DIR] [--tokenizer char] [--seq-len 256] [--cut 100] [--until 130]
                                       [--planned 200] [--work DIR] [--json PATH]

A 2-process ZeRO-2 run of the `tiny` preset (dropout as the preset has it) trains --planned steps, saving at --cut.
From that checkpoint, two continuations train to --until (--max-steps changed, so the decay is re-planned the same
way for both): on the same 2 processes (an exact resume: what the run would have done uninterrupted), and on 1
process, the elastic resume a 2-node Slurm job continued on 1 node makes. Both train on the same samples in the same
order. For each: its losses, the largest rise from one step to the next (step, from, to) and the learning rate
there; and the largest difference between the two. By default a character vocabulary, seq len 256 and the shared
corpus when it is there. Not part of CI: a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resume import cut, report_of  # a run as it was at one of its checkpoints; the report's printing
from startup import call  # a command from a user's shell (no thread settings)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "corpus"
OPTIONS = ["--config", "tiny", "--num-workers", "1", "--eval-every", "10000", "--sample-every", "10000",
           "--progress", "false", "--deepspeed", "zero2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED if SHARED.is_dir() else ROOT / "sample" / "corpus")
    parser.add_argument("--tokenizer", default="char", help="bpe, word, char or a tokenizer folder (prepare's option)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--cut", type=int, default=100)
    parser.add_argument("--until", type=int, default=130)
    parser.add_argument("--planned", type=int, default=200)
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    report_of(run, parser.parse_args())


def run(args, work: Path) -> dict:
    data, first = work / "data", work / "first"
    call([sys.executable, "-m", "gpt_novel", "prepare", str(args.corpus), "--out", str(data), "--tokenizer",
           args.tokenizer, "--seq-len", str(args.seq_len), "--force"])
    call(_command(first, data, 2, args.planned, "--save-every", str(args.cut)))
    report = {"corpus": str(args.corpus), "tokenizer": args.tokenizer, "seq_len": args.seq_len, "cut": args.cut,
              "until": args.until, "planned": args.planned}
    losses = {}
    for name, nproc in (("same 2 processes", 2), ("1 process (elastic)", 1)):
        run_dir = cut(first, work / f"continued-{nproc}", args.cut)
        call(_command(run_dir, data, nproc, args.until))
        records = {r["step"]: r for r in _metrics(run_dir) if "loss" in r and r["step"] > args.cut}
        losses[name] = {step: r["loss"] for step, r in records.items()}
        step = max(range(args.cut + 2, args.until + 1), key=lambda s: records[s]["loss"] - records[s - 1]["loss"])
        report[name] = {"largest_rise": {"step": step, "from": round(records[step - 1]["loss"], 4),
                                         "to": round(records[step]["loss"], 4), "lr": records[step]["lr"]},
                        "loss_at": {s: round(records[s]["loss"], 4) for s in (args.cut + 1, args.until)}}
    a, b = losses.values()
    report["max_loss_difference"] = round(max(abs(a[s] - b[s]) for s in a), 4)
    return report


def _command(run_dir: Path, data: Path, nproc: int, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "gpt_novel.train", *OPTIONS, "--max-steps", str(steps), "--data", str(data), "--run-dir",
            str(run_dir), *extra]


def _metrics(run_dir: Path) -> list[dict]:
    from gpt_novel.metrics import read_metrics

    return read_metrics(run_dir)


if __name__ == "__main__":
    main()
