"""Benchmark `gpt-novel prepare`: worker scaling, warm re-run and stage throughput, or memory at scale. Prints JSON.

usage: python benchmarks/prepare.py [CORPUS_DIR] [--workers N]
       python benchmarks/prepare.py [CORPUS_DIR] --scale [--copies 1,4,16] [--word-copies 1,4] [--bpe-copies 4,16]

Default corpus: ../shared/corpus when present, else the shipped sample.

Default mode, with the word tokenizer: cold runs with 1 and N workers, then a warm-cache re-run (vocabulary
changed, cache kept); for each cold run the throughput of each step in characters (of the input) per CPU-second,
from the report's `totals.cpu_seconds`: read+clean, segment (thulac), encode+write. Targets (issue 2): the N-worker
rate is at least 0.85 × N × the 1-worker rate; the warm re-run is at least 10× faster than a cold run with the same
workers.

--scale: peak RSS of one `prepare --workers 1 --no-cache` process (so one process does all the work, and its own
`ru_maxrss` from `os.wait4` is the figure) on 1×, 4× and 16× distinct copies of the corpus with the char
tokenizer, on 1× and 4× with the word tokenizer (thulac), and on 4× and 16× with the default BPE (both past the
10 million characters it learns from at most, `stages.BPE_SAMPLE_CHARS`). Target: memory bounded whatever the
corpus size, the char and bpe runs on the most copies within 10% of their run on the fewest (ratio ≤ 1.10).

Copies are distinct so that prepare keeps them all: copy k of each file has every body line rotated by k
characters (see `variant`), so no chapter is a duplicate of another copy's (prepare would drop it) and no line
repeats across files (prepare would drop it as boilerplate), while the characters (so the char vocabulary) and the
chapter headings stay the same. Each run lists the characters removed as duplicates and boilerplate: about 0.
Copies are written as UTF-8 (copy 0 too, so all runs read the same encoding): `bytes_in` counts those bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from gpt_novel.config import default_workers
from gpt_novel.data import boilerplate, chapters, ingest

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"read": "read_clean", "segment": "segment", "encode": "encode_write"}
SCALE_TARGET = 1.10
MB = 2**20


# --- running prepare ----------------------------------------------------------------------------------------------

def _prepare_cmd(inputs: list[Path], out: Path, workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpt_novel", "prepare", *map(str, inputs), "--out", str(out),
            "--workers", str(workers), "--force", *extra]


def _run(cmd: list[str], log: Path) -> tuple[float, resource.struct_rusage]:
    """Wall seconds and the child's own resource usage. `os.wait4` reaps exactly this child, so its ru_maxrss is
    this process's peak (RUSAGE_CHILDREN would be the largest of every child reaped so far)."""
    start = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen, which must not wait again
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        sys.exit(f"prepare failed (exit status {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds, usage


def _totals(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))["totals"]


def _removed(out: Path, *reasons: str) -> dict[str, int]:
    """Characters removed under `reasons`, summed over the report's files."""
    counts: Counter = Counter()
    for f in json.loads((out / "report.json").read_text(encoding="utf-8"))["files"]:
        counts.update({r: f.get("chars_removed", {}).get(r, 0) for r in reasons})
    return dict(counts)


# --- default mode: workers, warm re-run, stage throughput -------------------------------------------------------

def stage_rates(totals: dict) -> dict[str, int | None]:
    """Input characters per CPU-second of each step (CPU time summed over the workers: per-worker throughput)."""
    cpu = totals["cpu_seconds"]
    return {name: round(totals["chars_in"] / cpu[step]) if cpu.get(step) else None for step, name in STAGES.items()}


# The default mode measures thulac's path: the segment step and its cache are what the word tokenizer pays for and
# what a warm re-run saves (the default BPE vocabulary segments nothing).
WORD = ("--tokenizer", "word")


