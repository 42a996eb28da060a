"""Word segmentation with thulac (seg_only), in a process pool, cached on disk by chapter content hash.

thulac is pure Python (~85k chars/s per core) and loads an ~800 MB model per process, so it runs once per worker,
and a chapter already segmented (same text, same segmenter) is read back from the cache instead of cut again.
A segmentation is a list of words whose concatenation is exactly the text; "\\n" and " " are words of their own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

SEP = "\x1f"  # never in normalized text (control characters are removed), so it can join words in the cache
_MAX_PIECE = 1000
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;…」』”])")


def _thulac_version() -> str:
    try:
        from importlib.metadata import version

        return version("thulac")
    except Exception:  # pragma: no cover - thulac always installed with the package
        return "unknown"


SEGMENTER_ID = f"thulac-{_thulac_version()}-seg_only-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"


@functools.cache
def _thulac():
    with contextlib.redirect_stdout(io.StringIO()):  # thulac prints "Model loaded succeed"
        import thulac

        return thulac.thulac(seg_only=True)


def segment_text(text: str, kind: str = "word") -> list[str]:
    """Words of a normalized text, newlines and spaces as words of their own; kind "char" gives characters."""
    if kind == "char":
        return list(text)
    words: list[str] = []
    for i, line in enumerate(text.split("\n")):
        if i:
            words.append("\n")
        for j, piece in enumerate(line.split(" ")):
            if j:
                words.append(" ")
            for chunk in _chunks(piece):
                words.extend(_cut(chunk))
    return words


def _chunks(piece: str) -> Iterator[str]:
    """Pieces of at most ~_MAX_PIECE chars, cut after sentence ends: thulac's cost grows badly on huge lines."""
    if len(piece) <= _MAX_PIECE:
        if piece:
            yield piece
        return
    buf = ""
    for sentence in _SENTENCE_END.split(piece):
        while len(sentence) > _MAX_PIECE:
            if buf:
                yield buf
                buf = ""
            yield sentence[:_MAX_PIECE]
            sentence = sentence[_MAX_PIECE:]
        if len(buf) + len(sentence) > _MAX_PIECE:
            yield buf
            buf = ""
        buf += sentence
    if buf:
        yield buf


def _cut(chunk: str) -> list[str]:
    words = [w for w, _ in _thulac().cut(chunk)]
    if "".join(words) != chunk:  # thulac altered the text (it collapses some whitespace): keep the text intact
        return list(chunk)
    return words


class SegmentCache:
    """One file per segmented chapter under `root`, named by the hash of (segmenter, text); written atomically.
    Entries are plain text (words joined by SEP), used only if they join to the very text asked for (a damaged
    entry is cut again); nothing read from the cache is ever executed or unpickled.

    The segmenter id holds thulac's version and a hash of this module, so a change to either starts afresh.
    """

    def __init__(self, root: Path | None):
        self.root = root

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(f"{SEGMENTER_ID}\n{text}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.txt"

    def get(self, text: str) -> list[str] | None:
        if self.root is None:
            return None
        try:
            joined = self._path(self.key(text)).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        words = joined.split(SEP) if joined else []
        return words if "".join(words) == text else None

    def put(self, text: str, words: list[str]) -> None:
        """Written atomically; a cache that cannot be written (full disk, read-only) only costs the next run time."""
        if self.root is None:
            return
        path = self._path(self.key(text))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(SEP.join(words), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpt-novel"


def segment_cached(args: tuple[str, str | None]) -> tuple[str, bool]:
    """One text's words joined by SEP (a string pickles far faster than a list), from the cache under the given
    root or cut and cached; and whether it was cut anew. Runs in a pool worker."""
    text, cache_root = args
    cache = SegmentCache(Path(cache_root) if cache_root else None)
    words = cache.get(text)
    if words is not None:
        return SEP.join(words), False
    words = segment_text(text)
    cache.put(text, words)
    return SEP.join(words), True
