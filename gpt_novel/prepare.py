"""`gpt-novel prepare`: novel files → tokenizer + WebDataset shards + manifest + report, written atomically.

The stages run in the order data flows (ingest → clean → chapters → segment → vocab → shards); this module only
orders them, runs the per-file and per-chapter work in one process pool, and writes the output directory. The
output appears under its final name only once complete: it is built in a hidden sibling directory and renamed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt_novel import __version__
from gpt_novel.config import PrepareConfig, parse_size
from gpt_novel.data import chapters, charsets, clean, ingest, segment, shards
from gpt_novel.data.vocab import UNK, Vocab, build_tokens
from gpt_novel.errors import UserError

MANIFEST = "manifest.json"
REPORT = "report.json"
FORMAT = "gpt-novel-shards/1"
LONG_LINE = 100_000


@dataclass
class FileResult:
    """What one input file contributed, and what happened to its characters."""

    path: str
    status: str = "ok"
    reason: str = ""
    encoding: str = ""
    plausibility: float = 0.0
    script: str = ""
    chars_in: int = 0
    undecodable_bytes: int = 0
    removed: Counter = field(default_factory=Counter)
    chapters: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def report(self, unk: int, kept: int, n_chapters: int) -> dict:
        out = {"path": self.path, "status": self.status}
        if self.status != "ok":
            return {**out, "reason": self.reason}
        removed = dict(self.removed)
        # normalization's whitespace (line ends, indentation, blank lines) is what is left unaccounted for
        removed["whitespace"] = removed.get("whitespace", 0) + self.chars_in - kept - sum(removed.values())
        return {**out, "encoding": self.encoding, "plausibility": round(self.plausibility, 4), "script": self.script,
                "chapters": n_chapters, "chars_in": self.chars_in, "chars_kept": kept,
                "chars_removed": {k: v for k, v in sorted(removed.items()) if v}, "undecodable_bytes":
                self.undecodable_bytes, "unk": unk, "warnings": self.warnings}


def read_and_split(path: str, to_simplified: bool) -> FileResult:
    """Decode, normalize, clean and split one file into chapter texts (runs in a pool worker)."""
    result = FileResult(path)
    try:
        decoded = ingest.read_file(Path(path))
    except ingest.RefusedFile as e:
        return FileResult(path, status="refused", reason=str(e))
    except OSError as e:
        return FileResult(path, status="refused", reason=f"cannot read: {e.strerror}")
    result.encoding, result.plausibility = decoded.encoding, decoded.confidence
    result.undecodable_bytes, result.warnings = decoded.undecodable_bytes, decoded.warnings
    result.chars_in = sum(len(t) for t in decoded.texts)
    result.script = charsets.script_of(decoded.texts[0][:200_000])
    for text in decoded.texts:
        longest = max((len(line) for line in text.splitlines()), default=0)
        if longest > LONG_LINE:
            result.warnings.append(f"a line of {longest} characters (no line breaks?); segmented in pieces")
        norm = clean.normalize(text)
        if to_simplified:
            norm = clean.to_simplified(norm)
        lines = clean.clean_lines(norm.split("\n"), result.removed)
        found = chapters.split_chapters(lines, result.removed)
        if len(found) == 1 and not found[0].heading and len(decoded.texts) == 1:
            result.warnings.append("no chapter headings found: the whole file is one chapter")
        result.chapters.extend(ch.text for ch in found)
    if not result.chapters:
        result.status, result.reason = "refused", "no text left after cleaning"
    return result


# The per-file result depends on these modules' code, so their bytes are part of its cache key.
_READ_CODE = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (ingest, charsets, clean, chapters)))


def _read_cache_path(sha: str, to_simplified: bool, cache_root: str | None) -> Path | None:
    if not cache_root:
        return None
    key = _READ_CODE.copy()
    key.update(f"{sha}|{to_simplified}".encode())
    return Path(cache_root, "files", f"{key.hexdigest()}.pkl")


def _read_job(args: tuple[str, str, bool, str | None]) -> FileResult:
    """read_and_split, memoized on disk by (file content, options, code): a warm re-run skips the cleaning."""
    path, sha, to_simplified, cache_root = args
    cached = _read_cache_path(sha, to_simplified, cache_root)
    if cached is not None and cached.exists():
        try:
            result = pickle.loads(cached.read_bytes())
            result.path = path
            return result
        except Exception:  # a damaged cache entry is recomputed
            pass
    result = read_and_split(path, to_simplified)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, cached)
    return result


def run(cfg: PrepareConfig) -> dict:
    """The whole pipeline; returns the report. Raises UserError before writing anything on bad input."""
    start = time.time()
    out = Path(cfg.out)
    paths = ingest.find_inputs(cfg.inputs)
    inputs = [{"path": str(p), "bytes": p.stat().st_size, "sha256": _file_sha256(p)} for p in paths]
    fingerprint = _fingerprint(inputs, cfg)
    if _check_out_dir(out, fingerprint, cfg.force) == "same":
        print(f"{out} already holds this dataset (same inputs and options); nothing to do (--force rebuilds it)")
        return json.loads((out / REPORT).read_text(encoding="utf-8"))
    cache_root = None if cfg.no_cache else Path(cfg.cache_dir) if cfg.cache_dir else segment.default_cache_dir()
    cache = segment.SegmentCache(cache_root / "segment" if cache_root and cfg.tokenizer == "word" else None)
    with _LazyPool(cfg.workers) as pool:
        results = _read_all(inputs, cfg, cache_root, pool)
        texts, owners = _dedupe(results)
        if not texts:
            raise UserError("no usable text in any input file: " + "; ".join(f"{r.path}: {r.reason}" for r in results))
        words, fresh = _segment(texts, cfg, cache, pool)
    counts: Counter = Counter()
    for ws in words:
        counts.update(ws)
    vocab = Vocab(build_tokens(counts, cfg.tokenizer, cfg.vocab_size), cfg.tokenizer, cfg.to_simplified)
    ids = [np.array([vocab.mask, *vocab.ids_of_words(ws), vocab.cls], dtype=shards.dtype_for(len(vocab)))
           for ws in words]
    train, val = split_chapters(ids, cfg.val_ratio, cfg.seed, cfg.seq_len)
    report = _report(results, texts, owners, ids, vocab, cfg)
    manifest = {"format": FORMAT, "created_by": f"gpt-novel {__version__}", "fingerprint": fingerprint,
                "seq_len": cfg.seq_len, "sample_len": cfg.seq_len + 1, "dtype": str(shards.dtype_for(len(vocab))),
                "sample_field": shards.SAMPLE_FIELD, "seed": cfg.seed, "packing": shards.PACKING_RULE,
                "tokenizer": {"dir": "tokenizer", "kind": vocab.kind, "vocab_size": len(vocab),
                              "to_simplified": vocab.to_simplified},
                "args": {"inputs": cfg.inputs, **cfg.output_options(), "workers": cfg.workers}, "inputs": inputs}
    tmp = _partial_dir(out)
    try:
        vocab.save(tmp / "tokenizer")
        manifest["splits"] = {name: _write_split(name, [ids[i] for i in chosen], cfg, tmp)
                              for name, chosen in (("train", train), ("val", val)) if chosen}
        report["totals"].update(segmented_chapters=fresh, seconds=round(time.time() - start, 1),
                                samples={k: v["samples"] for k, v in manifest["splits"].items()})
        _write_json(tmp / REPORT, report)
        _write_json(tmp / MANIFEST, manifest)  # last: a directory with a manifest is complete
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_summary(report, manifest, out)
    return report


class _LazyPool:
    """A process pool started only when there is work that is not cached (a warm re-run never pays for it)."""

    def __init__(self, workers: int):
        self.workers, self._pool = workers, None

    def get(self):
        if self._pool is None and self.workers > 1:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self._pool = ctx.Pool(self.workers)
        return self._pool

    def __enter__(self) -> _LazyPool:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.close() if exc[0] is None else self._pool.terminate()
            self._pool.join()


def _read_all(inputs: list[dict], cfg: PrepareConfig, cache_root: Path | None, pool: _LazyPool) -> list[FileResult]:
    jobs = [(i["path"], i["sha256"], cfg.to_simplified, str(cache_root) if cache_root else None) for i in inputs]
    cached = [_read_cache_path(*job[1:]) for job in jobs]
    workers = pool.get() if not all(c is not None and c.exists() for c in cached) else None
    mapped = workers.imap(_read_job, jobs) if workers is not None else map(_read_job, jobs)
    results = list(tqdm(mapped, total=len(jobs), desc="read+clean", unit="file", disable=None))
    for r in results:
        if r.status != "ok":
            print(f"warning: skipping {r.path}: {r.reason}", file=sys.stderr)
        for w in r.warnings:
            print(f"warning: {r.path}: {w}", file=sys.stderr)
    return results


def _dedupe(results: list[FileResult]) -> tuple[list[str], list[int]]:
    """All chapters in input order, exact duplicates (within or across files) dropped and counted."""
    seen: set[str] = set()
    texts, owners = [], []
    for n, r in enumerate(results):
        for text in r.chapters:
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                r.removed["duplicate_chapter"] += len(text)
                continue
            seen.add(digest)
            texts.append(text)
            owners.append(n)
    return texts, owners


def _segment(texts: list[str], cfg: PrepareConfig, cache: segment.SegmentCache, pool: _LazyPool,
             ) -> tuple[list[list[str]], int]:
    if cfg.tokenizer == "char":
        return [list(t) for t in texts], 0
    with tqdm(total=sum(map(len, texts)), desc="segment", unit="char", unit_scale=True, disable=None) as bar:
        return segment.segment_all(texts, cache, pool.get, bar.update)


def split_chapters(ids: list[np.ndarray], val_ratio: float, seed: int, seq_len: int) -> tuple[list[int], list[int]]:
    """Seeded train/val split by chapter; val gets at least one chapter and enough ids for one sample."""
    n = len(ids)
    if val_ratio == 0:
        chosen: list[int] = []
    else:
        if n < 2:
            raise UserError("only one chapter in the corpus: cannot hold one out for validation (use --val-ratio 0)")
        order = list(range(n))
        random.Random(seed).shuffle(order)
        count = max(1, round(val_ratio * n))
        chosen = order[:count]
        while sum(len(ids[i]) for i in chosen) < seq_len + 1 and count < n - 1:
            count += 1
            chosen = order[:count]
    val = sorted(chosen)
    held_out = set(val)
    train = [i for i in range(n) if i not in held_out]
    train_tokens = sum(len(ids[i]) for i in train)
    if train_tokens < seq_len + 1:
        raise UserError(f"the corpus is too small for --seq-len {seq_len}: {train_tokens} training tokens, "
                        f"need at least {seq_len + 1}")
    return train, val


def _write_split(name: str, chapter_ids: list[np.ndarray], cfg: PrepareConfig, root: Path) -> dict:
    stream = np.concatenate(chapter_ids)
    samples, tail = shards.pack(stream, cfg.seq_len)
    if len(samples) == 0:
        raise UserError(f"the {name} split has {len(stream)} tokens, fewer than one sample of --seq-len {cfg.seq_len}")
    per_shard = shards.samples_per_shard(parse_size(cfg.shard_size, "--shard-size"), cfg.seq_len, stream.dtype)
    written = shards.write_shards(samples, root / name, name, per_shard, root)
    return {"chapters": len(chapter_ids), "samples": len(samples), "tokens": len(samples) * cfg.seq_len,
            "dropped_tail_tokens": tail, "shards": [s.to_json() for s in written]}


def _report(results, texts, owners, ids, vocab: Vocab, cfg: PrepareConfig) -> dict:
    kept, unk, n_chapters = Counter(), Counter(), Counter()
    for text, owner, chapter in zip(texts, owners, ids, strict=True):
        kept[owner] += len(text)
        n_chapters[owner] += 1
        unk[owner] += int(np.count_nonzero(chapter == vocab.index[UNK]))
    files = [r.report(unk[n], kept[n], n_chapters[n]) for n, r in enumerate(results)]
    ok = [f for f in files if f["status"] == "ok"]
    totals = {"files": len(files), "files_ok": len(ok), "files_refused": len(files) - len(ok),
              "chapters": len(texts), "chars_in": sum(f["chars_in"] for f in ok),
              "chars_kept": sum(f["chars_kept"] for f in ok), "tokens": int(sum(len(x) for x in ids)),
              "unk": sum(unk.values()), "vocab_size": len(vocab), "tokenizer": vocab.kind}
    return {"files": files, "totals": totals}


def print_summary(report: dict, manifest: dict, out: Path) -> None:
    rows = [("file", "encoding", "script", "chapters", "chars in", "kept", "removed (top reasons)", "[UNK]")]
    refused = []
    for f in report["files"]:
        name = Path(f["path"]).name
        if f["status"] != "ok":
            refused.append(f"REFUSED {name}: {f['reason']}")
            continue
        top = sorted(f["chars_removed"].items(), key=lambda kv: -kv[1])[:3]
        rows.append((name, f["encoding"], f["script"], str(f["chapters"]), f"{f['chars_in']:,}", f"{f['chars_kept']:,}",
                     ", ".join(f"{k} {v:,}" for k, v in top), str(f["unk"])))
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths, strict=True)).rstrip())
    for line in refused:
        print(line)
    t = report["totals"]
    splits = "; ".join(f"{k}: {v['chapters']} chapters, {v['samples']:,} samples, {len(v['shards'])} shard(s)"
                       for k, v in manifest["splits"].items())
    print(f"\n{t['files_ok']} file(s) used, {t['files_refused']} refused; {t['chapters']} chapters, "
          f"{t['chars_kept']:,} of {t['chars_in']:,} characters kept; {t['tokens']:,} tokens "
          f"({t['tokenizer']} vocabulary of {t['vocab_size']:,}, {t['unk']} [UNK]); seq len {manifest['seq_len']}")
    print(f"{splits}\nwrote {out}/ (manifest.json, report.json, tokenizer/, train/, val/) in {t['seconds']} s")


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# --- the output directory ---------------------------------------------------------------------------------------

def _fingerprint(inputs: list[dict], cfg: PrepareConfig) -> str:
    blob = json.dumps({"inputs": [(i["path"], i["sha256"]) for i in inputs], "options": cfg.output_options(),
                       "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_out_dir(out: Path, fingerprint: str, force: bool) -> str:
    """'new' (absent or empty), 'replace' (ours, --force) or 'same'; anything else is refused before any work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    manifest = out / MANIFEST
    if not manifest.exists():
        raise UserError(f"--out {out} is not empty and holds no gpt-novel dataset; choose a new or empty directory")
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    if force:
        return "replace"
    if old.get("fingerprint") == fingerprint:
        return "same"
    raise UserError(f"--out {out} already holds a different dataset (other inputs or options); "
                    "pass --force to replace it or choose another directory")


def _partial_dir(out: Path) -> Path:
    """A fresh hidden sibling to build in; leftovers of interrupted runs (ours by name) are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
