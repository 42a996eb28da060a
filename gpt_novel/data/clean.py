"""Normalization and cleaning of decoded novel text: every character removed is counted under a reason.

`normalize` is the part that also applies to a user's prompt (see `vocab.encode`): line endings, indentation,
runs of whitespace, blank lines. `clean_lines` removes what download sites add: ads, URLs, watermarks, metadata,
disclaimers, navigation bars, decoration rules, mojibake and stray foreign letters. Tables of contents and front
matter need the chapter structure and are removed in `chapters`; boilerplate found by repetition in `boilerplate`.

Every rule is bounded so that it removes an ad-sized span, never a novel: a rule that judges a whole line removes
it only when the line has at most `WHOLE_LINE_MAX` characters; in a longer line (paragraphs run together, or a
novel with no line breaks at all) it cuts the matching span, widened at most to the sentence around it.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from gpt_novel.data import charsets

# Whole-line rules apply up to this length. Real site lines are short (the longest ad in ../shared/corpus has 113
# characters, a navigation bar 52); prose paragraphs are often longer, so a false match costs at most this much.
WHOLE_LINE_MAX = 200

_NEWLINES = re.compile(r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"\s+")

# A domain ends where ASCII letters end: "m.xxx.net阅读" (\b would not end it there, Han being word characters too).
DOMAIN = (r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|net|org|cn|cc|tw|hk|info|me|co|la|tv|xyz|top|vip|club)"
          r"(?![A-Za-z0-9-])")
URL = re.compile(rf"(?:https?://|www\.)[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+|{DOMAIN}(?:/[A-Za-z0-9._~/?#=&%-]*)?")
# Watermarks injected into running text, e.g. "１稿案：……。--書香門第注http://www.bookhome.net": the footnote gloss
# that precedes the site's signature is injected text too.
_WATERMARK = re.compile(
    rf"(?:[１２３４５６７８９][^１２３４５６７８９]{{1,200}}?)?(?:-{{1,3}}|——)?\s*(?:{URL.pattern})?\s*"
    rf"(?:書香門第|书香门第)(?:網絡圖書館|网络图书馆)?注\s*(?:{URL.pattern})?"
)
_AD_PHRASES = re.compile(
    r"丫丫电子书|丫丫電子書|TXT小说天堂|TXT小說天堂|(?:本书|本書)(?:由|來自|来自).{0,20}(?:整理|提供|收集)|"
    r"(?:更多|最新)(?:精彩|章节|章節).{0,12}(?:请|請)?(?:访问|訪問|关注|關注|登录|登錄)|"
    r"(?:手机|手機)(?:用户|用戶|阅读|閱讀).{0,10}(?:访问|訪問)|(?:请|請)记住本站|"
    r"(?:加入书签|加入書籤|投推荐票|投推薦票|求月票|求收藏)"
)
_AD_LINE = re.compile(
    r"小说网|小說網|电子书|電子書|小说天堂|小說天堂|免费下载|免費下載|txt下载|TXT下载|全文阅读|全文閱讀"
)
_METADATA = re.compile(r"(?:更新时间|更新時間|本章字数|本章字數|上传时间|上傳時間|发布时间|發布時間)\s*[:：]")
# In a long line, a metadata label is cut with its value (a date, a time, a count), not with its sentence: it sits
# between a chapter's heading and its first sentence, which must stay.
_METADATA_SPAN = re.compile(_METADATA.pattern + r"[0-9０-９:：/.\- 年月日时時分秒]*")
_DISCLAIMER = re.compile(
    r"(?:仅供|僅供).{0,12}(?:预览|預覽|交流|学习|學習|试读|試讀|参考|參考)|"
    r"(?:下载|下載).{0,10}(?:24|二十四)\s*(?:小时|小時).{0,6}(?:删除|刪除)|"
    r"版权(?:归|歸|所有)|版權(?:歸|所有)|(?:请|請)(?:支持|购买|購買)正版|不得用(?:作|于|於)商业"
)
_NAV_WORDS = frozenset(
    "回首页 返回首页 返回目录 回目录 上一页 下一页 前一页 后一页 上一章 下一章 "
    "返回書頁 返回书页 回目錄 返回目錄 上一頁 下一頁 前一頁 後一頁".split()
)
# In a long line: a bar of at least 4 separators between short items, and navigation words standing alone.
_NAV_ITEM = r"[^\s|｜。，！？；：“”]{1,6}"
_NAV_BAR = re.compile(rf"(?:{_NAV_ITEM} ?[|｜] ?){{4,}}{_NAV_ITEM}")
_NAV_EDGE = re.compile(r"[\s。，！？；：“”…」]")
_NAV_ALONE = re.compile(r"(?<!\S)(?:" + "|".join(sorted(_NAV_WORDS, key=len, reverse=True)) + r")(?!\S)")
_DECORATION = re.compile(r"[-—=*_~#.·•─━＝－＊～\s]{3,}")
_SENTENCE_BOUND = re.compile(r"[。！？!?；;…]+[”」』\"’]*|\s+")
# A mark is a suspicious character, a run of '?' (counted once) or a full-width Latin letter; a strange one is
# a suspicious character proper.
_STRANGE = charsets.SUSPICIOUS
_MOJIBAKE_MARK = re.compile(r"\?+|[Ａ-Ｚａ-ｚ]|" + charsets.SUSPICIOUS.pattern)
_MOJIBAKE_WINDOW = 12
_MOJIBAKE_LONG = 5
# Where a mojibake span may end: a sentence end, or a space (in a run-on line, where a paragraph ended).
_SENTENCE_END = re.compile(r"[。！？．；!;…]+[”」』\"]?|\s+")
_MOJIBAKE_MIN = 3
# Half-shift damage looks like Han text between its marks and runs on past them to where the decoder resynchronises;
# a span is widened to the sentence ends around it, but no further than this from its first and last marks.
_MOJIBAKE_REACH = WHOLE_LINE_MAX
# A phrase in another script holds, between its letters, only that script's letters (Japanese also kanji),
# spaces and punctuation; mojibake mixes in other scripts, Latin-1 symbols or (in Cyrillic or Hangul) Han.
_PUNCT = r"\s,.!?;:'\"()«»\-–—…、，。！？：；“”‘’「」『』（）"
_HAN = r"\u3400-\u4dbf\u4e00-\u9fff"
_PHRASE = {
    "kana": re.compile(rf"[\u3041-\u30ff\uff66-\uff9f{_HAN}{_PUNCT}]+"),
    "cyrillic": re.compile(rf"[\u0400-\u052f{_PUNCT}]+"),
    "greek": re.compile(rf"[\u0370-\u03ff{_PUNCT}]+"),
    "hangul": re.compile(rf"[\uac00-\ud7af{_PUNCT}]+"),
}
_KANA_SHARE = 0.3
_WORD = re.compile(r"[^\W\d_]+")


def normalize(text: str) -> str:
    """One paragraph per line: unify line endings, drop invisible characters, indentation, trailing blanks, runs of
    whitespace inside a line (to one space) and empty lines."""
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional → simplified characters (OpenCC's t2s tables)."""
    return _t2s().convert(text)


