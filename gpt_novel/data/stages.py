"""The steps of `prepare` over deterministic partitions of the input, each restartable, each memory-bounded.

    plan      list and hash the inputs; cut the sorted listing into partitions of about --partition-size bytes
    read      per partition: decode, clean, split chapters (one file at a time, in the pool)
    merge     once: boilerplate lines (repeated across files) and exact-duplicate chapters, by hash buckets
    segment   per partition: drop duplicates and boilerplate lines, segment with thulac, count words
    vocab     once: merge the word counts bucket by bucket into the vocabulary; settle the val split's minimum
    encode    per partition: ids, train/val by a per-chapter hash, pack and write the partition's train shards
    (finish)  once, in `prepare`: tail and val shards, manifest, report, publish

Partitions depend on the input listing (sorted paths and sizes) and --partition-size alone, never on the number
of workers or Slurm tasks, and every step's output depends only on its partition and the reduces' outputs: any
way of spreading the work gives the same bytes. A process holds at most one file, the chapters in flight in its
pool, one partition's word counts and one hash bucket of a reduce: memory does not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt_novel.config import PrepareConfig, parse_size
from gpt_novel.data import boilerplate, ingest, novels, segment, shards
from gpt_novel.data.dataset import FORMAT, TOKENIZER_DIR, Split
from gpt_novel.data.novels import FileResult
from gpt_novel.data.shards import ShardInfo
from gpt_novel.data.vocab import (
    BPE,
    Vocab,
    given_vocab,
    tokenizer_digest,
    tokens_from_counts,
    train_bpe,
    vocab_size_for,
)
from gpt_novel.data.workdir import ALL, WorkDir, key_of, read_records, write_json
from gpt_novel.data.workers import LazyPool, ordered_map
from gpt_novel.errors import UserError
from gpt_novel.progress import Progress

PLAN = "plan.json"
PARTITION_STEPS = ("read", "segment", "encode")
BUCKETS = 256  # hash buckets of the reduces: each holds 1/256 of the chapters' digests or of the distinct words
# Every step's output depends on the code of the data stages: a change to any of them redoes the work directory.
CODE = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()


# --- the plan ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """The inputs (path, bytes, sha256, or the reason one cannot be read) cut into partitions, and the options
    that shape the output. Written by the plan step; every other step reads it and derives its keys from it."""

    fingerprint: str
    options: dict
    partitions: list[list[dict]]
    refused: list[list[str]]  # paths the listing could not use, with why
    warnings: list[str]

    def input_files(self) -> int:
        return sum(len(part) for part in self.partitions)

    def input_bytes(self) -> int:
        return sum(d.get("bytes", 0) for part in self.partitions for d in part)

    def read_key(self, part: int) -> str:
        files = [(d["path"], d.get("sha256", d.get("error"))) for d in self.partitions[part]]
        return key_of("read", CODE, self.options["to_simplified"], files)

    def merge_key(self) -> str:
        return key_of("merge", CODE, [self.read_key(p) for p in range(len(self.partitions))])

    def segment_key(self, part: int) -> str:
        kind = self.options["tokenizer"]
        return key_of("segment", CODE, self.read_key(part), self.merge_key(), kind,
                      segment.SEGMENTER_ID if kind == "word" else "")

    def vocab_key(self) -> str:
        opts = {k: self.options.get(k) for k in ("tokenizer", "vocab_size", "seed", "val_ratio", "seq_len",
                                                 "tokenizer_sha256", "special_tokens")}
        return key_of("vocab", CODE, [self.segment_key(p) for p in range(len(self.partitions))], opts)

    def encode_key(self, part: int) -> str:
        opts = {k: self.options[k] for k in ("seq_len", "shard_size")}
        return key_of("encode", CODE, self.segment_key(part), self.vocab_key(), opts)

    def save(self, work: WorkDir) -> None:
        work.root.mkdir(parents=True, exist_ok=True)
        tmp = work.root / f".{PLAN}.tmp"
        write_json(tmp, dataclasses.asdict(self))
        tmp.replace(work.root / PLAN)

    @classmethod
    def load(cls, work: WorkDir) -> Plan:
        try:
            obj = json.loads((work.root / PLAN).read_text(encoding="utf-8"))
            return cls(obj["fingerprint"], dict(obj["options"]), [list(p) for p in obj["partitions"]],
                       [list(r) for r in obj["refused"]], [str(w) for w in obj["warnings"]])
        except FileNotFoundError:
            raise UserError(f"{work.root} holds no plan: run the plan step first (--step plan)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{work.root / PLAN} is damaged ({e}): run the plan step again") from None


def make_plan(cfg: PrepareConfig, found: ingest.Found, pool: LazyPool) -> Plan:
    """Hash every input (in the pool) and cut the listing into partitions."""
    sizes = [_size(path) for path in found.files]
    with Progress("hash", sum(sizes), len(sizes), "bytes") as bar:
        inputs = []
        for n, described in enumerate(ordered_map(pool, describe_input, found.files), 1):
            bar.advance(described.get("bytes", 0), n)
            inputs.append(described)
        bar.done(f"{len(inputs)} file(s), {sum(sizes) / 1e6:.1f} MB")
    options = cfg.output_options()
    blob = json.dumps({"inputs": [(i["path"], i.get("sha256")) for i in inputs], "options": options,
                       "format": FORMAT}, sort_keys=True)
    return Plan(hashlib.sha256(blob.encode()).hexdigest(), options,
                partition(inputs, parse_size(cfg.partition_size, "--partition-size")),
                [list(r) for r in found.refused], list(found.warnings))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # describe_input says why
        return 0


def describe_input(path: Path) -> dict:
    """Path, size and sha256; a file that cannot be read gets its reason instead (it is refused, not fatal)."""
    try:
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": shards.sha256_file(path)}
    except OSError as e:
        return {"path": str(path), "error": f"cannot read: {e.strerror}"}


def partition(inputs: list[dict], budget: int) -> list[list[dict]]:
    """Consecutive inputs (in sorted order) grouped up to `budget` bytes; a larger file is a partition alone."""
    parts: list[list[dict]] = []
    size = budget
    for item in inputs:
        if size + item.get("bytes", 0) > budget and (not parts or parts[-1]):
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += item.get("bytes", 0)
    return parts


def task_partitions(parts: int, task: int, tasks: int) -> list[int]:
    """The partitions of task `task` of `tasks`: every tasks-th, so that each task gets large and small ones."""
    return list(range(task, parts, tasks))


def _todo(plan: Plan, work: WorkDir, step: str, parts: list[int], key) -> list[int]:
    todo = [p for p in parts if not work.done(step, p, key(p))]
    if skipped := [p for p in parts if p not in todo]:
        print(f"{step}: {files_in(plan, skipped)} of {files_in(plan, parts)} file(s) done earlier, kept "
              f"(partition(s) {ranges(skipped)})")
    for p in todo:
        work.remove_unfinished(step, p)
    return todo


def files_in(plan: Plan, parts: list[int]) -> int:
    return sum(len(plan.partitions[p]) for p in parts)


def _first_file(plan: Plan, parts: list[int]) -> dict[int, int]:
    """Each partition's first file, counted from 1 over `parts`: progress says "file 3 of 8", not partitions."""
    firsts = itertools.accumulate((len(plan.partitions[p]) for p in parts[:-1]), initial=1)
    return dict(zip(parts, firsts, strict=True))


