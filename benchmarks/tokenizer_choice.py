"""Which tokenizer: characters, thulac words or byte-pair merges, measured on held-out text. Prints JSON.

(Not named tokenizers.py: a script's directory comes first on sys.path, so that name would shadow Hugging Face's
`tokenizers` for every script in benchmarks/, which transformers imports.)

usage: python benchmarks/tokenizer_choice.py [--corpus DIR] [--held-out FILE] [--tokenizers char,word,bpe-12000,…]
                                       [--budgets 150,600] [--work DIR] [--json PATH] [--smoke]

The corpus (default ../shared/corpus) is split: every novel but one is prepared and trained on, the held-out one
(default sanguoyanyi.txt, 三国演义) is only ever encoded and scored. For each tokenizer:

- prepare CPU-seconds per MB of input (a cold `prepare --workers 1 --no-cache` of the training novels, the
  process's own CPU time) and characters per token of the held-out novel;
- held-out bits per character of the same model shape (4 layers, 256 dims, 4 heads, seq len 256, 16 × 256 tokens
  a step, one process) trained at equal compute, for each budget: a budget is a number of FLOPs, given as the
  steps the char model makes with it (`--budgets 150,600`: 150 and 600 char-model steps), so each tokenizer
  gets budget ÷ its own FLOPs per step steps (the output layer grows with the vocabulary), whatever else runs on
  the machine. Each run's schedule is planned for its steps and completes (warmup a tenth of them).

Bits per character count each token's characters as the tokenizer decodes it (`Vocab.char_lengths`), so they
compare across tokenizers. The verdict follows issue 25's rule: the lowest held-out bits per character wins; within
0.05 of it, the fastest to prepare. `--smoke` runs tiny budgets on a tiny model (the test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "micro_batch_size": 16}
SMOKE_SHAPE = {"n_layer": 1, "n_embd": 32, "n_head": 2, "micro_batch_size": 2}
SEQ_LEN = 256
TOKENIZERS = {"char": ["--tokenizer", "char"],
              "word": ["--tokenizer", "word", "--vocab-size", "50000"],
              **{f"bpe-{n}": ["--tokenizer", "bpe", "--vocab-size", str(n)] for n in (12000, 16000, 32000)}}
WITHIN = 0.05  # bits per character: closer than this is a tie, which the faster prepare wins


def _run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one process and its children; exits with the log on failure."""
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text(errors='replace')[-3000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def _prepare(name: str, inputs: Path, out: Path, work: Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "gpt_novel", "prepare", str(inputs), "--out", str(out), "--seq-len", str(SEQ_LEN),
           "--workers", "1", "--no-cache", "--force", *extra]
    return _run(cmd, work / f"prepare-{name}-{out.name}.log")[1]


def _flops_per_step(data: Path, shape: dict) -> float:
    """Training FLOPs of one optimizer step of this shape on this data's vocabulary (metrics.flops_per_token)."""
    from gpt_novel.data.dataset import Dataset
    from gpt_novel.metrics import flops_per_token

    vocab = Dataset.load(data).manifest.tokenizer.vocab_size
    d, n = shape["n_embd"], shape["n_layer"]
    params = vocab * d + SEQ_LEN * d + n * 12 * d * d  # tied embeddings, blocks (norms and biases aside)
    return flops_per_token(params, n, d, SEQ_LEN) * SEQ_LEN * shape["micro_batch_size"]


def _train(data: Path, run: Path, steps: int, shape: dict, log: Path) -> float:
    """Seconds of training (metrics.jsonl's elapsed at the last step: start-up aside) of a one-process run of
    `steps` steps, its schedule complete; evaluation only at the end. A run of `--work` that already finished these
    steps is kept (the benchmark takes an hour: a rerun goes on where it stopped)."""
    done = run / "DONE"
    if not (done.is_file() and done.read_text().strip() == str(steps)):
        shutil.rmtree(run, ignore_errors=True)
        _run(_train_cmd(data, run, steps, shape), log)
    last = (run / "metrics.jsonl").read_text(encoding="utf-8").strip().splitlines()
    return max(json.loads(line).get("elapsed", 0.0) for line in last)


def _train_cmd(data: Path, run: Path, steps: int, shape: dict) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]
    return [sys.executable, "-m", "gpt_novel.train", "--config", "tiny", *flags, "--data", str(data),
           "--run-dir", str(run), "--data-seq-len", str(SEQ_LEN), "--grad-accum", "1", "--max-steps", str(steps),
           "--warmup-steps", str(max(1, steps // 10)),
           "--eval-every", str(steps), "--save-every", str(steps), "--sample-every", str(10 * steps),
           "--eval-batches", "1", "--overfit-evals", "0", "--tensorboard", "false", "--progress", "false",
           "--num-workers", "1"]


def _held_out_bpc(run: Path, held: Path) -> tuple[float, float]:
    """Bits per character and characters per token of the held-out novel (both splits of its data directory,
    encoded with the run's tokenizer) under the run's final weights."""
    import torch

    from gpt_novel.consolidate import consolidate
    from gpt_novel.data.dataset import Dataset
    from gpt_novel.data.stream import ShardSet, val_batches
    from gpt_novel.generate import load
    from gpt_novel.model import heldout_metrics, heldout_sums

    folder = run.parent / f"{run.name}-hf"
    consolidate(str(run), str(folder), None, "fp32", False)
    model, vocab = load(str(folder), "cpu", "fp32")
    dataset, sums = Dataset.load(held), [0.0, 0.0, 0.0]
    with torch.no_grad():
        for split in ("train", "val"):
            if dataset.split(split):
                part = heldout_sums(model, val_batches(ShardSet.load(dataset, split), 0, 1, 8, 10**9),
                                    vocab.char_lengths(), model.device)
                sums = [a + b for a, b in zip(sums, part, strict=True)]
    return heldout_metrics(*sums)["val_bpc"], sums[2] / sums[1]


def measure(name: str, args, train_dir: Path, held_dir: Path, char_flops: float | None) -> dict:
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    data, held = work / "data", work / "held"
    cpu = _prepare(name, train_dir, data, work, *TOKENIZERS[name])
    _prepare(name, held_dir, held, work, "--tokenizer", str(data / "tokenizer"), "--val-ratio", "0")
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    per_step = _flops_per_step(data, shape)
    mb = sum(p.stat().st_size for p in train_dir.iterdir()) / 1e6
    result = {"vocab_size": json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"],
              "prepare_cpu_s_per_mb": round(cpu / mb, 2), "flops_per_step": per_step, "budgets": {}}
    for budget in args.budgets:
        steps = max(2, round(budget * (char_flops or per_step) / per_step))
        seconds = _train(data, work / f"run-{budget}", steps, shape, work / f"train-{budget}.log")
        bpc, chars_per_token = _held_out_bpc(work / f"run-{budget}", held)
        result["chars_per_token"] = round(chars_per_token, 3)
        result["budgets"][str(budget)] = {"steps": steps, "train_seconds": round(seconds, 1),
                                          "held_out_bpc": round(bpc, 3)}
    return result


def verdict(results: dict, budget: str) -> str:
    """The lowest held-out bits per character; among those within WITHIN of it, the fastest to prepare."""
    best = min(r["budgets"][budget]["held_out_bpc"] for r in results.values())
    close = [n for n, r in results.items() if r["budgets"][budget]["held_out_bpc"] <= best + WITHIN]
    return min(close, key=lambda n: results[n]["prepare_cpu_s_per_mb"])


def split_corpus(corpus: Path, held_out: str, work: Path) -> tuple[Path, Path]:
    """Links to the training novels and to the held-out one, in directories of their own."""
    train, held = work / "novels-train", work / "novels-held"
    for d in (train, held):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    novels = sorted(p for p in corpus.glob("*.txt"))
    if held_out not in {p.name for p in novels}:
        sys.exit(f"--held-out {held_out} is not one of {', '.join(p.name for p in novels)}")
    for p in novels:
        (held if p.name == held_out else train).joinpath(p.name).symlink_to(p.resolve())
    return train, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--held-out", default="sanguoyanyi.txt")
    parser.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    parser.add_argument("--budgets", default="150,600", help="FLOPs as the char model's steps, comma-separated")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-tokenizers")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a tiny model and the budgets as given (a test)")
    args = parser.parse_args(argv)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    names = args.tokenizers.split(",")
    unknown = [n for n in names if n not in TOKENIZERS]
    if unknown or "char" not in names:
        sys.exit(f"--tokenizers: choose from {', '.join(TOKENIZERS)}, char included (it sets the budgets' FLOPs)")
    start = time.perf_counter()
    train_dir, held_dir = split_corpus(args.corpus, args.held_out, args.work)
    results = {"char": measure("char", args, train_dir, held_dir, None)}
    for name in names:
        if name != "char":
            results[name] = measure(name, args, train_dir, held_dir, results["char"]["flops_per_step"])
    report = {"corpus": str(args.corpus), "held_out": args.held_out, "shape": SMOKE_SHAPE if args.smoke else SHAPE,
              "seq_len": SEQ_LEN, "tokenizers": results,
              "winner": {str(b): verdict(results, str(b)) for b in args.budgets},
              "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
