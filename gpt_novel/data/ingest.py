"""Input files → decoded text, with the encoding judged by the text it produces, never guessed silently.

Chinese novel downloads come in UTF-8 (with or without BOM), UTF-16, GBK/GB18030 and Big5/CP950/Big5-HKSCS. Big5
bytes decode *without error* as GB18030 into mojibake, so a decode is accepted only when the text it gives is
plausible Chinese (see `charsets.plausibility`) and clearly better than the other families' decodes.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gpt_novel.data import charsets
from gpt_novel.errors import UserError

TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".json", ".jsonl")

# Families of codecs; within a family the first codec that decodes with the fewest errors is reported.
_FAMILIES = {
    "utf-8": ("utf-8",),
    "gb": ("gbk", "gb18030"),
    "big5": ("big5", "cp950", "big5hkscs"),
}
MIN_PLAUSIBILITY = 0.9
MIN_MARGIN = 0.1
MAX_ERROR_SHARE = 0.01


class Decoding(NamedTuple):
    """How the bytes became text; `lines_recoded` lines of a mixed file were decoded as `recoded_as` instead."""

    encoding: str
    text: str
    plausibility: float
    undecodable_bytes: int
    lines_recoded: int = 0
    recoded_as: str = ""


class RefusedFile(Exception):
    """A file that cannot be read with confidence; the run goes on without it and lists it in the report."""


@dataclass
class Decoded:
    """One input file's text(s) and how they were obtained."""

    path: str
    texts: list[str]
    encoding: str
    confidence: float
    undecodable_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    lines_recoded: int = 0


@dataclass
class Found:
    """What the walk over the inputs found: files to read, paths it could not use (with why), warnings."""

    files: list[Path] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_inputs(inputs: list[str], exclude: Callable[[Path], bool] = lambda path: False) -> Found:
    """Every .txt/.json/.jsonl under the inputs, sorted so that the order (and so the output) never depends on the
    file system. Nothing is skipped silently: a directory that cannot be listed, or a matching name that is not a
    readable regular file, is refused with its reason. Symbolic links to directories are followed once (a loop is
    a warning, not a hang). `exclude` leaves out paths the caller owns (the output being written)."""
    found: Found = Found()
    visited: dict[tuple[int, int], Path] = {}
    for item in inputs:
        if not exclude(Path(item)):
            _add_input(Path(item), found, visited, exclude)
    if not found.files:
        refused = "".join(f"; {path}: {reason}" for path, reason in found.refused)
        raise UserError(f"no .txt, .json or .jsonl files under: {' '.join(inputs)}{refused}")
    found.files = sorted(set(found.files), key=str)
    found.refused.sort()
    return found


def _add_input(path: Path, found: Found, visited: dict, exclude: Callable[[Path], bool]) -> None:
    """A file named on the command line is taken whatever its suffix; a directory is searched."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"input not found: {path}") from None
    except OSError as e:
        found.refused.append((str(path), f"cannot read: {e.strerror}"))
        return
    if stat.S_ISDIR(mode):
        _walk(path, found, visited, exclude)
    elif stat.S_ISREG(mode):
        found.files.append(path)
    else:
        found.refused.append((str(path), "not a regular file (a pipe, socket or device)"))


def _walk(root: Path, found: Found, visited: dict, exclude: Callable[[Path], bool]) -> None:
    """Depth first in name order, following symbolic links to directories once each."""
    stack = [root]
    while stack:
        directory = stack.pop()
        if not _first_visit(directory, directory is root, found, visited):
            continue
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.refused.append((str(directory), f"cannot list the directory: {e.strerror}"))
            continue
        subdirs = []
        for entry in entries:
            path, kind = Path(entry.path), _kind(entry)
            if exclude(path):
                continue
            if kind == "directory":
                subdirs.append(path)
            elif path.suffix.lower() in TEXT_SUFFIXES + JSON_SUFFIXES:
                if kind == "file":
                    found.files.append(path)
                else:
                    found.refused.append((str(path), kind))
        stack.extend(reversed(subdirs))


def _kind(entry: os.DirEntry) -> str:
    """'directory', 'file' (regular, links followed), or why the entry is neither."""
    try:
        if entry.is_dir():
            return "directory"
        if entry.is_file():
            return "file"
        if entry.is_symlink() and not os.path.exists(entry.path):
            return "broken symbolic link"
    except OSError as e:
        return f"cannot read: {e.strerror}"
    return "not a regular file (a pipe, socket or device)"


def _first_visit(directory: Path, top: bool, found: Found, visited: dict[tuple[int, int], Path]) -> bool:
    """True the first time a directory (by device and inode) is met; a link back to an ancestor is a loop."""
    try:
        st = directory.stat()
    except OSError as e:
        found.refused.append((str(directory), f"cannot read: {e.strerror}"))
        return False
    first = visited.setdefault((st.st_dev, st.st_ino), directory)
    if first is directory:
        return True
    if first in directory.parents:
        found.warnings.append(f"{directory}: symbolic link loop back to {first}; not followed")
    elif not top:  # the same directory named twice on the command line needs no warning
        found.warnings.append(f"{directory}: the same directory as {first} (symbolic link); read once")
    return False


def read_file(path: Path) -> Decoded:
    """Decode one input file (text or GPT2-Chinese JSON/JSONL). Raises RefusedFile with a one-line reason."""
    return decode_file(path.read_bytes(), path)


def decode_file(data: bytes, path: Path) -> Decoded:
    """`read_file` on bytes already read (an upload); `path` names them and its suffix says whether they are JSON."""
    if not data.strip():
        raise RefusedFile("empty file")
    got = detect_and_decode(data)
    if not got.text.strip():
        raise RefusedFile("empty file (only a byte-order mark or whitespace)")
    decoded = Decoded(str(path), [got.text], got.encoding, got.plausibility, got.undecodable_bytes,
                      lines_recoded=got.lines_recoded)
    if got.undecodable_bytes:
        decoded.warnings.append(f"{got.undecodable_bytes} undecodable byte(s) as {got.encoding}; removed and counted")
    if got.lines_recoded:
        decoded.warnings.append(f"{got.lines_recoded} line(s) decoded as {got.recoded_as}: the file mixes encodings")
    if path.suffix.lower() in JSON_SUFFIXES:
        decoded.texts = [t for t in _json_articles(got.text, path) if t.strip()]
        if not decoded.texts:
            raise RefusedFile("no articles (the JSON holds no non-empty text)")
    return decoded


def read_text(path: Path) -> tuple[str, list[str]]:
    """A text file the user hands over (a prompt, an upload), decoded exactly as `prepare` decodes novels: the text
    and the warnings. Raises UserError with prepare's one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    return decode_text(data, str(path))