def ranges(parts: list[int]) -> str:
    out = []
    for _, group in itertools.groupby(enumerate(parts), lambda x: x[1] - x[0]):
        run = [p for _, p in group]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def require(work: WorkDir, step: str, parts: list, key, files: tuple[str, ...] | None = None) -> None:
    """A later step needs these outputs of `step` (and of them, `files`): say which are missing or damaged, in one
    line."""
    missing = [p for p in parts if not work.done(step, p, key(p), files)]
    if missing == [ALL]:
        raise UserError(f"the {step} step is not complete in {work.root}: run it first (prepare again, or "
                        "resubmit the Slurm job)")
    if missing:
        raise UserError(f"the {step} step is not complete for partition(s) {ranges(missing)} of {work.root}: "
                        f"run it for them first (prepare again, or resubmit the Slurm job)")


# --- read -------------------------------------------------------------------------------------------------------

def read(plan: Plan, work: WorkDir, parts: list[int], pool: LazyPool, cache_root: Path | None) -> None:
    """Per partition: chapters.jsonl ([file, text] per chapter), files.jsonl (each file's FileResult without its
    chapters) and the chapters' sha256 digests (sorted, for the merge's buckets)."""
    todo = _todo(plan, work, "read", parts, plan.read_key)
    jobs = [(p, d, plan.options["to_simplified"], str(cache_root) if cache_root else None)
            for p in todo for d in plan.partitions[p]]
    results = ordered_map(pool, _read_one, jobs)
    if not jobs:
        return
    with Progress("read", sum(d.get("bytes", 0) for _, d, *_ in jobs), len(jobs), "bytes") as bar:
        for p, group in itertools.groupby(_read_progress(jobs, results, bar), key=lambda r: r[0]):
            info: dict = {}
            with work.output("read", p, plan.read_key(p), info) as out:
                _write_read(out, ((r, t) for _, r, t in group), info)
        infos = [work.info("read", p) for p in todo]
        bar.done(f"{len(jobs)} file(s), {sum(i['chapters'] for i in infos):,} chapters, "
                 f"{sum(i['chars_in'] for i in infos):,} characters")


def _read_progress(jobs: list[tuple], results: Iterator, bar: Progress) -> Iterator:
    for n, (job, result) in enumerate(zip(jobs, results, strict=True), 1):
        bar.advance(job[1].get("bytes", 0), n)
        yield result


def _advancing(items: Iterator, bar: Progress, measure) -> Iterator:
    """The items, the bar advanced by measure(item) = (units, file number) for each."""
    for item in items:
        bar.advance(*measure(item))
        yield item


