"""One input file → its cleaned chapters and what happened to its characters (`FileResult`), cached on disk.

This is the per-file part of `prepare`'s read step: decode (`ingest`), normalize and clean (`clean`), split into
chapters (`chapters`), and what a global reduce needs without re-reading the text: the keys of the lines the file
repeats (`boilerplate`) and its distinct characters. The result is memoized by file content, options and this
code, as type-checked JSON that is never executed: a warm re-run skips the cleaning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gpt_novel.data import boilerplate, chapters, charsets, clean, ingest

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
    lines_recoded: int = 0
    # [key, has_url] of the lines this file repeats across its chapters (`boilerplate.repeated`)
    repeated: list = field(default_factory=list)
    # the sorted distinct characters of the kept chapter texts, newline excluded: the vocabulary check needs no text
    distinct_chars: str = ""

    def to_json(self) -> str:
        # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs
        return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FileResult:
        """The inverse of `to_json`. Raises ValueError for anything else: the cache is data, never code."""
        fields = json.loads(text)
        if not isinstance(fields, dict) or set(fields) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError("not a FileResult")
        result = cls(**fields)
        if isinstance(result.removed, dict):
            result.removed = Counter(result.removed)
        result._check_types()
        return result

    def _check_types(self) -> None:
        """Every field of the type its default has; lists of strings; counts that are ints."""
        template = FileResult("")
        for f in dataclasses.fields(self):
            if type(getattr(self, f.name)) is not type(getattr(template, f.name)):
                raise ValueError(f"{f.name} is not a {type(getattr(template, f.name)).__name__}")
        if not all(isinstance(x, str) for x in [*self.chapters, *self.warnings]):
            raise ValueError("chapters and warnings must be strings")
        if not all(isinstance(k, str) and type(v) is int for k, v in self.removed.items()):
            raise ValueError("removed must map reasons to counts")
        if not all(type(r) is list and len(r) == 2 and _is_key(r[0]) and type(r[1]) is bool for r in self.repeated):
            raise ValueError("repeated must hold [key, has_url] pairs")

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
                self.undecodable_bytes, "lines_recoded": self.lines_recoded, "unk": unk, "warnings": self.warnings}


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
    result.lines_recoded = decoded.lines_recoded
    result.chars_in = sum(len(t) for t in decoded.texts)
    result.script = charsets.script_of(decoded.texts[0][:200_000])
    found_all: list[chapters.Chapter] = []
    url_lines: set[str] = set()
    for text in decoded.texts:
        longest = max((len(line) for line in text.splitlines()), default=0)
        if longest > LONG_LINE:
            result.warnings.append(f"a line of {longest} characters (no line breaks?); segmented in pieces")
        norm = clean.normalize(text)
        if to_simplified:
            norm = clean.to_simplified(norm)
        lines = clean.clean_lines(chapters.unwrap(chapters.split_run_on(norm.split("\n"))), result.removed,
                                  url_lines)
        found = chapters.split_chapters(lines, result.removed)
        if len(found) == 1 and not found[0].heading and len(decoded.texts) == 1:
            result.warnings.append("no chapter headings found: the whole file is one chapter")
        found_all.extend(found)
    result.chapters = [ch.text for ch in found_all]
    result.repeated = [[k, has_url] for k, has_url in boilerplate.repeated(found_all, url_lines)]
    result.distinct_chars = "".join(sorted(set().union(*result.chapters) - {"\n"}))
    if not result.chapters:
        result.status, result.reason = "refused", f"no text left after cleaning{_removed_summary(result.removed)}"
    return result


def _removed_summary(removed: Counter) -> str:
    """' (ad 700,000; url 12)': where the characters of a refused file went, largest first."""
    counts = sorted(((n, reason) for reason, n in removed.items() if n), key=lambda x: (-x[0], x[1]))
    return f" ({'; '.join(f'{reason} {n:,}' for n, reason in counts)})" if counts else ""


def _is_key(k: object) -> bool:
    return isinstance(k, str) and len(k) == 16 and all(c in "0123456789abcdef" for c in k)


# The per-file result depends on these modules' code (this one's included), so their bytes are part of its cache key.
_READ_CODE = hashlib.sha256(b"".join(Path(f).read_bytes() for f in (__file__, ingest.__file__, charsets.__file__,
                                                                     clean.__file__, chapters.__file__,
                                                                     boilerplate.__file__)))


def read_cache_path(sha: str, to_simplified: bool, cache_root: str | None) -> Path | None:
    if not cache_root:
        return None
    key = _READ_CODE.copy()
    key.update(f"{sha}|{to_simplified}".encode())
    return Path(cache_root, "files", f"{key.hexdigest()}.json")


def read_job(args: tuple[str, str, bool, str | None]) -> FileResult:
    """read_and_split, memoized on disk by (file content, options, code): a warm re-run skips the cleaning."""
    path, sha, to_simplified, cache_root = args
    cached = read_cache_path(sha, to_simplified, cache_root)
    result = _load_cached(cached, path)
    if result is None:
        result = read_and_split(path, to_simplified)
        _store_cached(cached, result)
    return result


def _load_cached(cached: Path | None, path: str) -> FileResult | None:
    """The cached result, or None when absent, damaged or not ours (then it is recomputed and overwritten)."""
    if cached is None:
        return None
    try:
        result = FileResult.from_json(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        return None
    result.path = path
    return result


def _store_cached(cached: Path | None, result: FileResult) -> None:
    """Written atomically; a cache that cannot be written (full disk, read-only) only costs the next run time."""
    if cached is None:
        return
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(result.to_json(), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
