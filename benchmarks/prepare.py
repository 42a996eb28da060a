"""Benchmark `gpt-novel prepare`: cold runs with 1 and N workers, then a warm-cache re-run. Prints JSON.

usage: python benchmarks/prepare.py [CORPUS_DIR] [--workers N]
Default corpus: ../shared/corpus when present, else the shipped sample. Targets (issue 2): the N-worker rate is
at least 0.85 × N × the 1-worker rate; a warm re-run (vocabulary changed, cache kept) is at least 10× faster
than a cold run with the same workers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpt_novel.config import default_workers

ROOT = Path(__file__).resolve().parent.parent


def _prepare(corpus: Path, out: Path, cache: Path, workers: int, *extra: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "gpt_novel", "prepare", str(corpus), "--out", str(out), "--cache-dir", str(cache),
           "--workers", str(workers), "--force", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "report.json").read_text())["totals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT.parent / "shared" / "corpus"
    parser.add_argument("corpus", nargs="?", default=str(shared if shared.is_dir() else ROOT / "sample" / "corpus"))
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    corpus, n = Path(args.corpus), args.workers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold1, totals = _prepare(corpus, tmp / "d1", tmp / "cache1", 1)
        coldn, _ = _prepare(corpus, tmp / "dn", tmp / "cachen", n)
        warm, warm_totals = _prepare(corpus, tmp / "dn", tmp / "cachen", n, "--vocab-size", "30000")
    chars = totals["chars_in"]
    rate1, raten = chars / cold1, chars / coldn
    print(json.dumps({
        "corpus": str(corpus), "chars": chars, "chapters": totals["chapters"], "workers": n,
        "cold_1_worker": {"seconds": round(cold1, 2), "chars_per_s": round(rate1)},
        "cold_n_workers": {"seconds": round(coldn, 2), "chars_per_s": round(raten)},
        "scaling": round(raten / rate1, 3), "scaling_target": round(0.85 * n, 3),
        "scaling_ok": raten / rate1 >= 0.85 * n,
        "warm_rerun": {"seconds": round(warm, 2), "segmented_chapters": warm_totals["segmented_chapters"]},
        "warm_speedup": round(coldn / warm, 2), "warm_speedup_target": 10, "warm_ok": coldn / warm >= 10,
    }, indent=2))


if __name__ == "__main__":
    main()