def _read_one(job: tuple[int, dict, bool, str | None]) -> tuple[int, FileResult, float]:
    """One file's FileResult (from the cache when it holds this content) and the CPU seconds it took."""
    part, desc, to_simplified, cache_root = job
    start = time.process_time()
    if "error" in desc:
        return part, FileResult(desc["path"], status="refused", reason=desc["error"]), 0.0
    result = novels.read_job((desc["path"], desc["sha256"], to_simplified, cache_root))
    if shards.sha256_file(Path(desc["path"])) != desc["sha256"]:
        raise UserError(f"{desc['path']} changed while prepare was running: run it again")
    return part, result, time.process_time() - start


def _write_read(out: Path, results: Iterator[tuple[FileResult, float]], info: dict) -> None:
    digests: list[tuple[int, int, int]] = []
    chars: set[str] = set()
    seconds, chars_in, chars_out = 0.0, 0, 0
    with open(out / "chapters.jsonl", "w", encoding="utf-8") as f, \
            open(out / "files.jsonl", "w", encoding="utf-8") as g:
        for n, (r, spent) in enumerate(results):
            for text in r.chapters:
                f.write(json.dumps([n, text], ensure_ascii=False) + "\n")
                digests.append((*_digest(text), len(digests)))
                chars_out += len(text)
            chars.update(r.distinct_chars)
            g.write(dataclasses.replace(r, chapters=[]).to_json() + "\n")
            _warn(r)
            seconds, chars_in = seconds + spent, chars_in + r.chars_in
    table = np.array(sorted(digests), dtype=np.uint64).reshape(-1, 3)
    for name, column in zip(("digest_hi", "digest_lo", "digest_idx"), table.T, strict=True):
        np.save(out / f"{name}.npy", np.ascontiguousarray(column))
    info.update(chapters=len(digests), distinct_chars="".join(sorted(chars)), seconds=seconds, chars_in=chars_in,
                chars=chars_out)


def _warn(r: FileResult) -> None:
    if r.status != "ok":
        print(f"warning: skipping {r.path}: {r.reason}", file=sys.stderr)
    for w in r.warnings:
        print(f"warning: {r.path}: {w}", file=sys.stderr)


def _digest(text: str) -> tuple[int, int]:
    d = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(d[:8], "big"), int.from_bytes(d[8:16], "big")


def file_results(work: WorkDir, part: int) -> Iterator[FileResult]:
    with open(work.path("read", part) / "files.jsonl", encoding="utf-8") as f:
        for line in f:
            yield FileResult.from_json(line)


# --- merge: boilerplate and duplicates --------------------------------------------------------------------------

def merge(plan: Plan, work: WorkDir) -> dict:
    """Boilerplate keys (lines repeated across files, see `boilerplate`) and, per hash bucket of the chapters'
    digests, the chapters that repeat an earlier one (in input order): `drops-BBB-part.npy` / `drops-BBB-idx.npy`
    (partition, chapter). Returns the facts the checks before segmentation need."""
    parts = list(range(len(plan.partitions)))
    require(work, "read", parts, plan.read_key, ("files.jsonl", "digest_hi.npy", "digest_lo.npy", "digest_idx.npy"))
    key, start = plan.merge_key(), time.monotonic()
    if work.done("merge", ALL, key):
        print("merge: done earlier, kept")
        return work.info("merge")
    work.remove_unfinished("merge", ALL)
    info: dict = {}
    with work.output("merge", ALL, key, info) as out:
        info.update(boilerplate=_boilerplate(work, parts, out), duplicates=_duplicates(work, parts, out))
    print(f"merge: {files_in(plan, parts)} file(s): {info['boilerplate']:,} boilerplate line(s) repeated across "
          f"files, {info['duplicates']:,} duplicate chapter(s) in {time.monotonic() - start:.1f} s")
    return info


def _boilerplate(work: WorkDir, parts: list[int], out: Path) -> int:
    files, url = Counter(), set()
    for p in parts:
        for r in file_results(work, p):
            for k, has_url in r.repeated:
                files[k] += 1
                if has_url:
                    url.add(k)
    keys = sorted(k for k, n in files.items() if boilerplate.is_boilerplate(n, k in url))
    write_json(out / "boilerplate.json", keys)
    return len(keys)


def _duplicates(work: WorkDir, parts: list[int], out: Path) -> int:
    tables = [(p, *(np.load(work.path("read", p) / f"digest_{c}.npy", mmap_mode="r") for c in ("hi", "lo", "idx")))
              for p in parts]
    width, dropped = 1 << 56, 0
    for b in range(BUCKETS):
        pieces = []
        for p, hi, lo, idx in tables:
            s, e = np.searchsorted(hi, np.uint64(b * width)), np.searchsorted(hi, np.uint64(b * width + width - 1),
                                                                              "right")
            pieces.append((np.full(e - s, p, np.uint64), hi[s:e], lo[s:e], idx[s:e]))
        part, hi, lo, idx = (np.concatenate(c) for c in zip(*pieces, strict=True))
        order = np.lexsort((idx, part, lo, hi))
        hi, lo, part, idx = hi[order], lo[order], part[order], idx[order]
        repeat = np.zeros(len(hi), dtype=bool)
        repeat[1:] = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
        if repeat.any():  # two sorted columns: a partition finds its rows by binary search in the mapped file
            order = np.lexsort((idx[repeat], part[repeat]))
            np.save(out / f"drops-{b:03d}-part.npy", part[repeat][order])
            np.save(out / f"drops-{b:03d}-idx.npy", idx[repeat][order])
            dropped += int(repeat.sum())
    return dropped


