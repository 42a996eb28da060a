"""`gpt-novel prepare`: novel files → tokenizer + WebDataset shards + manifest + report, written atomically.

The stages run in the order data flows (ingest → clean → chapters → segment → vocab → shards); this module only
orders them, runs the per-file and per-chapter work in one process pool, and writes the output directory. The
output appears under its final name only once complete: it is built in a hidden sibling directory and renamed.
One prepare at a time writes an output: it holds a lock file next to it from before reading the inputs until the
output is published.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import socket
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt_novel import __version__, lock
from gpt_novel.config import PrepareConfig, parse_size
from gpt_novel.data import ingest, segment, shards
from gpt_novel.data.novels import FileResult, read_cache_path, read_job
from gpt_novel.data.vocab import UNK, Vocab, build_tokens, check_vocab_size
from gpt_novel.errors import UserError, free_bytes

MANIFEST = "manifest.json"
REPORT = "report.json"
FORMAT = "gpt-novel-shards/1"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run(cfg: PrepareConfig) -> dict:
    """The whole pipeline; returns the report. Raises UserError before writing anything on bad input, and when
    another prepare is writing the same output."""
    out = Path(cfg.out)
    with _disk_full_is_a_user_error(out), lock.exclusive(_sibling(out, "lock"), f"--out {out}"):
        tag = _owner_tag()
        _remove_leftovers(out)
        return _run_locked(cfg, out, tag)


def _run_locked(cfg: PrepareConfig, out: Path, tag: str) -> dict:
    start = time.time()
    found = ingest.find_inputs(cfg.inputs, exclude=_is_ours(out))
    _warn_found(found)
    inputs = [_describe_input(p) for p in found.files]
    fingerprint = _fingerprint(inputs, cfg)
    if _check_out_dir(out, fingerprint, cfg.force) == "same":
        print(f"{out} already holds this dataset (same inputs and options); nothing to do (--force rebuilds it)")
        return json.loads((out / REPORT).read_text(encoding="utf-8"))
    cache_root = None if cfg.no_cache else Path(cfg.cache_dir) if cfg.cache_dir else segment.default_cache_dir()
    cache = segment.SegmentCache(cache_root / "segment" if cache_root and cfg.tokenizer == "word" else None)
    with _LazyPool(cfg.workers) as pool:
        results = _read_all(inputs, cfg, cache_root, pool)
        texts, owners = _dedupe(results)
        _check_before_segmenting(texts, results, cfg)
        words, fresh = _segment(texts, cfg, cache, pool)
    counts: Counter = Counter()
    for ws in words:
        counts.update(ws)
    vocab = Vocab(build_tokens(counts, cfg.tokenizer, cfg.vocab_size), cfg.tokenizer, cfg.to_simplified)
    ids = [np.array([vocab.mask, *vocab.ids_of_words(ws), vocab.cls], dtype=shards.dtype_for(len(vocab)))
           for ws in words]
    train, val = split_chapters(ids, cfg.val_ratio, cfg.seed, cfg.seq_len)
    report = _report(results, texts, owners, ids, vocab, found)
    manifest = {"format": FORMAT, "created_by": f"gpt-novel {__version__}", "fingerprint": fingerprint,
                "seq_len": cfg.seq_len, "sample_len": cfg.seq_len + 1, "dtype": str(shards.dtype_for(len(vocab))),
                "sample_field": shards.SAMPLE_FIELD, "seed": cfg.seed, "packing": shards.PACKING_RULE,
                "tokenizer": {"dir": "tokenizer", "kind": vocab.kind, "vocab_size": len(vocab),
                              "to_simplified": vocab.to_simplified},
                "args": {"inputs": cfg.inputs, **cfg.output_options(), "workers": cfg.workers}, "inputs": inputs}
    tmp = _partial_dir(out, tag)
    try:
        vocab.save(tmp / "tokenizer")
        manifest["splits"] = {name: _write_split(name, [ids[i] for i in chosen], cfg, tmp)
                              for name, chosen in (("train", train), ("val", val)) if chosen}
        report["totals"].update(segmented_chapters=fresh, seconds=round(time.time() - start, 1),
                                samples={k: v["samples"] for k, v in manifest["splits"].items()})
        _write_json(tmp / REPORT, report)
        _write_json(tmp / MANIFEST, manifest)  # last: a directory with a manifest is complete
        _publish(tmp, out, tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_summary(report, manifest, out)
    return report


def _warn_found(found: ingest.Found) -> None:
    for path, reason in found.refused:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    for line in found.warnings:
        print(f"warning: {line}", file=sys.stderr)


def _describe_input(path: Path) -> dict:
    """Path, size and sha256; a file that cannot be read gets its reason instead (it is refused, not fatal)."""
    try:
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": shards.sha256_file(path)}
    except OSError as e:
        return {"path": str(path), "error": f"cannot read: {e.strerror}"}


def _check_before_segmenting(texts: list[str], results: list[FileResult], cfg: PrepareConfig) -> None:
    """What can be known from the cleaned text fails now, not after an hour of segmentation."""
    if not texts:
        raise UserError("no usable text in any input file: " + "; ".join(f"{r.path}: {r.reason}" for r in results))
    check_val_split(len(texts), cfg.val_ratio)
    # the vocabulary holds every character, whatever the segmentation (its words concatenate to the text)
    check_vocab_size(len(set().union(*texts) - {"\n"}), cfg.vocab_size)


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
    """One result per input, in input order; a file that could not even be hashed is refused without a job."""
    jobs = [(i["path"], i["sha256"], cfg.to_simplified, str(cache_root) if cache_root else None)
            for i in inputs if "error" not in i]
    cached = [read_cache_path(*job[1:]) for job in jobs]
    workers = pool.get() if not all(c is not None and c.exists() for c in cached) else None
    mapped = workers.imap(read_job, jobs) if workers is not None else map(read_job, jobs)
    done = iter(list(tqdm(mapped, total=len(jobs), desc="read+clean", unit="file", disable=None)))
    results = [FileResult(i["path"], status="refused", reason=i["error"]) if "error" in i else next(done)
               for i in inputs]
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
    check_val_split(n, val_ratio)
    if val_ratio == 0:
        chosen: list[int] = []
    else:
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


def check_val_split(n_chapters: int, val_ratio: float) -> None:
    """A validation split needs a chapter to hold out and one to train on."""
    if val_ratio > 0 and n_chapters < 2:
        raise UserError("only one chapter in the corpus: cannot hold one out for validation (use --val-ratio 0)")


def _write_split(name: str, chapter_ids: list[np.ndarray], cfg: PrepareConfig, root: Path) -> dict:
    stream = np.concatenate(chapter_ids)
    samples, tail = shards.pack(stream, cfg.seq_len)
    if len(samples) == 0:
        raise UserError(f"the {name} split has {len(stream)} tokens, fewer than one sample of --seq-len {cfg.seq_len}")
    per_shard = shards.samples_per_shard(parse_size(cfg.shard_size, "--shard-size"), cfg.seq_len, stream.dtype)
    written = shards.write_shards(samples, root / name, name, per_shard, root)
    return {"chapters": len(chapter_ids), "samples": len(samples), "tokens": len(samples) * cfg.seq_len,
            "dropped_tail_tokens": tail, "shards": [s.to_json() for s in written]}


def _report(results, texts, owners, ids, vocab: Vocab, found: ingest.Found) -> dict:
    kept, unk, n_chapters = Counter(), Counter(), Counter()
    for text, owner, chapter in zip(texts, owners, ids, strict=True):
        kept[owner] += len(text)
        n_chapters[owner] += 1
        unk[owner] += int(np.count_nonzero(chapter == vocab.index[UNK]))
    files = [r.report(unk[n], kept[n], n_chapters[n]) for n, r in enumerate(results)]
    ok = [f for f in files if f["status"] == "ok"]
    totals = {"files": len(files), "files_ok": len(ok), "files_refused": len(files) - len(ok),
              "paths_refused": len(found.refused),
              "chapters": len(texts), "chars_in": sum(f["chars_in"] for f in ok),
              "chars_kept": sum(f["chars_kept"] for f in ok), "tokens": int(sum(len(x) for x in ids)),
              "unk": sum(unk.values()), "vocab_size": len(vocab), "tokenizer": vocab.kind}
    # paths_refused: directories that could not be listed and matching names that are not readable regular files
    refused = [{"path": path, "reason": reason} for path, reason in found.refused]
    return {"files": files, "paths_refused": refused, "input_warnings": found.warnings, "totals": totals}


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
    refused += [f"REFUSED {p['path']}: {p['reason']}" for p in report["paths_refused"]]
    for line in refused:
        print(line)
    t = report["totals"]
    splits = "; ".join(f"{k}: {v['chapters']} chapters, {v['samples']:,} samples, {len(v['shards'])} shard(s)"
                       for k, v in manifest["splits"].items())
    print(f"\n{t['files_ok']} file(s) used, {t['files_refused'] + t['paths_refused']} refused; "
          f"{t['chapters']} chapters, {t['chars_kept']:,} of {t['chars_in']:,} characters kept; {t['tokens']:,} tokens "
          f"({t['tokenizer']} vocabulary of {t['vocab_size']:,}, {t['unk']} [UNK]); seq len {manifest['seq_len']}")
    print(f"{splits}\nwrote {out}/ (manifest.json, report.json, tokenizer/, train/, val/) in {t['seconds']} s")


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# --- the output directory ---------------------------------------------------------------------------------------

def _fingerprint(inputs: list[dict], cfg: PrepareConfig) -> str:
    blob = json.dumps({"inputs": [(i["path"], i.get("sha256")) for i in inputs], "options": cfg.output_options(),
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


def _sibling(out: Path, suffix: str) -> Path:
    """A hidden name next to the output, owned by it: `.NAME.lock`, `.NAME.partial-OWNER`, `.NAME.old-OWNER`."""
    out = _absolute(out)
    return out.parent / f".{out.name}.{suffix}"


def _absolute(out: Path) -> Path:
    """Absolute, links not resolved: `--out data/` and `--out ./data` name the same lock and build directories."""
    return Path(os.path.abspath(out))


def _owner_tag() -> str:
    """host-pid-random: build directories of two prepares never share a name, even across hosts or pid reuse."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}-{secrets.token_hex(8)}"