def clean_lines(lines: list[str], removed: Counter, url_lines: set[str] | None = None) -> list[str]:
    """Drop or trim junk in normalized lines, adding the characters removed to `removed` by reason.

    `url_lines`, when given, receives the cleaned lines that held a URL or domain before cleaning: the URL itself is
    cut here, yet whether a repeated line named a site is what `boilerplate` judges it by.
    """
    kept = []
    for line in lines:
        cleaned = _clean_line(line, removed)
        if cleaned:
            kept.append(cleaned)
            if url_lines is not None and URL.search(line):
                url_lines.add(cleaned)
    return kept


def _clean_line(line: str, removed: Counter) -> str:
    if "\ufffd" in line:
        removed["undecodable"] += line.count("\ufffd")
        line = line.replace("\ufffd", "")
    if len(line) <= WHOLE_LINE_MAX:
        whole = _whole_line_reason(line)
        if whole:
            removed[whole] += len(line)
            return ""
    else:
        line = _cut_spans(line, removed)
    for reason, pattern in (("watermark", _WATERMARK), ("ad", _AD_PHRASES), ("url", URL)):
        line = _cut(pattern, line, reason, removed)
    line = _cut_mojibake(line, removed)
    line = _cut_stray_foreign(line, removed)
    tidy = _SPACES.sub(" ", line).strip()
    removed["whitespace"] += len(line) - len(tidy)  # spaces left around a cut
    if tidy and _DECORATION.fullmatch(tidy):
        removed["decoration"] += len(tidy)
        tidy = ""
    return tidy


def _whole_line_reason(line: str) -> str | None:
    if line.count("|") + line.count("｜") >= 4 or line in _NAV_WORDS:
        return "navigation"
    if _METADATA.search(line):
        return "metadata"
    if _DISCLAIMER.search(line):
        return "disclaimer"
    if _AD_LINE.search(line) and URL.search(line):
        return "ad"
    return None