def decode_text(data: bytes, name: str) -> tuple[str, list[str]]:
    """`read_text` on bytes (an upload, read as content, never as a path); `name` is what messages call them."""
    try:
        decoded = decode_file(data, Path(name))
    except RefusedFile as e:
        raise UserError(f"{name}: {e}") from None
    return "\n".join(decoded.texts), [f"{name}: {w}" for w in decoded.warnings]


def detect_and_decode(data: bytes) -> Decoding:
    """Decode the bytes, judging the encoding by the text. Raises RefusedFile when not confident."""
    bom = _bom_decode(data)
    if bom is not None:
        return Decoding(*bom)
    if b"\x00" in data[:65536]:
        utf16 = _utf16_without_bom(data)
        if utf16 is not None:
            return Decoding(*utf16)
        raise RefusedFile("binary file (contains NUL bytes), not text")
    if _control_share(data[:65536]) > 0.05:
        raise RefusedFile("binary file (many control bytes), not text")
    try:
        text = data.decode("utf-8")
        return Decoding("utf-8", text, charsets.plausibility(text), 0)
    except UnicodeDecodeError:
        pass
    return _legacy_or_mixed(data)


def _legacy_or_mixed(data: bytes) -> Decoding:
    """Bytes that are not all UTF-8: one legacy family, or UTF-8 lines among the lines of one legacy family (a file
    pieced together from several downloads). Then each line is decoded as what it is, so neither part becomes
    mojibake, as the whole file decoded as either encoding would. (A line break is one byte that never occurs
    inside a multi-byte character of these encodings, so cutting at line breaks cuts no character.)"""
    lines = data.splitlines(keepends=True)
    utf8 = {i for i, line in enumerate(lines) if _plausible_utf8(line)}
    if utf8:
        legacy = b"".join(line for i, line in enumerate(lines) if i not in utf8)
        with contextlib.suppress(RefusedFile):  # then the whole file is judged, as when no line is UTF-8
            codec = _best_family(legacy)[0]
            if codec != "utf-8":  # else damaged UTF-8, which the whole-file judgement counts
                return _decode_lines(lines, {i for i in utf8 if _better_as_utf8(lines[i], codec)}, codec)
    return Decoding(*_best_family(data))


def _plausible_utf8(line: bytes) -> bool:
    if line.isascii():
        return False
    try:
        return charsets.plausibility(line.decode("utf-8")) >= MIN_PLAUSIBILITY
    except UnicodeDecodeError:
        return False


def _better_as_utf8(line: bytes, codec: str) -> bool:
    """A line that is plausible Chinese as UTF-8 and clearly less so in the file's legacy encoding."""
    legacy, errors = _decode_counting(line, codec)
    legacy_score = charsets.plausibility(legacy) - errors / max(1, len(legacy))
    return charsets.plausibility(line.decode("utf-8")) - legacy_score >= MIN_MARGIN