def _leftover_names(out: Path) -> re.Pattern:
    """Names of this output's build directories (no dot inside the owner: `.a.b.partial-…` belongs to `a.b`)."""
    return re.compile(rf"\.{re.escape(_absolute(out).name)}\.(partial|old)-[\w-]*\d+(-[0-9a-f]{{16}})?")


def _is_ours(out: Path) -> Callable[[Path], bool]:
    """Whether a path is the output, its lock or one of its build directories: never read as input."""
    name, parent, leftovers = _absolute(out).name, os.path.realpath(_absolute(out).parent), _leftover_names(out)

    def ours(path: Path) -> bool:
        named = path.name in (name, f".{name}.lock") or leftovers.fullmatch(path.name) is not None
        return named and os.path.realpath(path.absolute().parent) == parent

    return ours


def _remove_leftovers(out: Path) -> None:
    """Build directories of earlier runs into this output, which died: with the lock held, none is still in use.
    An old copy set aside just before a publish that never happened is the dataset itself: it is put back."""
    parent, pattern = _absolute(out).parent, _leftover_names(out)
    for path in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and match.group(1) == "old" and not os.path.lexists(out):
            print(f"warning: putting back {out}, set aside by a prepare that was interrupted", file=sys.stderr)
            path.rename(out)
        elif match:
            print(f"warning: removing {path}, left by a prepare that was interrupted", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)


def _partial_dir(out: Path, tag: str) -> Path:
    """A fresh hidden sibling to build in, named for this run alone."""
    tmp = _sibling(out, f"partial-{tag}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path, tag: str) -> None:
    if out.exists():
        old = _sibling(out, f"old-{tag}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def _disk_full_is_a_user_error(out: Path) -> Iterator[None]:
    """A full disk or quota is for the user to fix: one line naming the path and the space left, no traceback."""
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        path = Path(e.filename or out)
        raise UserError(f"disk full while writing {path}: {free_bytes(path):,} bytes free") from None


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