def _cold_and_warm(corpus: Path, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold1, _ = _run(_prepare_cmd([corpus], tmp / "d1", 1, *WORD, "--cache-dir", str(tmp / "cache1")), tmp / "log")
        totals1 = _totals(tmp / "d1")
        coldn, _ = _run(_prepare_cmd([corpus], tmp / "dn", n, *WORD, "--cache-dir", str(tmp / "cachen")), tmp / "log")
        totalsn = _totals(tmp / "dn")
        warm, _ = _run(_prepare_cmd([corpus], tmp / "dn", n, *WORD, "--cache-dir", str(tmp / "cachen"),
                                    "--vocab-size", "30000"), tmp / "log")
        warm_totals = _totals(tmp / "dn")
    chars = totals1["chars_in"]
    rate1, raten = chars / cold1, chars / coldn
    return {
        "corpus": str(corpus), "chars": chars, "chapters": totals1["chapters"], "workers": n,
        "cold_1_worker": {"seconds": round(cold1, 2), "chars_per_s": round(rate1),
                          "stage_chars_per_cpu_s": stage_rates(totals1), "cpu_seconds": totals1["cpu_seconds"]},
        "cold_n_workers": {"seconds": round(coldn, 2), "chars_per_s": round(raten),
                           "stage_chars_per_cpu_s": stage_rates(totalsn), "cpu_seconds": totalsn["cpu_seconds"]},
        "scaling": round(raten / rate1, 3), "scaling_target": round(0.85 * n, 3),
        "scaling_ok": raten / rate1 >= 0.85 * n,
        "warm_rerun": {"seconds": round(warm, 2), "segmented_chapters": warm_totals["segmented_chapters"]},
        "warm_speedup": round(coldn / warm, 2), "warm_speedup_target": 10, "warm_ok": coldn / warm >= 10,
    }


# --- --scale: distinct copies and peak memory --------------------------------------------------------------------

def variant(line: str, k: int) -> str:
    """Copy k's version of a line: its text (indentation and trailing blanks kept in place) rotated by k characters,
    and reversed as well for k ≥ its length, so that up to 2 × length copies all differ. Headings (and lines that
    would become one) and lines too short to be judged boilerplate (`boilerplate.MIN_CHARS`) stay as they are."""
    core = line.strip()
    n = len(core)
    if k == 0 or n < boilerplate.MIN_CHARS or chapters.parse_heading(core) is not None:
        return line
    s = k % n
    turned = core[s:] + core[:s]
    if (k // n) % 2:
        turned = turned[::-1]
    if chapters.parse_heading(turned) is not None:
        return line
    start = len(line) - len(line.lstrip())
    return line[:start] + turned + line[start + n:]


def write_copies(corpus: Path, root: Path, copies: int) -> list[Path]:
    """root/copyK/… for K < copies, each file decoded as prepare decodes it and written as UTF-8 with `variant`'s
    lines (copy 0: the text unchanged). Returns the copy directories; files prepare refuses are left out."""
    found = ingest.find_inputs([str(corpus)])
    dirs = [root / f"copy{k}" for k in range(copies)]
    for path in found.files:
        try:
            text = "\n".join(ingest.read_file(path).texts)
        except ingest.RefusedFile:
            continue
        lines = text.splitlines()  # the line breaks normalization knows, so that no "\r" is rotated into a line
        rel = path.relative_to(corpus).with_suffix(".txt") if corpus.is_dir() else Path(path.name).with_suffix(".txt")
        for k, directory in enumerate(dirs):
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(variant(line, k) for line in lines) + "\n", encoding="utf-8")
    return dirs


def _bytes_in(dirs: list[Path]) -> int:
    return sum(p.stat().st_size for d in dirs for p in d.rglob("*") if p.is_file())


def _scale_run(dirs: list[Path], tmp: Path, tokenizer: str, *extra: str) -> dict:
    """One `prepare --workers 1 --no-cache` over the given copies: its size, time and peak RSS."""
    out = tmp / f"{tokenizer}-{len(dirs)}"
    seconds, usage = _run(_prepare_cmd(dirs, out, 1, "--tokenizer", tokenizer, "--no-cache", *extra), tmp / "log")
    totals = _totals(out)
    figures = {"copies": len(dirs), "tokenizer": tokenizer, "bytes_in": _bytes_in(dirs), "chars": totals["chars_in"],
               "chars_kept": totals["chars_kept"], "chapters": totals["chapters"], "seconds": round(seconds, 2),
               "chars_per_s": round(totals["chars_in"] / seconds), "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB, 1),
               "removed": _removed(out, "duplicate_chapter", "boilerplate")}
    for path in (out, tmp / f".{out.name}.work"):
        shutil.rmtree(path, ignore_errors=True)  # free the disk before the next, larger run
    return figures


def _ratio(runs: list[dict]) -> float | None:
    return round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3) if len(runs) > 1 else None


def _scale(corpus: Path, copies: dict[str, list[int]], *extra: str) -> dict:
    """Each tokenizer's runs over its numbers of copies; a ratio per tokenizer of its last run's peak to its first."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = write_copies(corpus, tmp / "copies", max(k for ks in copies.values() for k in ks))
        runs = {kind: [_scale_run(dirs[:k], tmp, kind, *extra) for k in ks] for kind, ks in copies.items()}
    ratios = {f"{kind}_ratio": _ratio(r) for kind, r in runs.items()}
    return {
        "corpus": str(corpus), **runs, **ratios,
        "char_ratio_of": f"{copies['char'][-1]}x/{copies['char'][0]}x" if ratios["char_ratio"] else None,
        "ratio_target": SCALE_TARGET,
        "scale_ok": all(r is None or r <= SCALE_TARGET for k, r in ratios.items() if k != "word_ratio")
        and ratios["char_ratio"] is not None,
    }


def _copies(text: str) -> list[int]:
    """'1,4,16' → [1, 4, 16] (sorted, each ≥ 1); '' → []."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of copy counts: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"copy counts must be at least 1: {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT.parent / "shared" / "corpus"
    parser.add_argument("corpus", nargs="?", default=str(shared if shared.is_dir() else ROOT / "sample" / "corpus"))
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--scale", action="store_true", help="peak memory at several corpus sizes")
    parser.add_argument("--copies", type=_copies, default=[1, 4, 16], help="--scale: copies for the char runs")
    parser.add_argument("--word-copies", type=_copies, default=[1, 4], help="--scale: copies for the word runs")
    parser.add_argument("--bpe-copies", type=_copies, default=[4, 16], help="--scale: copies for the bpe runs")
    parser.add_argument("--seq-len", type=int, help="--scale: prepare's --seq-len (unset: its default; a small "
                        "corpus may need less for a validation sample)")
    args = parser.parse_args()
    corpus = Path(args.corpus).resolve()
    if args.scale:
        copies = {"char": args.copies, "word": args.word_copies, "bpe": args.bpe_copies}
        result = _scale(corpus, copies, *(["--seq-len", str(args.seq_len)] if args.seq_len else []))
    else:
        result = _cold_and_warm(corpus, args.workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
