"""Load test of `gpt-novel serve`: concurrent clients on loopback, against `tools/sample.py --num-samples N`.

usage: python benchmarks/serve.py [--model HF_DIR] [--clients 16] [--max-new-tokens 64] [--queue 8] [--timeout 300]

Starts the server on a free 127.0.0.1 port, releases `--clients` clients at once (one draft each, seeds 0…N-1), and
prints JSON: how many completed and how many were refused with the queue message (anything else is listed under
`failed`), p50/p95 time to first token of those that completed, and the tokens per second of the whole run. The
same model then continues the same prompt with N drafts at once, as `tools/sample.py --num-samples N` does (timed
in process, model load excluded; the command's whole wall time is reported beside it). The server generates one
request at a time, so the batch is the upper bound. Without --model, an untrained GPT-2 of the tiny preset's shape
(2 layers, 128 dims, 256 positions) on the shipped sample's tokenizer. Bounded: at most 64 clients, and every
request and the whole run end within --timeout seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample import untrained_model_dir  # noqa: E402 (benchmarks/sample.py, beside this file)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "青石镇一连下了七天的雨。沈砚推开客栈的门，"
BUSY = "the server is busy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: Path, queue: int, timeout: float):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gpt_novel", "serve", str(model), "--port", str(port), "--queue", str(queue)]
    with subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(url + "/api/info", timeout=2).read()
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"benchmarks/serve.py: the server did not start ({' '.join(cmd)})")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def client(url: str, seed: int, max_new_tokens: int, timeout: float, go: threading.Barrier) -> dict:
    """One request; its outcome, time to first token and tokens."""
    body = json.dumps({"prompt": PROMPT, "max_new_tokens": max_new_tokens, "seed": seed}).encode()
    request = urllib.request.Request(url + "/api/generate", data=body, headers={"Content-Type": "application/json"})
    go.wait()
    start, first = time.perf_counter(), None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for line in response:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if event["type"] == "step" and first is None:
                    first = time.perf_counter() - start
                if event["type"] == "end":
                    return {"outcome": "completed", "ttft_s": first, "tokens": event["tokens"],
                            "end": time.perf_counter()}
                if event["type"] == "error":
                    return {"outcome": "failed", "why": event["message"]}
    except urllib.error.HTTPError as e:
        message = json.loads(e.read() or b"{}").get("error", "")
        if e.code == 503 and message.startswith(BUSY):
            return {"outcome": "refused", "why": message}
        return {"outcome": "failed", "why": f"{e.code} {message}"}
    except OSError as e:
        return {"outcome": "failed", "why": str(e)}
    return {"outcome": "failed", "why": "the stream ended without an end event"}


def load_test(url: str, clients: int, max_new_tokens: int, timeout: float) -> dict:
    go = threading.Barrier(clients + 1)
    results: list[dict] = [{} for _ in range(clients)]

    def run(i: int) -> None:
        results[i] = client(url, i, max_new_tokens, timeout, go)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(timeout=max(0.0, timeout - (time.perf_counter() - start)))
    done = [r for r in results if r.get("outcome") == "completed"]
    ttft = sorted(r["ttft_s"] for r in done if r["ttft_s"] is not None)
    tokens = sum(r["tokens"] for r in done)
    wall = max((r["end"] for r in done), default=start) - start
    return {
        "completed": len(done), "refused": sum(r.get("outcome") == "refused" for r in results),
        "failed": [r.get("why", "no answer within --timeout") for r in results
                   if r.get("outcome") not in ("completed", "refused")],
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p95_s": round(ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))], 3) if ttft else None,
        "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
    }


def batched(model_dir: Path, drafts: int, max_new_tokens: int) -> dict:
    """tools/sample.py's path with `drafts` samples at once, in process (model load excluded), and the command."""
    from gpt_novel.generate import DraftStreamer, SamplingOptions, continue_text, load

    model, vocab = load(model_dir)
    options = SamplingOptions(max_new_tokens=max_new_tokens, num_samples=drafts, seed=0)
    continue_text((model, vocab), PROMPT, options)  # warm: thulac's model, the first forward
    steps = [0]
    streamer = DraftStreamer(vocab, drafts, lambda deltas: steps.__setitem__(0, steps[0] + 1))
    start = time.perf_counter()
    continue_text((model, vocab), PROMPT, options, streamer=streamer)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "tools/sample.py", str(model_dir), "--prompt", PROMPT, "--num-samples",
                    str(drafts), "--max-new-tokens", str(max_new_tokens), "--seed", "0"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return {"num_samples": drafts, "tokens": steps[0] * drafts, "seconds": round(seconds, 3),
            "tokens_per_s": round(steps[0] * drafts / seconds, 1),
            "command_wall_s": round(time.perf_counter() - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder (default: an untrained tiny-shaped GPT-2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--queue", type=int, default=8, help="the server's --queue")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the server start and for the run")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64:
        parser.error("--clients must be 1…64")
    from gpt_novel.parallel import name_deepspeed_accelerator

    name_deepspeed_accelerator()  # DeepSpeed's "Setting accelerator to CPU" would go to stdout, before the JSON
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or untrained_model_dir(Path(tmp), n_layer=2, n_embd=128, n_positions=256)
        with server(model, args.queue, args.timeout) as url:
            report = load_test(url, args.clients, args.max_new_tokens, args.timeout)
        report = {"model": str(args.model or "untrained tiny shape"), "clients": args.clients,
                  "queue": args.queue, "max_new_tokens": args.max_new_tokens, **report,
                  "sample_py": batched(model, args.clients, args.max_new_tokens)}
    ours, batch = report["tokens_per_s"], report["sample_py"]["tokens_per_s"]
    report["ratio_to_sample_py"] = round(ours / batch, 3) if ours else None
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
