"""Cleaned lines → chapters, by their headings (第X回 / 第X章 / 第X节, 楔子, 序章 …).

Handles the shapes real files have: Chinese numerals written as words (第一百二十回) or digit by digit (第一零零回),
Arabic and zero-padded numbers, 卷/部 prefixes, a title on the same line or the next, a heading glued to the first
sentence, scraper prefixes before the heading, tables of contents (headings with no body), headings repeated inside
a chapter, and front matter (title, author, blurb) before the first chapter. A text without headings is one chapter.
A text without line breaks keeps its chapters: `split_run_on` breaks a long line before the headings inside it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_DIGITS = {"零": 0, "〇": 0, "○": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
           "八": 8, "九": 9}
_UNITS = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_NUM = r"[零〇○一二三四五六七八九十两兩百千拾佰仟廿卅0-9０-９]{1,8}"
_VOLUME = rf"(?:[上中下]卷|卷\s*{_NUM}|第\s*{_NUM}\s*[卷部集册冊])"
_JUNK_PREFIX = r"(?:《[^》]{0,20}》)?\s*(?:目录|目錄)?"
_HEADING = re.compile(
    rf"^(?P<junk>{_JUNK_PREFIX})\s*(?P<head>(?:{_VOLUME}\s*)?第\s*(?P<num>{_NUM})\s*(?P<unit>[回章节節])"
    rf"|(?:{_VOLUME}\s*)?(?P<special>楔子|序章|序幕|引子|尾声|尾聲|终章|終章|后记|後記))(?P<rest>.*)$"
)
_SENTENCE_PUNCT = re.compile(r"[，。！？；,!;．]")
_BODY_START = re.compile(r"话说|話說|却说|卻說|且说|且說|再说|再說")
_ANOTHER_HEADING = re.compile(rf"第\s*{_NUM}\s*[回章节節]")
MAX_TITLE = 40
FRONT_MATTER_MAX = 2000
# A line this long that holds chapter headings is paragraphs run together (a file without line breaks); no real
# paragraph in ../shared/corpus holds one (its longest has 4,312 characters), only short TOC lines do.
RUN_ON_LINE = 1000
_RUN_ON_HEAD = rf"(?:《[^》]{{0,20}}》\s*)?(?:(?:目录|目錄)\s*)?(?:{_VOLUME}\s*)?第\s*{_NUM}\s*[回章节節]"
_HEADING_INSIDE = re.compile(rf"(?<=[。！？．!?…；;”」』）)\"\s]){_RUN_ON_HEAD}")
_HEADING_START = re.compile(_RUN_ON_HEAD)


@dataclass
class Chapter:
    """A heading line (may be empty for a text without headings) and its body lines."""

    heading: str
    lines: list[str]
    number: int | None = None

    @property
    def text(self) -> str:
        return "\n".join([self.heading, *self.lines] if self.heading else self.lines)


def chinese_number(s: str) -> int | None:
    """Parse 十二 / 一百二十 / 一百八 (=108, as chapter numbers use it) / 一零零 / 0012 / １２; None if not a number."""
    s = s.strip().translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    if not s:
        return None
    if s.isdigit():
        return int(s)
    s = s.replace("廿", "二十").replace("卅", "三十")
    if all(ch in _DIGITS for ch in s):
        return int("".join(str(_DIGITS[ch]) for ch in s))
    total, digit = 0, None
    for ch in s:
        if ch in _DIGITS:
            digit = _DIGITS[ch]
        elif ch in _UNITS:
            total += (1 if digit is None else digit) * _UNITS[ch]
            digit = None
        else:
            return None
    if digit is not None:
        # A trailing digit counts units even after 百: 一百八回 is the 108th chapter, as old editions number them.
        total += digit
    return total


@dataclass
class _Heading:
    index: int
    text: str
    number: int | None
    glued_body: str
    junk: int = 0
    toc_line: bool = False


def parse_heading(line: str) -> _Heading | None:
    """Recognise a heading line; return it split into heading text and any body text glued after it."""
    m = _HEADING.match(line)
    if not m:
        return None
    rest = m.group("rest")
    title, glued = _split_title(rest)
    if title is None:
        return None
    number = chinese_number(m.group("num")) if m.group("num") else None
    if m.group("num") and number is None:
        return None
    junk = len(m.group("junk"))
    # the glued body runs to the line's end, with what `_split_title` stripped off it ("…下回分解.")
    cut = line.rfind(glued) if glued else len(line)
    text, glued = line[junk:cut].strip(), line[cut:]
    return _Heading(-1, text, number, glued, junk, bool(_ANOTHER_HEADING.search(title)))


def _split_title(rest: str) -> tuple[str | None, str]:
    """(title, glued body) from what follows 第X回; title None when the line is a sentence, not a heading."""
    stripped = rest.strip(" :：·、.")
    if not stripped:
        return "", ""
    separated = rest[:1] in (" ", ":", "：", "·", "、", ".")
    parts = stripped.split(" ")
    marker = _BODY_START.search(stripped)
    punct = _SENTENCE_PUNCT.search(stripped)
    if not punct and len(stripped) <= MAX_TITLE:
        return stripped, ""
    if marker and (not punct or marker.start() < punct.start()) and 2 <= marker.start() <= MAX_TITLE:
        return stripped[: marker.start()].strip(), stripped[marker.start():]
    if punct and punct.start() < len(parts[0]):
        return None, ""
    if not separated:
        # 第二回賞州侯蘇護反商 丞相金鑾直諫君，…: a run-on line (see `split_run_on`) whose title ends at a space
        return (parts[0], " ".join(parts[1:])) if len(parts) >= 2 and len(parts[0]) <= MAX_TITLE else (None, "")
    # Couplet titles (兼六國混一輿圖 號始皇建立郡縣): the second half is as long as the first.
    first = parts[0]
    if len(parts) >= 2:
        second = " ".join(parts[1:])
        cut = len(first)
        if not _SENTENCE_PUNCT.search(second[:cut]):
            return f"{first} {second[:cut]}", second[cut:].strip()
    return None, ""


def split_run_on(lines: list[str]) -> list[str]:
    """Lines longer than RUN_ON_LINE broken before each numbered heading (第X回 / 第X章 …) that follows a sentence end
    or a space inside them, so that `split_chapters` finds the chapters of a text that has lost its line breaks.
    Only the spaces at the breaks are dropped (normalization's whitespace)."""
    out = []
    for line in lines:
        starts = [m.start() for m in _HEADING_INSIDE.finditer(line)] if len(line) > RUN_ON_LINE else []
        if not starts:
            out.append(line)
            continue
        pieces = (line[a:b].strip() for a, b in zip([0, *starts], [*starts, len(line)], strict=True))
        out.extend(part for piece in pieces for part in _heading_and_body(piece) if part)
    return out


# A file is hard-wrapped when at least WRAPPED_SHARE of its distinct lines of WRAP_MIN characters or more have the same
# length W (or W - 1, where a wrap rule kept punctuation off a line's start): a text with its own paragraphs has
# lengths spread out. Such lines are pieces of one paragraph, and rule-based cleaning judges a paragraph whole
# (mojibake counts its marks over a window that a wrapped piece is too short to hold). Three in four such lines at
# least end inside a sentence (a 30-character wrap of 三国演义: 9 in 10); lines of one length that end sentences,
# or site lines (手机用户请到…阅读第2页), are a text's own.
WRAP_MIN = 16
WRAPPED_SHARE = 0.3
SENTENCE_ENDS = ("。", "！", "？", "…", "”", "」", "』", "）", "\"", "!", "?", ")")


def unwrap(lines: list[str]) -> list[str]:
    """The paragraphs of a hard-wrapped text: each full-width line (see WRAPPED_SHARE) joined with the lines after
    it up to the first shorter one, never across a chapter heading nor after a sentence end (verse of the wrap's
    width keeps its lines; a paragraph that happened to end at the width stays apart, as it was); any other text
    as it is."""
    width = wrap_width(lines)
    if width is None:
        return lines
    out: list[str] = []
    joining = False
    for line in lines:
        if joining and parse_heading(line) is None:
            out[-1] += line
        else:
            out.append(line)
        joining = len(line) >= width - 1 and not line.endswith(SENTENCE_ENDS)
    return out


def wrap_width(lines: list[str]) -> int | None:
    """The width a text was hard-wrapped at, or None when its line lengths say it was not."""
    # distinct lines: a site's line repeated in every chapter is one line of its length, not a wrapping
    distinct = set(lines)
    lengths = Counter(len(line) for line in distinct if len(line) >= WRAP_MIN)
    if not lengths:
        return None
    width = max(lengths, key=lambda n: (lengths[n] + lengths.get(n - 1, 0), n))
    full = [line for line in distinct if width - 1 <= len(line) <= width]
    cut = sum(1 for line in full if not line.endswith(SENTENCE_ENDS))  # a wrap cuts sentences, a paragraph ends one
    wrapped = len(full) >= WRAPPED_SHARE * sum(lengths.values()) and lengths[width] >= 10 and cut >= 0.75 * len(full)
    return width if wrapped else None


def _heading_and_body(piece: str) -> list[str]:
    """A run-on piece that starts with 第X回, as its heading line and its body line (nothing else in a text
    without line breaks tells where the title ends): the title runs to the first space when what comes before
    it reads as a title (no sentence punctuation, at most MAX_TITLE characters), with a second half of a
    couplet title (回 titles of five or more characters, a half as long, then punctuation); or to a body marker
    (话说 …); else the body starts right after 第X回 and the title, if any, stays in it."""
    m = _HEADING_START.match(piece)
    if not m:
        return [piece]
    rest = piece[m.end():]
    start = len(rest) - len(rest.lstrip(" :：·、."))
    cut = m.end() + start + _title_length(rest[start:])
    return [piece[:cut].strip(), piece[cut:].strip()]


def _title_length(rest: str) -> int:
    parts = rest.split(" ")
    first = parts[0]
    marker = _BODY_START.search(first)
    if marker and 2 <= marker.start() <= MAX_TITLE and not _SENTENCE_PUNCT.search(first[: marker.start()]):
        return marker.start()
    if len(parts) == 1 or len(first) > MAX_TITLE or _SENTENCE_PUNCT.search(first):
        return 0
    second = parts[1]
    couplet = (len(first) >= 5 and len(second) >= len(first) and not _SENTENCE_PUNCT.search(second[: len(first)])
               and (len(second) == len(first) or bool(_SENTENCE_PUNCT.match(second[len(first)]))))
    return len(first) + 1 + len(first) if couplet else len(first)


def split_chapters(lines: list[str], removed: Counter) -> list[Chapter]:
    """Group cleaned lines into chapters; tables of contents, repeated headings and short front matter are removed
    and counted."""
    headings = []
    for i, line in enumerate(lines):
        h = parse_heading(line)
        if h is not None:
            h.index = i
            headings.append(h)
    if not headings:
        return [Chapter("", list(lines))] if lines else []
    sections = _sections(lines, headings, removed)
    front = lines[: headings[0].index]
    chapters = _drop_toc(sections, removed)
    chapters = _merge_repeated(chapters, removed)
    front_chars = sum(len(x) for x in front)
    if front and (front_chars > FRONT_MATTER_MAX or not chapters):
        chapters.insert(0, Chapter("", front))
    else:
        removed["front_matter"] += front_chars
    return chapters


def _sections(lines: list[str], headings: list[_Heading], removed: Counter) -> list[Chapter]:
    out = []
    for k, h in enumerate(headings):
        removed["heading_junk"] += h.junk
        end = headings[k + 1].index if k + 1 < len(headings) else len(lines)
        body = lines[h.index + 1 : end]
        heading = h.text
        # A table-of-contents line holding several headings has no body; lines after it are kept (a TOC's last line
        # before the text, or run-on text whose headings are not recognised) for `_drop_toc` to judge and count.
        title_next = h.text.endswith(("回", "章", "节", "節")) and len(body) > 1 and _is_title_line(body[0])
        if title_next and not h.toc_line:
            heading, body = f"{heading} {body[0]}", body[1:]
        if h.glued_body:
            body = [h.glued_body, *body]
        out.append(Chapter(heading, body, h.number))
    return out


def _is_title_line(line: str) -> bool:
    return len(line) <= MAX_TITLE and not _SENTENCE_PUNCT.search(line) and parse_heading(line) is None


def _drop_toc(sections: list[Chapter], removed: Counter) -> list[Chapter]:
    """Headings with no body are table-of-contents entries (or orphans); a TOC's last entry can look like it has a
    body (the blurb that follows), which shows when the next heading starts the numbering again."""
    kept = []
    for ch in sections:
        if sum(len(x) for x in ch.lines) == 0 or all(_is_title_line(x) for x in ch.lines):
            removed["toc"] += len(ch.heading) + sum(len(x) for x in ch.lines)
        else:
            kept.append(ch)
    first, second = (kept[0].number, kept[1].number) if len(kept) >= 2 else (None, None)
    if first is not None and second is not None and second <= 1 < first:
        first = kept.pop(0)
        removed["toc"] += len(first.heading)
        removed["front_matter"] += sum(len(x) for x in first.lines)
    return kept


def _merge_repeated(chapters: list[Chapter], removed: Counter) -> list[Chapter]:
    """A heading repeated inside its own chapter (same number as the chapter it is in) is dropped, not a new chapter."""
    out: list[Chapter] = []
    for ch in chapters:
        if out and ch.number is not None and ch.number == out[-1].number:
            removed["duplicate_heading"] += len(ch.heading)
            out[-1].lines.extend(ch.lines)
        else:
            out.append(ch)
    return out
