#!/usr/bin/env python3
"""Download public-domain classic Chinese novels from Project Gutenberg into a folder.

The repository ships no corpus; this gives users a real one in one command::

    python tools/fetch_corpus.py data/raw
    python tools/fetch_corpus.py data/raw --only hongloumeng xiyouji

Standard library only, so it runs before the project's dependencies are installed.
Each book ends up as ``OUT_DIR/NAME.txt`` (UTF-8, ``\\n`` line endings, Gutenberg's
license header and footer removed) plus ``OUT_DIR/NAME.sha256``, which records the
sha256 of the bytes as downloaded so a later run can tell whether the file on disk
matches a pinned checksum without downloading it again.

Exit status: 0 when every selected book is present at the end, 1 when some failed
(e.g. no network, checksum mismatch), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Book:
    """One Project Gutenberg ebook and where it goes on disk."""

    id: int
    name: str
    title: str
    author: str
    sha256: str | None


# (gutenberg ebook id, short name, title, author, sha256 of the downloaded pg{id}.txt or None).
# The sha256 values are None because they were written on a machine without internet access, so
# the real digests could not be computed. The tool prints the digest of every unpinned download:
# a maintainer should paste those values here so that later downloads are verified.
BOOKS: tuple[Book, ...] = (
    Book(24264, "hongloumeng", "红楼梦", "曹雪芹", None),
    Book(23962, "xiyouji", "西游记", "吴承恩", None),
    Book(23950, "sanguoyanyi", "三国演义", "罗贯中", None),
    Book(23863, "shuihuzhuan", "水浒传", "施耐庵", None),
    Book(24032, "rulinwaishi", "儒林外史", "吴敬梓", None),
    Book(23910, "fengshenyanyi", "封神演义", "许仲琳", None),
)

DEFAULT_BASE_URL = "https://www.gutenberg.org"
USER_AGENT = "gpt-novel-fetch-corpus/1.0 (+https://www.gutenberg.org/policy/robot_access.html)"
RETRY_DELAY_S = 2.0  # multiplied by the attempt number; tests set it to 0
MAX_BYTES = 64 * 1024 * 1024  # a novel is a few MiB; anything far larger is not the file we asked for
CHUNK_BYTES = 64 * 1024

STATUS_DOWNLOADED = "downloaded"
STATUS_PRESENT = "already there"
FAILED_PREFIX = "FAILED: "

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_START_RE = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK\b.*$", re.IGNORECASE | re.MULTILINE)
_END_RE = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG EBOOK\b.*$", re.IGNORECASE | re.MULTILINE)


class UsageError(Exception):
    """Bad command-line input or table file: exit status 2, not a per-book failure."""


class BookError(Exception):
    """One book could not be fetched; the message is the one-line reason printed for it."""


# --------------------------------------------------------------------------- table


def book_from_dict(raw: object) -> Book:
    """Validate one table entry, so a typo fails up front instead of mid-download."""
    if not isinstance(raw, dict):
        raise UsageError(f"table entry must be an object, got {raw!r}")
    missing = {"id", "name", "title", "author", "sha256"} - raw.keys()
    if missing:
        raise UsageError(f"table entry {raw!r} lacks {', '.join(sorted(missing))}")
    book_id, name, sha = raw["id"], raw["name"], raw["sha256"]
    if isinstance(book_id, bool) or not isinstance(book_id, int) or book_id <= 0:
        raise UsageError(f"table entry {name!r}: id must be a positive integer, got {book_id!r}")
    # The name becomes a file name: refuse anything that could escape OUT_DIR.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(f"table entry id {book_id}: name must match {_NAME_RE.pattern}, got {name!r}")
    if not isinstance(raw["title"], str) or not isinstance(raw["author"], str):
        raise UsageError(f"table entry {name!r}: title and author must be strings")
    if sha is not None and not (isinstance(sha, str) and _SHA256_RE.fullmatch(sha.lower())):
        raise UsageError(f"table entry {name!r}: sha256 must be null or 64 hex digits, got {sha!r}")
    return Book(book_id, name, raw["title"], raw["author"], sha.lower() if sha else None)


def load_table(path: Path) -> tuple[Book, ...]:
    """Read a JSON table that replaces BOOKS (e.g. other ebooks, or pinned checksums)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read table {path}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"table {path} must be a non-empty JSON list of objects")
    books = tuple(book_from_dict(entry) for entry in raw)
    check_unique(books)
    return books