def _cut_spans(line: str, removed: Counter) -> str:
    """The whole-line rules applied to a line longer than WHOLE_LINE_MAX: only the spans they match are cut."""
    spans = sorted(
        (start, end, reason)
        for reason, find in (("navigation", _navigation_spans), ("metadata", _metadata_spans),
                             ("disclaimer", _disclaimer_spans), ("ad", _ad_spans))
        for start, end in find(line)
    )
    if not spans:
        return line
    out, last = [], 0
    for start, end, reason in spans:
        start = max(start, last)
        if end > start:
            removed[reason] += end - start
            out.append(line[last:start])
            last = end
    out.append(line[last:])
    return "".join(out)


def _navigation_spans(line: str) -> list[tuple[int, int]]:
    return [_nav_bar_span(line, m) for m in _NAV_BAR.finditer(line)] + [m.span() for m in _NAV_ALONE.finditer(line)]


def _nav_bar_span(line: str, m: re.Match) -> tuple[int, int]:
    """A bar glued to prose (no space or punctuation around it) keeps its outer item: it may be the prose's."""
    start, end = m.span()
    separators = [start + i for i, ch in enumerate(m.group()) if ch in "|｜"]
    if start > 0 and not _NAV_EDGE.match(line[start - 1]):
        start = separators[0]
    if end < len(line) and not _NAV_EDGE.match(line[end]):
        end = separators[-1] + 1
    return start, end


def _metadata_spans(line: str) -> list[tuple[int, int]]:
    return [(m.start(), m.start() + len(m.group().rstrip())) for m in _METADATA_SPAN.finditer(line)]


def _disclaimer_spans(line: str) -> list[tuple[int, int]]:
    return [_sentence(line, *m.span()) for m in _DISCLAIMER.finditer(line)]


def _ad_spans(line: str) -> list[tuple[int, int]]:
    """A sentence holding both a URL and an ad word (the whole-line ad rule, one sentence at a time)."""
    sentences = (_sentence(line, *m.span()) for m in URL.finditer(line))
    return [(start, end) for start, end in sentences if _AD_LINE.search(line, start, end)]


