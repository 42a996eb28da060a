"""Normalization and cleaning of decoded novel text: every character removed is counted under a reason.

`normalize` is the part that also applies to a user's prompt (see `vocab.encode`): line endings, indentation,
runs of whitespace, blank lines. `clean_lines` removes what download sites add: ads, URLs, watermarks, metadata,
disclaimers, navigation bars, decoration rules and mojibake. Tables of contents and front matter need the chapter
structure and are removed in `chapters`.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from gpt_novel.data import charsets

_NEWLINES = re.compile(r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"\s+")

_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|net|org|cn|cc|tw|hk|info|me|co|la|tv|xyz|top|vip|club)\b"
_URL = re.compile(rf"(?:https?://|www\.)[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+|{_DOMAIN}(?:/[A-Za-z0-9._~/?#=&%-]*)?")
# Watermarks injected into running text, e.g. "１稿案：……。--書香門第注http://www.bookhome.net": the footnote gloss
# that precedes the site's signature is injected text too.
_WATERMARK = re.compile(
    rf"(?:[１２３４５６７８９][^１２３４５６７８９]{{1,200}}?)?(?:-{{1,3}}|——)?\s*(?:{_URL.pattern})?\s*"
    rf"(?:書香門第|书香门第)(?:網絡圖書館|网络图书馆)?注\s*(?:{_URL.pattern})?"
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
_DISCLAIMER = re.compile(
    r"(?:仅供|僅供).{0,12}(?:预览|預覽|交流|学习|學習|试读|試讀|参考|參考)|"
    r"(?:下载|下載).{0,10}(?:24|二十四)\s*(?:小时|小時).{0,6}(?:删除|刪除)|"
    r"版权(?:归|歸|所有)|版權(?:歸|所有)|(?:请|請)(?:支持|购买|購買)正版|不得用(?:作|于|於)商业"
)
_NAV_WORDS = frozenset(
    "回首页 返回首页 返回目录 回目录 上一页 下一页 上一章 下一章 "
    "返回書頁 返回书页 回目錄 返回目錄 上一頁 下一頁".split()
)
_DECORATION = re.compile(r"[-—=*_~#.·•─━＝－＊～\s]{3,}")
# A mark is a suspicious character, a run of '?' (counted once) or a full-width Latin letter; a strange one is
# a suspicious character proper.
_STRANGE = charsets.SUSPICIOUS
_MOJIBAKE_MARK = re.compile(r"\?+|[Ａ-Ｚａ-ｚ]|" + charsets.SUSPICIOUS.pattern)
_MOJIBAKE_WINDOW = 12
_MOJIBAKE_LONG = 5
_SENTENCE_END = re.compile(r"[。！？．；!;…]+[”」』\"]?")
_MOJIBAKE_MIN = 3


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


def clean_lines(lines: list[str], removed: Counter) -> list[str]:
    """Drop or trim junk in normalized lines, adding the characters removed to `removed` by reason."""
    kept = []
    for line in lines:
        line = _clean_line(line, removed)
        if line:
            kept.append(line)
    return kept


def _clean_line(line: str, removed: Counter) -> str:
    if "\ufffd" in line:
        removed["undecodable"] += line.count("\ufffd")
        line = line.replace("\ufffd", "")
    whole = _whole_line_reason(line)
    if whole:
        removed[whole] += len(line)
        return ""
    for reason, pattern in (("watermark", _WATERMARK), ("ad", _AD_PHRASES), ("url", _URL)):
        line = _cut(pattern, line, reason, removed)
    line = _cut_mojibake(line, removed)
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
    if _AD_LINE.search(line) and _URL.search(line):
        return "ad"
    return None


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
    characters), not when short: "什么?你说什么?" is dialogue typed with ASCII question marks.
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
    """Groups of marks with at most _MOJIBAKE_WINDOW characters between neighbours, widened to sentence ends."""
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
        before = [s.end() for s in _SENTENCE_END.finditer(line, 0, group[0].start())]
        start = max(before[-1] if before else 0, spans[-1][1] if spans else 0)
        after = _SENTENCE_END.search(line, group[-1].end())
        end = after.end() if after and group[-1].end() < len(line) - _MOJIBAKE_WINDOW else len(line)
        spans.append((start, end))
    return spans