def check_unique(books: Sequence[Book]) -> None:
    """Two entries with one name would overwrite each other's output file."""
    seen: set[str] = set()
    for book in books:
        if book.name in seen:
            raise UsageError(f"duplicate book name {book.name!r} in table")
        seen.add(book.name)


def select_books(books: Sequence[Book], only: Sequence[str] | None) -> tuple[Book, ...]:
    """Apply --only, rejecting unknown names so a typo is not silently a no-op."""
    if not only:
        return tuple(books)
    by_name = {book.name: book for book in books}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise UsageError(f"unknown book name(s): {', '.join(unknown)} (known: {', '.join(by_name)})")
    return tuple(by_name[name] for name in dict.fromkeys(only))


# --------------------------------------------------------------------------- download


def book_url(base_url: str, book_id: int) -> str:
    """Gutenberg's stable plain-text cache URL; base_url is swappable for tests and mirrors."""
    return f"{base_url.rstrip('/')}/cache/epub/{book_id}/pg{book_id}.txt"


def describe_error(exc: BaseException) -> str:
    """One readable line for a network error, instead of a traceback."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"network error: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return "network error: timed out"
    return f"network error: {exc}"


def is_retryable(exc: BaseException) -> bool:
    """Client errors (404, 403...) will not fix themselves; everything else may."""
    return not (isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 429)


def download_once(url: str, dest: Path, timeout: float) -> str:
    """Stream url into dest and return its sha256, so large files never sit in memory twice."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
        while chunk := response.read(CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_BYTES:
                raise BookError(f"download larger than {MAX_BYTES} bytes; refusing")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, timeout: float, retries: int) -> str:
    """Download with retries on transient network errors; raise BookError with one line otherwise."""
    for attempt in range(retries + 1):
        try:
            return download_once(url, dest, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if attempt >= retries or not is_retryable(exc):
                raise BookError(describe_error(exc)) from None
            time.sleep(RETRY_DELAY_S * (attempt + 1))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- text


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Keep only the text between Gutenberg's START and END marker lines.

    The license boilerplate would otherwise be learned as if it were part of the novel.
    Returns (text, found); when either marker is missing the whole text is kept, because
    cutting at a guessed position could silently lose part of the book.
    """
    start = _START_RE.search(text)
    end = _END_RE.search(text, start.end()) if start else None
    if start is None or end is None:
        return text, False
    return text[start.end() : end.start()].strip("\n") + "\n", True


def decode(data: bytes) -> str:
    """UTF-8 (BOM dropped) with \\n line endings, so every book looks the same to the tokenizer."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BookError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- files


def temp_path(out_dir: Path, name: str, suffix: str) -> Path:
    """A fresh hidden file in out_dir, on the same filesystem so os.replace is atomic."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=out_dir)
    os.close(fd)
    return Path(path)


def write_atomic(path: Path, text: str) -> None:
    """Write text so that path is either absent, the old file, or the complete new file."""
    tmp = temp_path(path.parent, path.name, ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def recorded_sha256(out_dir: Path, book: Book) -> str | None:
    """The sha256 saved beside NAME.txt when it was downloaded, if any."""
    try:
        return (out_dir / f"{book.name}.sha256").read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def is_present(out_dir: Path, book: Book) -> bool:
    """NAME.txt exists and, when the table pins a checksum, was made from exactly that download."""
    if not (out_dir / f"{book.name}.txt").is_file():
        return False
    return book.sha256 is None or recorded_sha256(out_dir, book) == book.sha256


# --------------------------------------------------------------------------- per book


def fetch_book(out_dir: Path, book: Book, base_url: str, timeout: float, retries: int) -> str:
    """Download, verify, strip and store one book; return a note on its checksum; raise BookError on failure."""
    part: Path | None = None
    try:
        part = temp_path(out_dir, book.name, ".part")
        digest = download(book_url(base_url, book.id), part, timeout, retries)
        if book.sha256 is not None and digest != book.sha256:
            raise BookError(f"sha256 mismatch: expected {book.sha256}, got {digest}")
        text, found = strip_gutenberg(decode(part.read_bytes()))
        if not found:
            print(f"warning: {book.name}: Gutenberg START/END markers not found; keeping the whole text",
                  file=sys.stderr)
        write_atomic(out_dir / f"{book.name}.txt", text)
        write_atomic(out_dir / f"{book.name}.sha256", f"{digest}  pg{book.id}.txt\n")
    except OSError as exc:  # disk full, permissions: still one line, not a traceback
        raise BookError(f"cannot write: {exc}") from None
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    if book.sha256 is None:
        return f"sha256 {digest}, not pinned: add it to the table"
    return "sha256 verified"


def fetch(out_dir: str | os.PathLike[str], books: Sequence[Book], base_url: str = DEFAULT_BASE_URL,
          timeout: float = 30.0, retries: int = 2) -> dict[str, str]:
    """Fetch every book into out_dir and return {name: status}; one failure never stops the others.

    A status is "downloaded", "already there", or "FAILED: reason"; one line per book is printed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, str] = {}
    for book in books:
        note = ""
        if is_present(out, book):
            status = STATUS_PRESENT
        else:
            try:
                note = f" ({fetch_book(out, book, base_url, timeout, retries)})"
                status = STATUS_DOWNLOADED
            except BookError as exc:
                status = f"{FAILED_PREFIX}{exc}"
        statuses[book.name] = status
        print(f"{book.name} ({book.title}, {book.author}): {status}{note}", flush=True)
    return statuses