def _sentence(line: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around line[start:end], between sentence ends or spaces; the match alone when that sentence is
    longer than WHOLE_LINE_MAX, so that a cut never takes more than an ad's length."""
    lo = max(0, start - WHOLE_LINE_MAX)
    bounds = list(_SENTENCE_BOUND.finditer(line, lo, start))
    after = _SENTENCE_BOUND.search(line, end, end + WHOLE_LINE_MAX)
    if (not bounds and lo > 0) or (not after and end + WHOLE_LINE_MAX < len(line)):
        return start, end
    s = bounds[-1].end() if bounds else 0
    e = (after.start() if after.group().isspace() else after.end()) if after else len(line)
    return (s, e) if e - s <= WHOLE_LINE_MAX else (start, end)


def _cut(pattern: re.Pattern, line: str, reason: str, removed: Counter) -> str:
    if not pattern.search(line):
        return line
    out = pattern.sub("", line)
    removed[reason] += len(line) - len(out)
    return out


def _cut_mojibake(line: str, removed: Counter) -> str:
    """Remove the spans of a line that are mojibake: runs dense in odd characters (kana, Cyrillic, box drawing, ...)
    and stray '?' or full-width letters, cut back to the sentence ends around them.

    Half-character-shift damage starts somewhere in a line and may run to its end or resynchronise, so the good
    text around a span is kept. A dense run made only of '?' and full-width letters counts when long (lost
    characters), not when short: "什么?你说什么?" is dialogue typed with ASCII question marks. A phrase in one
    other script (ありがとう, Спасибо, друг) is not mojibake.
    """
    marks = list(_MOJIBAKE_MARK.finditer(line))
    if len(marks) < _MOJIBAKE_MIN:
        return line
    out, last = [], 0
    for start, end in _mojibake_spans(line, marks):
        out.append(line[last:start])
        last = end
    if last == 0:
        return line
    out.append(line[last:])
    kept = "".join(out)
    if len(kept.strip()) < 4:
        kept = ""
    removed["mojibake"] += len(line) - len(kept)
    return kept


def _mojibake_spans(line: str, marks: list[re.Match]) -> list[tuple[int, int]]:
    """Groups of marks with at most _MOJIBAKE_WINDOW characters between neighbours, widened to the sentence ends
    (or line ends) around them when those are at most _MOJIBAKE_REACH away: the cut is the damaged span, never a
    whole long line."""
    groups: list[list[re.Match]] = [[marks[0]]]
    for m in marks[1:]:
        if m.start() - groups[-1][-1].start() <= _MOJIBAKE_WINDOW:
            groups[-1].append(m)
        else:
            groups.append([m])
    spans: list[tuple[int, int]] = []
    for group in groups:
        strange = sum(1 for m in group if _STRANGE.match(m.group()))
        if len(group) < _MOJIBAKE_MIN or (not strange and len(group) < _MOJIBAKE_LONG):
            continue
        if strange and _is_foreign_phrase(line, group):
            continue
        first, last = group[0].start(), group[-1].end()
        before = [s.end() for s in _SENTENCE_END.finditer(line, max(0, first - _MOJIBAKE_REACH), first)]
        start = before[-1] if before else 0 if first <= _MOJIBAKE_REACH else first
        after = _SENTENCE_END.search(line, last, last + _MOJIBAKE_REACH)
        if after:
            end = after.start() if after.group().isspace() else after.end()
        else:
            end = len(line) if len(line) - last <= _MOJIBAKE_REACH else last
        if spans and start < spans[-1][1]:  # reaches into the previous span: one span
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def _is_foreign_phrase(line: str, group: list[re.Match]) -> bool:
    """Whether a dense group of marks is a phrase in one other script rather than damage: its odd letters all of
    one script, what lies between them of that script's text (`_PHRASE`), each word cased as words are (Спасибо,
    not ХтЙПОЁТ), and for Japanese enough kana (kana in mojibake are sparse among wrong Han characters)."""
    scripts = {charsets.foreign_script(m.group()[0]) for m in group if m.group()[0] != "?"}
    script = scripts.pop() if len(scripts) == 1 else None
    phrase = _PHRASE.get(script or "")
    span = line[group[0].start() : group[-1].end()]
    if phrase is None or not phrase.fullmatch(span):
        return False
    if script == "kana" and sum(1 for ch in span if "\u3041" <= ch <= "\u30ff") < _KANA_SHARE * len(span):
        return False
    return all(w in (w.lower(), w.upper(), w.capitalize()) for w in _WORD.findall(span))


def _cut_stray_foreign(line: str, removed: Counter) -> str:
    """Remove single letters of another script standing in Chinese prose for a lost character (窄Ё袄, 纨э气习):
    each would become a vocabulary entry of its own (removed rather than made [UNK]: the character is lost either
    way, and [UNK] would teach the model to emit it). A letter with another of its script nearby is a word or a
    phrase (ありがとう, 私は学生です, Да) and stays; dense damage was cut by `_cut_mojibake` before."""
    stray = [m.start() for m in charsets.FOREIGN.finditer(line) if _is_stray(line, m.start())]
    if not stray:
        return line
    removed["stray_foreign"] += len(stray)
    pieces, last = [], 0
    for i in stray:
        pieces.append(line[last:i])
        last = i + 1
    pieces.append(line[last:])
    return "".join(pieces)


def _is_stray(line: str, i: int) -> bool:
    """Between Chinese characters (or Chinese punctuation, at least one side a character), and at most one other
    letter of the same script within _MOJIBAKE_WINDOW characters, neither side adjacent: two stand-ins a few
    characters apart (金す草，这一种是玉ぁ藤) are both stray, while a Japanese sentence has kana all through its
    kanji (私は学生です) and a word has its letters side by side."""
    before, after = line[i - 1 : i], line[i + 1 : i + 2]
    if not (_chinese_context(before) and _chinese_context(after)):
        return False
    if not any(ch and charsets.is_han(ch) for ch in (before, after)):
        return False
    script = charsets.foreign_script(line[i])
    near = line[max(0, i - _MOJIBAKE_WINDOW) : i] + line[i + 1 : i + 1 + _MOJIBAKE_WINDOW]
    return sum(1 for ch in near if ch >= "\u0180" and charsets.foreign_script(ch) == script) <= 1


def _chinese_context(ch: str) -> bool:
    """A line end, a Han character or Chinese punctuation (not a letter or digit of any kind, not ASCII)."""
    if not ch or charsets.is_han(ch):
        return True
    cp = ord(ch)
    return (0x3000 <= cp <= 0x303F or 0xFF01 <= cp <= 0xFF65 or ch in "“”‘’…—·") and not ch.isalnum()