def drops(work: WorkDir, part: int) -> set[int]:
    """The chapters of a partition that repeat an earlier chapter."""
    found: set[int] = set()
    for path in sorted(work.path("merge").glob("drops-*-part.npy")):
        parts = np.load(path, mmap_mode="r")
        s, e = np.searchsorted(parts, part), np.searchsorted(parts, part, "right")
        if e > s:
            idx = np.load(path.with_name(path.name.replace("-part", "-idx")), mmap_mode="r")
            found.update(int(i) for i in idx[s:e])
    return found


def check_before_segmenting(plan: Plan, work: WorkDir, merged: dict) -> None:
    """What can be known from the cleaned text fails now, not after hours of segmentation."""
    parts = range(len(plan.partitions))
    chapters = sum(work.info("read", p)["chapters"] for p in parts) - merged["duplicates"]
    if chapters == 0:
        reasons = [f"{r.path}: {r.reason}" for p in parts for r in file_results(work, p)]
        raise UserError("no usable text in any input file: " + "; ".join(reasons))
    if plan.options["val_ratio"] > 0 and chapters < 2:
        raise UserError("only one chapter in the corpus: cannot hold one out for validation (use --val-ratio 0)")
    if not plan.options.get("tokenizer_sha256"):  # a given vocabulary is what it is: [UNK]s are reported
        chars = set().union(*(work.info("read", p)["distinct_chars"] for p in parts))
        vocab_size_for(plan.options["tokenizer"], plan.options["vocab_size"], len(chars))


# --- segment ----------------------------------------------------------------------------------------------------

def segment_step(plan: Plan, work: WorkDir, parts: list[int], pool: LazyPool, cache_root: Path | None) -> None:
    """Per partition: words.jsonl ([file, chapter, digest hi, digest lo, words joined by segment.SEP]), the
    word counts by hash bucket (counts.tsv + counts_index.npy), kept.npy (chapter, lower bound of its ids,
    digest hi, lo) for the val split, and removed.json (characters per file under duplicate_chapter, boilerplate)."""
    require(work, "merge", [ALL], lambda p: plan.merge_key())
    todo = _todo(plan, work, "segment", parts, plan.segment_key)
    require(work, "read", todo, plan.read_key, ("chapters.jsonl",))
    if not todo:
        return
    keys = set(json.loads((work.path("merge") / "boilerplate.json").read_text(encoding="utf-8")))
    word = plan.options["tokenizer"] == "word"
    removed: dict[int, dict[int, Counter]] = {}
    jobs = _segment_jobs(work, todo, keys, removed, str(cache_root) if cache_root and word else None, word)
    results = ordered_map(pool, _segment_one, jobs, per_worker=16)  # chapters are small; keep every worker busy
    first = _first_file(plan, todo)
    total = sum(work.info("read", p)["chars"] for p in todo)
    with Progress("segment", total, files_in(plan, todo)) as bar:
        for p, group in itertools.groupby(results, key=lambda r: r[0]):
            info: dict = {}
            with work.output("segment", p, plan.segment_key(p), info) as out:
                chapters = _advancing((r[1:] for r in group if r[1] is not None), bar,
                                      lambda r, p=p: (r[4], first[p] + r[0]))
                _write_segmented(out, chapters, word, info)
                write_json(out / "removed.json", {n: dict(c) for n, c in sorted(removed.pop(p).items())})
        infos = [work.info("segment", p) for p in todo]
        cached = f" ({sum(i['segmented'] for i in infos):,} segmented now, the rest from the cache)" if word else ""
        bar.done(f"{sum(i['chapters'] for i in infos):,} chapters, {sum(i['chars'] for i in infos):,} characters"
                 f"{cached}")


def _segment_jobs(work: WorkDir, todo: list[int], keys: set[str], removed: dict, cache_root: str | None,
                  word: bool) -> Iterator[tuple]:
    """(partition, file, chapter, hi, lo, text, cache, word) per kept chapter, then (partition, None, …) to
    close the partition even when it keeps nothing; duplicates and boilerplate lines are counted as removed."""
    for p in todo:
        dropped, removed[p] = drops(work, p), {}
        for idx, (n, text) in enumerate(read_records(work.path("read", p) / "chapters.jsonl")):
            counts = removed[p].setdefault(n, Counter())
            if idx in dropped:
                counts["duplicate_chapter"] += len(text)
                continue
            lines = boilerplate.remove(text.split("\n"), keys, counts)
            if lines:
                yield (p, n, idx, *_digest(text), "\n".join(lines), cache_root, word)
        yield (p, None, None, 0, 0, "", None, word)