# --------------------------------------------------------------------------- CLI


def positive_float(value: str) -> float:
    """argparse type: a timeout of 0 or less would make every download fail."""
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type for --retries."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; kept separate so --help stays in one place."""
    names = ", ".join(book.name for book in BOOKS)
    parser = argparse.ArgumentParser(
        description="Download public-domain classic Chinese novels from Project Gutenberg.",
        epilog=f"Default books: {names}.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder for NAME.txt files (created if missing)")
    parser.add_argument("--only", metavar="NAME", nargs="+", action="extend", help="fetch only these books")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help=f"mirror or test server (default {DEFAULT_BASE_URL})")
    parser.add_argument("--table", metavar="FILE", type=Path,
                        help='JSON list of {"id", "name", "title", "author", "sha256"} replacing the built-in table')
    parser.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--retries", type=non_negative_int, default=2,
                        help="extra attempts after a network error (default 2)")
    return parser


def resolve_books(args: argparse.Namespace) -> tuple[Book, ...]:
    """The books this run should fetch, from the built-in or given table and --only."""
    books = load_table(args.table) if args.table else BOOKS
    return select_books(books, args.only)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status instead of exiting, so tests can call it."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    if not args.base_url.startswith(("http://", "https://")):
        print(f"error: --base-url must start with http:// or https://, got {args.base_url!r}", file=sys.stderr)
        return 2
    if args.out_dir.exists() and not args.out_dir.is_dir():
        print(f"error: {args.out_dir} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        books = resolve_books(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create {args.out_dir}: {exc}", file=sys.stderr)
        return 1
    statuses = fetch(args.out_dir, books, args.base_url, args.timeout, args.retries)
    failed = [name for name, status in statuses.items() if status.startswith(FAILED_PREFIX)]
    if failed:
        print(f"{len(failed)} of {len(statuses)} book(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
