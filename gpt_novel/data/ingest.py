"""Input files → decoded text, with the encoding judged by the text it produces, never guessed silently.

Chinese novel downloads come in UTF-8 (with or without BOM), UTF-16, GBK/GB18030 and Big5/CP950/Big5-HKSCS. Big5
bytes decode *without error* as GB18030 into mojibake, so a decode is accepted only when the text it gives is
plausible Chinese (see `charsets.plausibility`) and clearly better than the other families' decodes.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from pathlib import Path

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


def find_inputs(inputs: list[str]) -> list[Path]:
    """Every .txt/.json/.jsonl under the inputs, sorted so that the order (and so the output) never depends on the
    file system."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES + JSON_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"input not found: {item}")
    if not found:
        raise UserError(f"no .txt, .json or .jsonl files under: {' '.join(inputs)}")
    return sorted(set(found), key=lambda f: str(f))


def read_file(path: Path) -> Decoded:
    """Decode one input file (text or GPT2-Chinese JSON/JSONL). Raises RefusedFile with a one-line reason."""
    data = path.read_bytes()
    if not data.strip():
        raise RefusedFile("empty file")
    encoding, text, confidence, errors = detect_and_decode(data)
    if not text.strip():
        raise RefusedFile("empty file (only a byte-order mark or whitespace)")
    decoded = Decoded(str(path), [text], encoding, confidence, errors)
    if errors:
        decoded.warnings.append(f"{errors} undecodable byte(s) as {encoding}; removed and counted")
    if path.suffix.lower() in JSON_SUFFIXES:
        decoded.texts = [t for t in _json_articles(text, path) if t.strip()]
        if not decoded.texts:
            raise RefusedFile("no articles (the JSON holds no non-empty text)")
    return decoded


def detect_and_decode(data: bytes) -> tuple[str, str, float, int]:
    """Return (encoding, text, plausibility, undecodable byte count). Raises RefusedFile when not confident."""
    bom = _bom_decode(data)
    if bom is not None:
        return bom
    if b"\x00" in data[:65536]:
        utf16 = _utf16_without_bom(data)
        if utf16 is not None:
            return utf16
        raise RefusedFile("binary file (contains NUL bytes), not text")
    if _control_share(data[:65536]) > 0.05:
        raise RefusedFile("binary file (many control bytes), not text")
    try:
        text = data.decode("utf-8")
        return "utf-8", text, charsets.plausibility(text), 0
    except UnicodeDecodeError:
        pass
    return _best_family(data)


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