def _decode_lines(lines: list[bytes], as_utf8: set[int], codec: str) -> Decoding:
    """Runs of UTF-8 lines as UTF-8, the rest as `codec`; the encoding named is that of most non-ASCII lines."""
    parts, errors = [], 0
    for is_utf8, run in itertools.groupby(range(len(lines)), key=as_utf8.__contains__):
        chunk = b"".join(lines[i] for i in run)
        text, bad = (chunk.decode("utf-8"), 0) if is_utf8 else _decode_counting(chunk, codec)
        parts.append(text)
        errors += bad
    text = "".join(parts)
    score = charsets.plausibility(text) - errors / max(1, len(text))
    legacy_lines = sum(1 for i, line in enumerate(lines) if i not in as_utf8 and not line.isascii())
    if legacy_lines >= len(as_utf8):
        return Decoding(codec, text, score, errors, len(as_utf8), "utf-8")
    return Decoding("utf-8", text, score, errors, legacy_lines, codec)


def _bom_decode(data: bytes) -> tuple[str, str, float, int] | None:
    for bom, codec, name in (
        (codecs.BOM_UTF32_LE, "utf-32", "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32", "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16", "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "utf-16"),
    ):
        if data.startswith(bom):
            text, errors = _decode_counting(data, codec)
            if errors > MAX_ERROR_SHARE * len(data):
                raise RefusedFile(f"starts with a {name} byte-order mark but {errors} bytes do not decode as {name}")
            return name, text, charsets.plausibility(text), errors
    return None


def _utf16_without_bom(data: bytes) -> tuple[str, str, float, int] | None:
    """NUL bytes in a text file mean UTF-16 without a BOM, if one byte order gives plausible text."""
    if len(data) % 2:
        return None
    best = None
    for codec in ("utf-16-le", "utf-16-be"):
        text, errors = _decode_counting(data, codec)
        score = charsets.plausibility(text) - errors / max(1, len(text))
        if any(ch < " " and ch not in "\t\n\r\f" for ch in text[:4096]):
            continue  # the wrong byte order turns ASCII into control-free CJK, the right one never into controls
        if score >= MIN_PLAUSIBILITY and errors <= MAX_ERROR_SHARE * len(data) and (best is None or score > best[2]):
            best = (codec, text, score, errors)
    return best


def _control_share(sample: bytes) -> float:
    controls = sum(1 for b in sample if b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D, 0x1A, 0x1B))
    return controls / max(1, len(sample))


def _decode_counting(data: bytes, codec: str) -> tuple[str, int]:
    """Decode with U+FFFD for bad bytes and return how many were replaced (never silently dropped)."""
    text = data.decode(codec, errors="replace")
    # A U+FFFD that the file itself holds in valid UTF-8 is not a decoding error; count only those we introduced.
    already = data.count("\ufffd".encode()) if codec.startswith("utf-8") else 0
    return text, text.count("\ufffd") - already


def _best_family(data: bytes) -> tuple[str, str, float, int]:
    results = []
    for family, names in _FAMILIES.items():
        best = None
        for name in names:
            text, errors = _decode_counting(data, name)
            if best is None or errors < best[3]:
                best = (name, text, 0.0, errors)
            if errors == 0:
                break
        name, text, _, errors = best
        score = charsets.plausibility(text) - errors / max(1, len(text))
        results.append((score, family, name, text, errors))
    results.sort(key=lambda r: -r[0])
    (score, _, name, text, errors), runner_up = results[0], results[1]
    summary = ", ".join(f"{r[2]} {r[0]:.2f}" for r in results)
    if score < MIN_PLAUSIBILITY or score - runner_up[0] < MIN_MARGIN:
        raise RefusedFile(f"cannot tell the encoding with confidence (plausibility: {summary}); convert it to UTF-8")
    if errors > MAX_ERROR_SHARE * len(data):
        raise RefusedFile(f"{errors} bytes do not decode as {name}, the likeliest encoding; the file looks damaged")
    return name, text, score, errors


def _json_articles(text: str, path: Path) -> list[str]:
    """GPT2-Chinese's train.json (a JSON list of strings) or JSONL (a string or {"text": ...} per line)."""
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise RefusedFile(f"not valid JSON ({e.msg} at line {e.lineno})") from None
        return [_article_text(item, path, i) for i, item in enumerate(items)]
    articles = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise RefusedFile(f"line {lineno} is not valid JSON ({e.msg})") from None
        articles.append(_article_text(item, path, lineno))
    return articles


def _article_text(item: object, path: Path, where: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise RefusedFile(f"item {where} is neither a string nor an object with a \"text\" string")