def _segment_one(job: tuple) -> tuple:
    p, n, idx, hi, lo, text, cache_root, word = job
    if n is None:
        return p, None, None, 0, 0, 0, "", False, 0.0
    start = time.process_time()
    joined, fresh = segment.segment_cached((text, cache_root)) if word else (text, False)
    return p, n, idx, hi, lo, len(text), joined, fresh, time.process_time() - start


def split_words(joined: str, word: bool) -> list[str]:
    """A chapter's words as stored in words.jsonl: joined by segment.SEP, or (char vocabulary) the text itself."""
    return (joined.split(segment.SEP) if joined else []) if word else list(joined)


def _write_segmented(out: Path, chapters: Iterator[tuple], word: bool, info: dict) -> None:
    counts: Counter = Counter()
    kept, fresh, seconds, chars = [], 0, 0.0, 0
    with open(out / "words.jsonl", "w", encoding="utf-8") as f:
        for n, idx, hi, lo, length, joined, cut, spent in chapters:
            words = split_words(joined, word)
            counts.update(words)
            f.write(json.dumps([n, idx, hi, lo, joined], ensure_ascii=False) + "\n")
            kept.append((idx, len(words) + 2, hi, lo))
            fresh, seconds, chars = fresh + cut, seconds + spent, chars + length
    np.save(out / "kept.npy", np.array(kept, dtype=np.uint64).reshape(-1, 4))
    _write_counts(out, counts)
    info.update(segmented=fresh, seconds=seconds, chars=chars, chapters=len(kept))


def _bucket(word: str) -> int:
    return zlib.crc32(word.encode()) % BUCKETS


def _write_counts(out: Path, counts: Counter) -> None:
    """word<TAB>count lines grouped by hash bucket (counts_index.npy holds each bucket's offset). Normalized text
    holds no tab, no control character and no line break but the newline word itself, written as segment.SEP."""
    groups: dict[int, list[str]] = {}
    for w in counts:
        groups.setdefault(_bucket(w), []).append(w)
    offsets = np.zeros(BUCKETS + 1, dtype=np.int64)
    with open(out / "counts.tsv", "wb") as f:
        for b in range(BUCKETS):
            offsets[b] = f.tell()
            words = sorted(groups.get(b, []))
            f.write("".join(f"{segment.SEP if w == chr(10) else w}\t{counts[w]}\n" for w in words).encode())
        offsets[BUCKETS] = f.tell()
    np.save(out / "counts_index.npy", offsets)


def _bucket_counts(work: WorkDir, parts: list[int], b: int) -> Counter:
    counts: Counter = Counter()
    for p in parts:
        index = np.load(work.path("segment", p) / "counts_index.npy")
        with open(work.path("segment", p) / "counts.tsv", "rb") as f:
            f.seek(int(index[b]))
            chunk = f.read(int(index[b + 1] - index[b])).decode()
        for line in chunk.split("\n")[:-1]:
            word, n = line.split("\t")
            counts["\n" if word == segment.SEP else word] += int(n)
    return counts


# --- vocab ------------------------------------------------------------------------------------------------------

def vocab_step(plan: Plan, work: WorkDir, given: str | None = None) -> Vocab:
    """The vocabulary from every partition's counts, one hash bucket at a time (the same tokens, in the same
    order, as counting the whole corpus at once), or the one of the folder `given` (--tokenizer PATH); and the val
    split's extra chapters (see `val_extra`)."""
    parts = list(range(len(plan.partitions)))
    require(work, "segment", parts, plan.segment_key, ("counts.tsv", "counts_index.npy", "kept.npy"))
    key = plan.vocab_key()
    if plan.options.get("tokenizer_sha256") and not work.done("vocab", ALL, key):
        _given_vocab(plan, work, parts, given)
    elif not work.done("vocab", ALL, key):
        work.remove_unfinished("vocab", ALL)
        opts = plan.options
        chars, best, start = Counter(), [], time.monotonic()
        # the words to keep while counting: a word vocabulary's size does not depend on the corpus's characters
        most = vocab_size_for(opts["tokenizer"], opts["vocab_size"], 0)
        for b in tqdm(range(BUCKETS), desc="vocab", unit="bucket", disable=None):
            counts = _bucket_counts(work, parts, b)
            for w, n in counts.items():
                for ch in w:
                    chars[ch] += n
            if opts["tokenizer"] == "word":  # the most frequent words so far, as (-count, word): plain tuple order
                best.extend((-n, w) for w, n in counts.items() if len(w) > 1 and n > 1)
                if len(best) > 2 * most:
                    best.sort()
                    del best[most:]
        chars.pop("\n", None)
        size = vocab_size_for(opts["tokenizer"], opts["vocab_size"], len(chars))
        words = [(w, -n) for n, w in sorted(best)[:size]]
        if opts["tokenizer"] == BPE:
            vocab = train_bpe(_bpe_lines(plan, work, parts), chars, size, opts["to_simplified"])
        else:
            vocab = Vocab(tokens_from_counts(chars, words, opts["tokenizer"], size), opts["tokenizer"],
                          opts["to_simplified"])
        extra = val_extra(work, parts, opts)
        with work.output("vocab", ALL, key, {"vocab_size": len(vocab), "val_extra": len(extra)}) as out:
            vocab.save(out / "tokenizer")
            np.save(out / "val_extra.npy", np.array(extra, dtype=np.uint64).reshape(-1, 2))
        print(f"vocab: {len(vocab):,} tokens ({opts['tokenizer']} vocabulary) from {len(chars):,} distinct "
              f"characters in {time.monotonic() - start:.1f} s")
    else:
        print("vocab: done earlier, kept")
    return Vocab.load(work.path("vocab") / "tokenizer")


