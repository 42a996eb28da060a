"""The GPU check: train, resume and sample on one device, the trainer against a bare PyTorch loop. Prints JSON and
writes it to --json (default gpu-check.json).

usage: python benchmarks/gpu.py [--data DATA_DIR] [--steps N] [--json PATH] [--work DIR] [--smoke]  (make gpu-check)

On a CUDA GPU it trains the `small` preset (GPT-2 124M) at the data's seq len (prepare it with `--seq-len 1024
--tokenizer char`: nothing here needs thulac), bf16, ZeRO-2, one process (NCCL), for --steps steps, and the same
model and batches in a bare loop (fused AdamW, bf16 autocast, SDPA); reports tokens/s, MFU against the GPU's bf16
dense peak, peak memory and data wait for both, and their ratio; which SDPA kernels ran, eager and compiled, and the
trainer's tokens/s with --compile true; a run killed after its checkpoint and resumed, bitwise or not, with and
without --deterministic true; then consolidates and times tools/sample.py's path against a bare `generate` at batch
1 and 8. Without a GPU the same code runs on the CPU with a tiny model (tests/test_benchmarks.py runs it so, so that
the check cannot rot, with --smoke: the legs that repeat another's code path are left out, see `_SMOKE`); its
figures mean nothing then. Targets (issue 14): trainer ≥ 0.95 × bare tokens/s, MFU ≥ 40%
for `small` on H100/H200, bitwise resume with --deterministic, sample.py ≥ 0.9 × bare generate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GPU = torch.cuda.is_available()
MODEL = ["--config", "small"] if GPU else ["--config", "tiny", "--n-layer", "1", "--n-head", "2", "--n-embd", "32"]
BATCH = {"micro_batch_size": 16 if GPU else 2, "grad_accum": 2}
# --smoke leaves out the legs whose code path another leg walks: the compiled trainer run (the trainer with one more
# flag; tests/test_train.py trains with --compile and with --deterministic), the compiled bare loop's kernels (the
# eager loop's, through torch.compile), the --deterministic resume (the default one's, plus a reference run) and
# sampling at batch 8. What is left walks every function here in less than half the time.
_SMOKE = "left out by --smoke"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a prepared data directory (default: the sample, char vocabulary)")
    parser.add_argument("--steps", type=int, default=40 if GPU else 6)
    parser.add_argument("--json", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--smoke", action="store_true", help="the plumbing alone, for the tests (see `_SMOKE`)")
    args = parser.parse_args()
    if args.steps < 4 or args.steps % 2:
        parser.error("--steps must be even and at least 4 (the resume check stops at half)")
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.data, args.steps, args.work or Path(tmp), args.smoke)
    text = json.dumps(report, indent=1)
    print(text)
    args.json.write_text(text + "\n", encoding="utf-8")


def run(data: Path | None, steps: int, work: Path, smoke: bool = False) -> dict:
    started = time.time()
    data = data or _prepare(work / "data")
    report = {"device": torch.cuda.get_device_name() if GPU else "cpu", "torch": torch.__version__,
              "model": " ".join(MODEL), "seq_len": _dataset(data).seq_len, **BATCH, "steps": steps, "smoke": smoke}
    trainer = _train(data, work / "trainer", steps)
    bare = _bare(data, steps)
    report["trainer"], report["bare"] = trainer, bare
    report["ratio"] = round(trainer["tokens_per_s"] / bare["tokens_per_s"], 3)
    report["sdpa_kernels"] = bare.pop("sdpa_kernels")
    report["compiled"] = {"trainer": _SMOKE if smoke else _train(data, work / "compiled", steps, "--compile", "true"),
                          "sdpa_kernels": _SMOKE if smoke else _bare(data, 2, compiled=True)["sdpa_kernels"]}
    report["resume"] = {"deterministic": _SMOKE if smoke else _resume(data, work / "det", steps, "--deterministic",
                                                                      "true"),
                        "default": _resume(data, work / "default", steps, reference=work / "trainer")}
    hf = work / "hf"
    _call([sys.executable, "tools/consolidate.py", str(work / "trainer"), str(hf)])
    report["sample"] = {f"batch_{n}": _SMOKE if smoke and n > 1 else _sample(hf, n) for n in (1, 8)}
    report["seconds"] = round(time.time() - started, 1)
    report["thulac_imported"] = "thulac" in sys.modules
    return report


def _prepare(out: Path) -> Path:
    _call([sys.executable, "-m", "gpt_novel", "prepare", str(ROOT / "sample" / "corpus"), "--out", str(out),
           "--tokenizer", "char", "--seq-len", "1024" if GPU else "32", "--force"])
    return out


def _dataset(data: Path):
    from gpt_novel.data.dataset import Dataset

    return Dataset.load(data)


def _command(data: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "gpt_novel.train", *MODEL, "--data", str(data), "--run-dir", str(run_dir),
            "--micro-batch-size", str(BATCH["micro_batch_size"]), "--grad-accum", str(BATCH["grad_accum"]),
            "--max-steps", str(steps), "--warmup-steps", "2", "--save-every", str(steps // 2), "--eval-every",
            str(10 * steps), "--sample-every", str(10 * steps), "--progress", "false", "--dropout", "0",
            "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"), *extra]


def _train(data: Path, run_dir: Path, steps: int, *extra: str) -> dict:
    """The trainer's figures from its metrics.jsonl, the first steps (warm-up, compilation) left out."""
    from gpt_novel.metrics import read_metrics

    _call(_command(data, run_dir, steps, *extra))
    records = [r for r in read_metrics(run_dir) if "loss" in r][steps // 2:]
    step_seconds = [BATCH["micro_batch_size"] * BATCH["grad_accum"] * _dataset(data).seq_len / r["tokens_per_s"]
                    for r in records]
    mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
    return {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in records)),
            "mfu": round(statistics.median(mfus), 4) if mfus else None,
            "peak_memory_gb": max((r["memory_gb"] for r in records if r.get("memory_gb")), default=None),
            "data_wait_fraction": round(sum(r["data_wait_s"] for r in records) / sum(step_seconds), 5)}


