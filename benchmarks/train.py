"""Benchmark the trainer against a bare PyTorch loop on the same model and batches, one process. Prints JSON.

usage: python benchmarks/train.py [--data DATA_DIR] [--steps N] [--repeats R] [--deepspeed JSON]
                                  [--n-layer L --n-embd D --n-head H] [--micro-batch B] [--grad-accum A]

The trainer runs as `python -m gpt_novel.train` (DeepSpeed with bf16, the real data loader and logging) and its
tokens/s come from metrics.jsonl (step time only: evaluation and checkpoint saving excluded, first steps dropped as
warm-up). The bare loop trains the same GPT-2 on the same micro-batches, preloaded in memory, with torch's fused
AdamW and bf16 autocast, accumulating gradients the same way. The machine's speed drifts (shared cores, clocks), so
the runs alternate, bare first and last (bare, trainer, bare, trainer, ..., bare), and each trainer run is compared
with the mean of the bare runs on either side; the ratio reported is the median of those.

The default DeepSpeed config is ZeRO-1: in one process there is nothing to partition, and ZeRO-2's per-micro-batch
gradient bucketing costs a few percent on a CPU (`--deepspeed ds_configs/zero2.json` measures it). Targets
(issue 3): trainer / bare ≥ 0.95; time waiting for data < 1% of step time. `shard_check` is the cost of checking,
after every sample read, that its shard is still the file that was verified (issue 22): the reader's tokens/s with
and without it. Without --data, the shipped sample is prepared into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def _prepare(tmp: Path, seq_len: int) -> Path:
    out = tmp / "data"
    cmd = [sys.executable, "-m", "gpt_novel", "prepare", str(ROOT / "sample" / "corpus"), "--out", str(out),
           "--seq-len", str(seq_len), "--cache-dir", str(tmp / "cache")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def _trainer(args, data: Path, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "gpt_novel.train", "--config", "tiny", "--data", str(data), "--run-dir", str(run_dir),
           "--n-layer", str(args.n_layer), "--n-head", str(args.n_head), "--n-embd", str(args.n_embd),
           "--micro-batch-size", str(args.micro_batch), "--grad-accum", str(args.grad_accum),
           "--max-steps", str(args.steps),
           "--warmup-steps", "1", "--save-every", str(args.steps), "--eval-every", str(args.steps),
           "--sample-every", str(args.steps), "--num-workers", str(args.num_workers), "--progress", "false",
           "--dropout", "0", "--deepspeed", str(_deepspeed_path(args.deepspeed))]
    from gpt_novel.metrics import read_metrics

    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = read_metrics(run_dir)
    steps = [x for x in lines if "loss" in x][args.warmup:]
    seconds = [x["tokens_per_s"] for x in steps]
    step_time = [args.micro_batch * args.grad_accum * _seq_len(data) / t for t in seconds]
    waits = [x["data_wait_s"] for x in steps]
    return {"tokens_per_s": statistics.median(seconds), "data_wait_fraction": sum(waits) / sum(step_time)}


def _deepspeed_path(path: Path) -> Path:
    """As given from the current directory, else from the repository (the trainer runs there)."""
    return path.resolve() if path.exists() else ROOT / path


def _seq_len(data: Path) -> int:
    from gpt_novel.data.dataset import Dataset

    return Dataset.load(data).seq_len


def _bare(args, data: Path) -> dict:
    """The same model and micro-batches, nothing but forward, backward, clip and AdamW step."""
    from gpt_novel.config import TrainConfig
    from gpt_novel.data.dataset import Dataset
    from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream
    from gpt_novel.data.vocab import Vocab
    from gpt_novel.model import build_model, param_groups

    dataset = Dataset.load(data)
    cfg = TrainConfig(data=str(data), n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                      n_positions=dataset.seq_len, dropout=0.0)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, Vocab.load(dataset.tokenizer_dir))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    stream = TrainStream(ShardSet.load(dataset, "train"),
                         StreamSpec(cfg.seed, 0, 1, args.micro_batch, args.grad_accum))
    batches = [stream.batch(g) for g in range(args.steps * args.grad_accum)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        for batch in batches[step * args.grad_accum : (step + 1) * args.grad_accum]:
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            (loss / args.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    tokens = args.micro_batch * args.grad_accum * dataset.seq_len
    return {"tokens_per_s": statistics.median(tokens / t for t in times[args.warmup:])}


def _shard_check(data: Path, reads: int = 20_000) -> dict:
    """What verifying shards during the run costs: the data stream compares each open shard's identity (one fstat)
    with the verified one after every sample read, so a shard changed mid-run is hashed again, never trained on.
    Times `reads` sample reads as the trainer's data workers do them, and the fstat and compare alone."""
    import os

    from gpt_novel.data import stream as stream_
    from gpt_novel.data.dataset import Dataset

    shards = stream_.ShardSet.load(Dataset.load(data), "train")
    order = [(j, i) for j in range(len(shards.counts)) for i in range(int(shards.counts[j]))]
    picks = [order[k % len(order)] for k in range(reads)]
    for shard, index in picks[: len(order)]:
        shards.read(shard, index)  # verified and opened before timing
    start = time.perf_counter()
    for shard, index in picks:
        shards.read(shard, index)
    with_check = time.perf_counter() - start
    fds = shards._fds
    start = time.perf_counter()
    for shard, _ in picks:
        _ = stream_._identity(os.fstat(fds[shard])) != shards._verified[shard]
    check = time.perf_counter() - start
    tokens = reads * (shards.sample_len - 1)
    return {"reader_tokens_per_s": round(tokens / with_check), "reader_tokens_per_s_without_check":
            round(tokens / (with_check - check)), "check_us_per_sample": round(check / reads * 1e6, 2),
            "check_share_of_a_read": round(check / with_check, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="trainer runs, each between two bare runs")
    parser.add_argument("--deepspeed", type=Path, default=Path("ds_configs/zero1.json"))
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=1,
                        help="trainer's DataLoader workers (the tiny preset's 1)")
    parser.add_argument("--seq-len", type=int, default=256, help="when preparing the sample")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps <= args.warmup:
        parser.error("--repeats must be at least 1 and --steps more than --warmup")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or _prepare(tmp, args.seq_len)
        bare = [_bare(args, data)["tokens_per_s"]]
        trainer = []
        for i in range(args.repeats):
            trainer.append(_trainer(args, data, tmp / f"run{i}"))
            bare.append(_bare(args, data)["tokens_per_s"])
        seq_len = _seq_len(data)
        shard_check = _shard_check(data)
    ratios = [t["tokens_per_s"] / ((bare[i] + bare[i + 1]) / 2) for i, t in enumerate(trainer)]
    ratio = statistics.median(ratios)
    wait = statistics.mean(t["data_wait_fraction"] for t in trainer)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": {"n_layer": args.n_layer, "n_embd": args.n_embd, "seq_len": seq_len,
                  "micro_batch": args.micro_batch, "grad_accum": args.grad_accum},
        "deepspeed": str(args.deepspeed), "num_workers": args.num_workers,
        "trainer_tokens_per_s": [round(t["tokens_per_s"]) for t in trainer],
        "bare_tokens_per_s": [round(b) for b in bare],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(ratio, 3), "ratio_target": 0.95, "ratio_ok": ratio >= 0.95,
        "data_wait_fraction": round(wait, 5), "data_wait_target": 0.01, "data_wait_ok": wait < 0.01,
        "shard_check": shard_check,
    }, indent=2))


if __name__ == "__main__":
    main()
