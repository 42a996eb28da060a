"""Download-site boilerplate found by repetition (as C4, Gopher and RefinedWeb find it on the web), not by a list.

Sites inject their lines ("（天才一秒记住：某某书屋 abcd123.xyz）", "手机用户请到m.xxx.net阅读第12页") in endless
variants that no phrase list in `clean` keeps up with. What they share is how they repeat: a site injects its line
into many chapters of every book it serves. A novel's own recurring lines do not repeat that way: a refrain
("欲知后事如何，且听下回分解"), a verse quoted twice or a short reply ("是。") recurs within one novel only, or is too
short (`MIN_CHARS`) or too rare (`MIN_CHAPTERS`, `MIN_SHARE`) to count. So a line is boilerplate when it repeats
across the chapters of at least two files, or of one file when it names a site (a URL or domain) or speaks of the
site's pages (`SITE_WORDS`: 上一章 目录 下一章, 请收藏本站, 求推荐票, 第2页): a novel has no reason to repeat a web
address, or its reader's navigation, in a tenth of its chapters, and its refrains speak of the story.

The design is partitioned and bounded in memory: each input file is read alone (`novels.read_and_split`) and emits
only the keys of the lines it repeats (`repeated`), a few per file; a tiny global reduce counts in how many files
each key repeats and decides with `is_boilerplate`; `remove` then drops those lines from each file's chapters.
Lines are compared masked (`mask`): a URL, a page number or a spacing difference does not make a new line.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from gpt_novel.data import clean
from gpt_novel.data.chapters import Chapter

# Masked length below which a line is never boilerplate. Short lines recur in every novel on their own and across
# novels: replies (“是。” 4), the storyteller's formulas standing as lines of their own (in ../shared/corpus:
# 話分兩頭。 5 in 12 chapters, 有詩為證： 5, 史臣有詩云： 6, 且看下回分解。 7). A site line names the site and says
# what to do (天才一秒记住 + a name, 手机用户请到…阅读): 8 characters or more once its URL is cut.
MIN_CHARS = 8
# A line must recur in at least this many chapters and this share of the file's chapters: a verse quoted twice or
# a line said in two scenes is not injected text; a site's line is in most of them.
MIN_CHAPTERS = 3
MIN_SHARE = 0.1
URL_PLACEHOLDER = "<url>"
# What a site's navigation and pagination lines say and a novel's own lines do not (matched on the masked line, so
# page numbers are 0): chapter and page links, the table of contents, bookmarks and the bookshelf, the site, votes
# and tips, the note that a page continues. Such a line counts from SITE_MIN_CHARS ("求推荐票", "请收藏本站").
SITE_WORDS = re.compile(r"上一[章页节]|下一[章页节]|目录|书签|书架|收藏|推荐票|月票|本站|翻页|章节报错|最新章节|"
                        r"全文阅读|手机阅读|本章未完|第0(/0)?页|打赏|订阅")
SITE_MIN_CHARS = 4
_DIGITS = re.compile(r"[0-9０-９]+")
_SPACES = re.compile(r"\s+")


def mask(line: str) -> str:
    """The line as site lines are compared: URLs and domains → a placeholder, digit runs (ASCII or full-width) → 0,
    whitespace removed. "记住本站网址：www.abc123.com 第12页" and "记住本站网址：www.xyz.net 第7页" mask alike."""
    return _SPACES.sub("", _DIGITS.sub("0", clean.URL.sub(URL_PLACEHOLDER, line)))


def key(line: str) -> str:
    """16 hex characters naming the masked line: what files exchange instead of the lines themselves."""
    return _key_of_mask(mask(line))


def _key_of_mask(masked: str) -> str:
    return hashlib.blake2b(masked.encode("utf-8"), digest_size=8).hexdigest()


def repeated(chapters: list[Chapter], url_lines: Iterable[str] = ()) -> list[tuple[str, bool]]:
    """For one file: (key, names a site) of the body lines (never headings) that occur in at least MIN_CHAPTERS
    chapters and at least MIN_SHARE of the file's chapters; sorted, one entry per key. A line names a site when it
    holds a URL or domain or says `SITE_WORDS`.

    `url_lines` are lines that held a URL before `clean` cut it (see `clean.clean_lines`)."""
    url_lines = set(url_lines)
    in_chapters: Counter = Counter()
    has_url: defaultdict[str, bool] = defaultdict(bool)
    for chapter in chapters:
        seen = set()
        for line in chapter.lines:
            masked = mask(line)
            site = SITE_WORDS.search(masked) is not None
            if len(masked) < (SITE_MIN_CHARS if site else MIN_CHARS):
                continue
            k = _key_of_mask(masked)
            seen.add(k)
            has_url[k] |= site or line in url_lines or clean.URL.search(line) is not None
        in_chapters.update(seen)
    need = max(MIN_CHAPTERS, math.ceil(MIN_SHARE * len(chapters)))
    return sorted((k, has_url[k]) for k, n in in_chapters.items() if n >= need)


def is_boilerplate(files_repeating: int, has_url: bool) -> bool:
    """Repeated in two files or more, or in one file and naming a site (see the module's docstring)."""
    return files_repeating >= 2 or (files_repeating == 1 and has_url)


def remove(lines: list[str], keys: set[str], removed: Counter) -> list[str]:
    """The lines whose key is not in `keys`; the characters of the others are counted under 'boilerplate'."""
    if not keys:
        return lines
    kept = []
    for line in lines:
        if key(line) in keys:
            removed["boilerplate"] += len(line)
        else:
            kept.append(line)
    return kept
