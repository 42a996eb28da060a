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
_MOJIBAKE_CHAR = re.compile(r"\?+|" + charsets.SUSPICIOUS.pattern)  # "???" (lost characters) counts once
_MOJIBAKE_WINDOW = 12
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
    if _AD_LINE.search(line) and (_URL.search(line) or len(line) < 80):
        return "ad"
    return None


def _cut(pattern: re.Pattern, line: str, reason: str, removed: Counter) -> str:
    if not pattern.search(line):
        return line
    out = pattern.sub("", line)
    removed[reason] += len(line) - len(out)
    return out


def _cut_mojibake(line: str, removed: Counter) -> str:
    """Remove the span of a line that is mojibake (a run dense in kana, box drawing, Cyrillic, stray '?', ...).

    Half-character-shift damage starts somewhere in a line and runs to its end, so the good start is kept.
    """
    marks = [m.start() for m in _MOJIBAKE_CHAR.finditer(line)]
    if len(marks) < _MOJIBAKE_MIN:
        return line
    flags = [False] * len(line)
    for i in marks:
        flags[i] = True
    prefix = [0]
    for flag in flags:
        prefix.append(prefix[-1] + flag)
    n, start, end = len(line), None, None
    for i in range(max(1, n - _MOJIBAKE_WINDOW + 1)):
        if prefix[min(n, i + _MOJIBAKE_WINDOW)] - prefix[i] >= _MOJIBAKE_MIN:
            start = i + flags[i:].index(True) if start is None else start
            end = min(n, i + _MOJIBAKE_WINDOW)
    if start is None:
        return line
    # The damage begins and ends between sentence ends: widen the cut to them (or to the ends of the line).
    before = [m.end() for m in _SENTENCE_END.finditer(line, 0, start)]
    start = before[-1] if before else 0
    after = _SENTENCE_END.search(line, end)
    end = after.end() if after and end < len(line) - _MOJIBAKE_WINDOW else len(line)
    out = line[:start] + line[end:]
    if len(out.strip()) < 4:
        out = ""
    removed["mojibake"] += len(line) - len(out)
    return out