# BPE learns from at most this many characters of the train chapters, drawn by digest when the corpus has more:
# `tokenizers` holds every distinct run between punctuation, its symbols and the places of each pair while it
# trains, so its memory grows with what it reads: 267, 484 and 791 MB peak for 1, 2.5 and 5 million characters of
# the test corpus at 16,000 tokens (about 130 MB per million), so about 1.4 GB here, whatever the corpus. The
# merges a 16K-32K vocabulary needs are the frequent pairs, which a sample of this size already counts well.
BPE_SAMPLE_CHARS = 10_000_000


def _bpe_lines(plan: Plan, work: WorkDir, parts: list[int]) -> Iterator[str]:
    """The lines BPE learns from, in partition order: the train chapters (never the held-out ones), all of them
    up to BPE_SAMPLE_CHARS characters, past that a share drawn by each chapter's digest (the same chapters for any
    workers or tasks)."""
    opts = plan.options
    total = sum(work.info("segment", p)["chars"] for p in parts)
    share = np.uint64(min(2**64 - 1, int(BPE_SAMPLE_CHARS / max(total, 1) * 2**64)))
    for p in parts:
        kept = np.load(work.path("segment", p) / "kept.npy")
        held = val_score(kept[:, 2], kept[:, 3], opts["seed"]) < val_threshold(opts["val_ratio"])
        drawn = val_score(kept[:, 2], kept[:, 3], opts["seed"] ^ 0x5EED) <= share
        rows = read_records(work.path("segment", p) / "words.jsonl")
        for (*_, joined), take in zip(rows, drawn & ~held, strict=True):
            if take:
                yield from joined.split("\n")


def _given_vocab(plan: Plan, work: WorkDir, parts: list[int], path: str | None) -> None:
    """The vocab step's output for --tokenizer PATH: its vocabulary as given (a pretrained tokenizer is saved so
    that AutoTokenizer loads it from the data directory and every model trained on it, see `vocab._as_ours`)."""
    opts = plan.options
    if path is None or tokenizer_digest(path) != opts["tokenizer_sha256"]:
        raise UserError(f"the tokenizer at --tokenizer {path} is not the one the plan step hashed: give the same "
                        "--tokenizer to every step, or run the plan step again")
    work.remove_unfinished("vocab", ALL)
    vocab = given_vocab(path, opts["to_simplified"], opts["special_tokens"])
    extra = val_extra(work, parts, opts)
    with work.output("vocab", ALL, plan.vocab_key(), {"vocab_size": len(vocab), "val_extra": len(extra)}) as out:
        vocab.save(out / "tokenizer")
        np.save(out / "val_extra.npy", np.array(extra, dtype=np.uint64).reshape(-1, 2))