def _bare(data: Path, steps: int, compiled: bool = False) -> dict:
    """The same model (the preset's shape) and micro-batches, preloaded on the device: forward under bf16 autocast
    with SDPA, backward, clip, fused AdamW; nothing else."""
    from gpt_novel import metrics, plan
    from gpt_novel.config import TrainConfig, train_config
    from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream
    from gpt_novel.data.vocab import Vocab
    from gpt_novel.model import build_model, count_params, param_groups

    planned = plan.start(train_config([*MODEL, "--data", str(data), "--run-dir", "unused", "--dropout", "0"]), 1)
    cfg: TrainConfig = planned.config
    dataset = planned.dataset
    device = "cuda" if GPU else "cpu"
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, Vocab.load(dataset.tokenizer_dir)).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=True)
    forward = torch.compile(model) if compiled else model
    accum = BATCH["grad_accum"]
    stream = TrainStream(ShardSet.load(dataset, "train"), StreamSpec(cfg.seed, 0, 1, BATCH["micro_batch_size"], accum))
    batches = [stream.batch(g).to(device) for g in range(steps * accum)]
    if GPU:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps):
        _sync()
        start = time.perf_counter()
        for batch in batches[step * accum:(step + 1) * accum]:
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = forward(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - start)
    tokens_per_s = BATCH["micro_batch_size"] * accum * dataset.seq_len / statistics.median(times[steps // 2:])
    peak = metrics.peak_flops(torch.cuda.get_device_name() if GPU else None)
    flops = metrics.flops_per_token(count_params(model), cfg.n_layer, cfg.n_embd, dataset.seq_len)
    mfu = metrics.mfu(tokens_per_s, flops, peak)
    return {"tokens_per_s": round(tokens_per_s), "mfu": round(mfu, 4) if mfu is not None else None,
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if GPU else metrics.memory_gb(),
            "data_wait_fraction": 0.0, "sdpa_kernels": _attention_ops(forward, batches[0][:, :-1], device)}


def _sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def _attention_ops(model, ids: torch.Tensor, device: str) -> list[str]:
    """The attention ops and kernels one forward pass ran (the profiler's names): flash, memory-efficient, cuDNN or
    the math fallback."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    with profile(activities=activities) as prof, torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        model(input_ids=ids)
    names = {event.key for event in prof.key_averages()}
    return sorted(n for n in names if any(k in n.lower() for k in ("attention", "flash", "fmha", "sdpa")))


def _resume(data: Path, work: Path, steps: int, *extra: str, reference: Path | None = None) -> dict:
    """An uninterrupted run (`reference`, run here when not given) against one SIGKILLed after its mid-run
    checkpoint and resumed: losses bitwise equal?"""
    from gpt_novel.metrics import read_metrics

    killed = work / "killed"
    work.mkdir(parents=True, exist_ok=True)
    if reference is None:
        reference = work / "reference"
        _call(_command(data, reference, steps, *extra))
    with open(work / "killed.log", "w") as log:
        proc = subprocess.Popen(_command(data, killed, steps, *extra), cwd=ROOT, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and f'"step": {steps // 2 + 1},' in metrics.read_text():
            break
        time.sleep(0.05)
    _kill_job(str(killed))
    proc.wait()
    _call(_command(data, killed, steps, *extra))
    a, b = ([r["loss"] for r in read_metrics(d) if "loss" in r] for d in (reference, killed))
    return {"bitwise_equal": a == b, "max_loss_difference": max(abs(x - y) for x, y in zip(a, b, strict=True))}


def _kill_job(marker: str) -> None:
    """SIGKILL every process of the run at once, as a crash would (torchrun's ranks live in sessions of their own)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)


def _sample(hf: Path, batch: int) -> dict:
    out = _call([sys.executable, "benchmarks/sample.py", "--model", str(hf), "--batch", str(batch),
                 "--max-new-tokens", "128" if GPU else "16", "--repeats", "3" if GPU else "1"])
    report = json.loads(out)
    return {k: report[k] for k in ("sample_py_tokens_per_s", "bare_generate_tokens_per_s", "ratio_to_bare")}


def _env() -> dict:
    """One thread per process, as torchrun and `gpt-novel launch` set it (a different count changes CPU results)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _call(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


if __name__ == "__main__":
    main()