def val_score(hi: np.ndarray, lo: np.ndarray, seed: int) -> np.ndarray:
    """A uniform 64-bit score per chapter from its digest and the seed (splitmix64): a chapter is held out when
    its score is below val_ratio × 2^64, whichever partition or task it is in."""
    with np.errstate(over="ignore"):
        z = hi.astype(np.uint64) ^ (lo.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def val_threshold(ratio: float) -> np.uint64:
    return np.uint64(int(ratio * 2**64))


def val_extra(work: WorkDir, parts: list[int], opts: dict) -> list[tuple[int, int]]:
    """Chapters added to the val split when the hash draw gave it no chapter or fewer ids than one sample: the
    train chapters of lowest score, until it has both (never the last train chapter). Ids are bounded below by
    words + 2, so the val split is sure to fill a sample."""
    if opts["val_ratio"] == 0:
        return []
    need, threshold = opts["seq_len"] + 1, val_threshold(opts["val_ratio"])
    held = total = ids = 0
    best = np.empty((0, 4), dtype=np.uint64)  # score, partition, chapter, ids lower bound
    for p in parts:
        kept = np.load(work.path("segment", p) / "kept.npy")
        score = val_score(kept[:, 2], kept[:, 3], opts["seed"])
        val = score < threshold
        held, total, ids = held + int(val.sum()), total + len(kept), ids + int(kept[val, 1].sum())
        rest = np.stack([score[~val], np.full((~val).sum(), p, np.uint64), kept[~val, 0], kept[~val, 1]], axis=1)
        both = np.concatenate([best, rest])
        best = both[np.lexsort((both[:, 2], both[:, 1], both[:, 0]))][:need]
    extra = []
    for _, p, idx, n in best:
        if (held + len(extra) and ids >= need) or held + len(extra) >= total - 1:
            break
        extra.append((int(p), int(idx)))
        ids += int(n)
    return sorted(extra)


# --- encode -----------------------------------------------------------------------------------------------------

def encode(plan: Plan, work: WorkDir, parts: list[int], pool: LazyPool) -> None:
    """Per partition: its train chapters packed into train-pNNNNN-*.tar (the packing rule within a partition),
    the ids that did not fill a sample (train_tail.npy) and its val chapters' ids (val.npy), for `finish`. The
    pool turns chapters into ids, a few dozen per job; this process packs and writes them in order."""
    require(work, "vocab", [ALL], lambda p: plan.vocab_key())
    todo = _todo(plan, work, "encode", parts, plan.encode_key)
    require(work, "segment", todo, plan.segment_key, ("words.jsonl",))
    if not todo:
        return
    first = _first_file(plan, todo)
    with Progress("encode", sum(work.info("segment", p)["chars"] for p in todo), files_in(plan, todo)) as bar:
        for p in todo:
            _encode_partition(plan, work, p, pool, bar, first[p])
        infos = [work.info("encode", p) for p in todo]
        bar.done(f"{sum(i['chapters'] for i in infos):,} chapters encoded to {sum(i['tokens'] for i in infos):,} "
                 f"ids, {sum(len(i['shards']) for i in infos)} train shard(s)")


def _encode_partition(plan: Plan, work: WorkDir, p: int, pool: LazyPool, bar: Progress, first: int) -> None:
    opts, start = plan.options, time.process_time()
    dtype = shards.dtype_for(work.info("vocab")["vocab_size"])
    extra = np.load(work.path("vocab") / "val_extra.npy")
    held = frozenset(int(i) for q, i in extra if q == p)
    per_shard = shards.samples_per_shard(parse_size(opts["shard_size"], "--shard-size"), opts["seq_len"], dtype)
    files: dict[int, Counter] = {}
    val, packer, info, worker_cpu, tokens = [], shards.Packer(opts["seq_len"], dtype), {}, 0.0, 0
    records = read_records(work.path("segment", p) / "words.jsonl")
    jobs = ((str(work.root), plan.vocab_key(), opts, held, chunk)
            for chunk in iter(lambda: list(itertools.islice(records, 32)), []))
    with work.output("encode", p, plan.encode_key(p), info) as out:
        with shards.ShardWriter(out, "train", f"train-p{p:05d}", per_shard) as writer:
            for chapters, spent in ordered_map(pool, _ids_of, jobs):
                for n, in_val, ids, stats in chapters:
                    files.setdefault(n, Counter()).update(stats)
                    if in_val:
                        val.append(ids)
                    else:
                        writer.add(packer.feed(ids))
                    bar.advance(stats["kept"], first + n)
                    tokens += len(ids)
                worker_cpu += spent if pool.workers > 1 else 0.0
        np.save(out / "train_tail.npy", packer.unused())
        np.save(out / "val.npy", np.concatenate(val) if val else np.empty(0, dtype))
        info.update(files={n: dict(c) for n, c in sorted(files.items())}, samples=packer.samples, tokens=tokens,
                    chapters=sum(c["chapters"] for c in files.values()),
                    shards=[s.to_json() for s in writer.written],
                    seconds=time.process_time() - start + worker_cpu)


def _ids_of(job: tuple[str, str, dict, frozenset, list]) -> tuple[list, float]:
    """Chapters of words.jsonl → (file, held out?, ids, stats) each, and the CPU seconds it took (a pool job)."""
    root, key, opts, held, records = job
    start = time.process_time()
    vocab = _vocab(root, key)
    dtype, threshold = shards.dtype_for(len(vocab)), val_threshold(opts["val_ratio"])
    out = []
    for n, idx, hi, lo, joined in records:
        words = split_words(joined, opts["tokenizer"] == "word")
        ids = np.array([vocab.mask, *vocab.ids_of_segmented(words), vocab.cls], dtype=dtype)
        score = val_score(np.array([hi], np.uint64), np.array([lo], np.uint64), opts["seed"])[0]
        in_val = (opts["val_ratio"] > 0 and score < threshold) or idx in held
        stats = {"chapters": 1, "kept": sum(map(len, words)), "unk": int(np.count_nonzero(ids == vocab.unk)),
                 "val_chapters": int(in_val)}
        if stats["unk"]:  # which characters became [UNK], for the warning (`unknown_chars`)
            text = "".join(words)
            lacking = set(vocab.unknown_chars(text))
            stats.update(Counter(UNKNOWN + ch for ch in text if ch in lacking))
        out.append((n, in_val, ids, stats))
    return out, time.process_time() - start


@functools.lru_cache(maxsize=1)
def _vocab(root: str, key: str) -> Vocab:
    """The vocabulary with this key, loaded once per process (its word → ids memo fills as chapters are encoded;
    the key, not the path, tells one vocabulary from the next)."""
    return Vocab.load(WorkDir(Path(root)).path("vocab") / "tokenizer")


# --- finish -----------------------------------------------------------------------------------------------------

def finish(plan: Plan, work: WorkDir, build: Path) -> tuple[dict[str, Split], dict]:
    """Fill `build` (the data directory being made): the tokenizer, each partition's train shards (hard links
    into the work directory where the file system allows), then the partitions' leftover train ids and all val
    ids packed in partition order into the tail and val shards. Returns the splits and the report."""
    parts = list(range(len(plan.partitions)))
    require(work, "encode", parts, plan.encode_key)  # every file: the shards become the dataset
    require(work, "read", parts, plan.read_key, ("files.jsonl",))
    require(work, "segment", parts, plan.segment_key, ("removed.json",))
    shutil.copytree(work.path("vocab") / "tokenizer", build / TOKENIZER_DIR)
    vocab = Vocab.load(build / TOKENIZER_DIR)
    dtype, seq_len = shards.dtype_for(len(vocab)), plan.options["seq_len"]
    per_shard = shards.samples_per_shard(parse_size(plan.options["shard_size"], "--shard-size"), seq_len, dtype)
    infos = [work.info("encode", p) for p in parts]
    train = [ShardInfo(**s) for info in infos for s in info["shards"]]
    for p, info in zip(parts, infos, strict=True):
        for s in info["shards"]:
            _link(work.path("encode", p) / Path(s["path"]).name, build / s["path"])
    tail = _pack_all(build, "train", "train-tail", [work.path("encode", p) / "train_tail.npy" for p in parts],
                     seq_len, dtype, per_shard)
    val = _pack_all(build, "val", "val", [work.path("encode", p) / "val.npy" for p in parts], seq_len, dtype,
                    per_shard)
    chapters = Counter()
    for info in infos:
        for stats in info["files"].values():
            chapters.update(val=stats.get("val_chapters", 0), all=stats["chapters"])
    splits = {"train": Split(chapters["all"] - chapters["val"], 0, 0, tail[1], train + tail[0])}
    if plan.options["val_ratio"] > 0:
        splits["val"] = Split(chapters["val"], 0, 0, val[1], val[0])
    for name, split in list(splits.items()):
        split.samples, split.tokens = sum(s.samples for s in split.shards), sum(s.tokens for s in split.shards)
        if split.samples == 0:
            raise UserError(f"the corpus is too small for --seq-len {seq_len}: the {name} split has no sample of "
                            f"{seq_len + 1} tokens")
    return splits, report(plan, work, vocab, infos)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _pack_all(build: Path, split: str, prefix: str, pieces: list[Path], seq_len: int, dtype: np.dtype,
              per_shard: int) -> tuple[list[ShardInfo], int]:
    """The ids of `pieces` (one partition's each, small) concatenated and packed; returns the shards and the
    number of ids left over."""
    packer = shards.Packer(seq_len, dtype)
    with shards.ShardWriter(build / split, split, prefix, per_shard) as writer:
        for path in pieces:
            writer.add(packer.feed(np.load(path, allow_pickle=False)))
    return writer.written, len(packer.unused())


UNKNOWN = "unknown:"  # a file's stats key prefix: occurrences of a character the vocabulary lacks


def unknown_chars(files: list[dict], top: int = 10) -> list[tuple[str, int]]:
    """The characters that became [UNK] most often in the encoded files' stats, with their counts."""
    counts: Counter = Counter()
    for stats in files:
        counts.update({k[len(UNKNOWN):]: v for k, v in stats.items() if k.startswith(UNKNOWN)})
    return counts.most_common(top)


def report(plan: Plan, work: WorkDir, vocab: Vocab, encoded: list[dict]) -> dict:
    """Per input file, in input order: how it was read, what was removed and why, what it gave; then totals."""
    files, steps = [], Counter()
    for p, info in enumerate(encoded):
        segmented = work.info("segment", p)
        extra = json.loads((work.path("segment", p) / "removed.json").read_text(encoding="utf-8"))
        for n, r in enumerate(file_results(work, p)):
            r.removed.update(extra.get(str(n), {}))
            stats = info["files"].get(str(n), {})
            files.append(r.report(stats.get("unk", 0), stats.get("kept", 0), stats.get("chapters", 0)))
        steps.update(read=work.info("read", p)["seconds"], segment=segmented["seconds"], encode=info["seconds"])
        steps["segmented_chapters"] += segmented["segmented"]
    ok = [f for f in files if f["status"] == "ok"]
    totals = {"files": len(files), "files_ok": len(ok), "files_refused": len(files) - len(ok),
              "paths_refused": len(plan.refused), "partitions": len(plan.partitions),
              "chapters": sum(f["chapters"] for f in ok), "chars_in": sum(f["chars_in"] for f in ok),
              "chars_kept": sum(f["chars_kept"] for f in ok), "unk": sum(f["unk"] for f in ok),
              "unknown_chars": unknown_chars([s for info in encoded for s in info["files"].values()]),
              "vocab_size": len(vocab), "tokenizer": vocab.kind, "segmented_chapters": steps.pop("segmented_chapters"),
              "cpu_seconds": {k: round(v, 2) for k, v in steps.items()}}
    refused = [{"path": path, "reason": reason} for path, reason in plan.refused]
    return {"files": files, "paths_refused": refused, "input_warnings": plan.warnings, "totals": totals}
