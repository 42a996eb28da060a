"""Boilerplate by repetition: site lines are found by how they repeat, in wordings no list holds; a novel's own
refrains, verses and replies stay."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from gpt_novel.data import novels
from gpt_novel.data.boilerplate import (
    MIN_CHAPTERS,
    MIN_CHARS,
    MIN_SHARE,
    is_boilerplate,
    key,
    mask,
    remove,
    repeated,
)
from gpt_novel.data.chapters import Chapter

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


def prose(n: int) -> list[str]:
    """Two body lines that occur once in a whole corpus (not only their digits differ: those mask alike)."""
    words = ["".join(chr(0x4E00 + (n * 131 + 17 * k + j) % 20000) for j in range(4)) for k in range(4)]
    return [f"他推开门，{words[0]}和{words[1]}都走了出去。", f"掌柜数着铜钱，说起{words[2]}与{words[3]}的旧事。"]


def reduce(results: list[list[tuple[str, bool]] | list[list]]) -> set[str]:
    """The global step: in how many files each key repeats, and whether any of them saw a URL in it."""
    files: Counter = Counter()
    url: defaultdict[str, bool] = defaultdict(bool)
    for pairs in results:
        for k, has_url in pairs:
            files[k] += 1
            url[k] |= has_url
    return {k for k in files if is_boilerplate(files[k], url[k])}


# --- mask and key -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("记住本站网址：www.abc123.com 第12页", "记住本站网址：www.xyz.net 第7页"),
        ("（天才一秒记住：某某书屋 abcd123.xyz）", "（天才一秒记住：某某书屋 qq9.xyz）"),
        ("手机用户请到m.xxx.net阅读第12页", "手机用户请到m.yyy.cc阅读 第 345 页"),
        ("第１２页", "第3页"),
    ],
    ids=["url-and-page", "domain", "spacing", "full-width-digits"],
)
def test_url_digit_and_spacing_variants_are_one_key(a, b):
    assert mask(a) == mask(b)
    assert key(a) == key(b)


def test_mask_replaces_urls_and_digit_runs_and_drops_whitespace():
    assert mask("记住本站网址：www.abc123.com 第12页") == "记住本站网址：<url>第0页"
    assert mask(" 他 说\t了 ") == "他说了"


def test_key_is_16_hex_characters_and_tells_lines_apart():
    k = key("记住本站网址：www.abc123.com")
    assert re.fullmatch(r"[0-9a-f]{16}", k)
    assert k != key("记住本站地址：www.abc123.com")


# --- repeated: what one file reports -------------------------------------------------------------------------------


def test_lines_repeated_across_chapters_are_reported_with_their_url_flag():
    site, page = "（天才一秒记住：某某书屋 abcd123.xyz）", "手机用户请到m.xxx.net阅读第{}页"
    chapters = [Chapter(f"第{n}章", [*prose(n), site, page.format(n)]) for n in range(1, 11)]
    assert repeated(chapters) == sorted([(key(site), True), (key(page.format(1)), True)])


def test_headings_never_count():
    chapters = [Chapter(f"第{n}章 某某书屋首发，欢迎收藏本站", prose(n)) for n in range(1, 11)]
    assert repeated(chapters) == []


def test_url_lines_mark_lines_whose_url_clean_has_cut():
    chapters = [Chapter("", [*prose(n), "天才一秒记住：某某书屋"]) for n in range(1, 6)]
    assert repeated(chapters) == [(key("天才一秒记住：某某书屋"), False)]
    assert repeated(chapters, {"天才一秒记住：某某书屋"}) == [(key("天才一秒记住：某某书屋"), True)]


@pytest.mark.parametrize(
    ("n_chapters", "n_with", "reported"),
    [(3, MIN_CHAPTERS - 1, False), (3, MIN_CHAPTERS, True), (40, 3, False), (40, 4, True)],
    ids=["too-few-chapters", "enough-chapters", "under-MIN_SHARE", "at-MIN_SHARE"],
)
def test_a_line_must_recur_in_MIN_CHAPTERS_and_MIN_SHARE_of_the_chapters(n_chapters, n_with, reported):
    line = "本章由某某书屋首发，欢迎收藏"
    chapters = [Chapter(f"第{n}章", [*prose(n), *([line] if n <= n_with else [])]) for n in range(1, n_chapters + 1)]
    assert (repeated(chapters) != []) == reported
    assert MIN_SHARE * 40 == 4


def test_a_line_repeated_inside_one_chapter_counts_once():
    line = "本章由某某书屋首发，欢迎收藏"
    assert repeated([Chapter("", [line] * 10), Chapter("", prose(1)), Chapter("", prose(2))]) == []


def test_short_lines_are_never_reported():
    short = "“是。”"
    assert len(mask(short)) < MIN_CHARS
    assert repeated([Chapter("", [*prose(n), short, "他道：“是。”"]) for n in range(10)]) == []


# --- is_boilerplate and remove ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "has_url", "expected"),
    [(0, False, False), (0, True, False), (1, False, False), (1, True, True), (2, False, True), (5, True, True)],
)
def test_is_boilerplate(files, has_url, expected):
    assert is_boilerplate(files, has_url) is expected


def test_remove_drops_lines_by_key_and_counts_their_characters():
    lines = ["他走了。", "记住本站网址：www.abc.com 第1页", "雨还在下。", "记住本站网址：第2页"]
    removed = Counter({"ad": 3})
    kept = remove(lines, {key("记住本站网址：www.xyz.net 第9页"), key("记住本站网址：第9页")}, removed)
    assert kept == ["他走了。", "雨还在下。"]
    assert removed == {"ad": 3, "boilerplate": len(lines[1]) + len(lines[3])}
    assert remove(lines, set(), removed) == lines


# --- the pipeline: each file alone, then a tiny reduce ------------------------------------------------------------

REFRAIN = "欲知后事如何，且听下回分解。"
VERSE = "满纸荒唐言，一把辛酸泪！都云作者痴，谁解其中味？"
SITE_NAME = "喜欢本书的朋友请到青石书屋首发站支持作者"  # a site's line without any URL, in both novels


def _novel(path: Path, n: int, extra: dict[int, list[str]]) -> str:
    chapters = []
    for c in range(1, 21):
        replies = ["“是。”", "他道：“是。”", *(["众人齐声道：“是。”"] if c in (4, 9) else [])]
        lines = [f"第{c}章 第{c}回的标题", *prose(100 * n + c), *replies, *extra.get(c, [])]
        chapters.append("\n".join(lines))
    path.write_text("\n".join(chapters), encoding="utf-8")
    return str(path)


def test_site_lines_in_new_wordings_are_found_and_removed_and_the_novels_own_lines_stay(tmp_path):
    first = {c: [f"（天才一秒记住：某某书屋 abcd{c}.xyz）", f"手机用户请到m.xxx.net阅读第{c}页", SITE_NAME, REFRAIN]
             for c in range(1, 21)}
    first[3].append(VERSE)
    first[17].append(VERSE)
    second = {c: [SITE_NAME] for c in range(1, 21, 2)}
    results = [novels.read_and_split(_novel(tmp_path / f"{i}.txt", i, extra), False)
               for i, extra in enumerate([first, second])]
    assert all(r.status == "ok" and len(r.chapters) == 20 for r in results)
    keys = reduce([r.repeated for r in results])

    kept, removed = [], Counter()
    for r in results:
        for chapter in r.chapters:
            heading, *body = chapter.split("\n")
            kept += [heading, *remove(body, keys, removed)]
    text = "\n".join(kept)
    assert "天才一秒记住" not in text and "手机用户请到" not in text and SITE_NAME not in text
    assert text.count(REFRAIN) == 20 and text.count(VERSE) == 2
    assert text.count("\n“是。”") == 40 and text.count("他道：“是。”") == 40 and text.count("众人齐声道") == 4
    site_lines = len("（天才一秒记住：某某书屋 ）") * 20 + sum(len(f"手机用户请到阅读第{c}页") for c in range(1, 21))
    assert removed == {"boilerplate": site_lines + len(SITE_NAME) * 30}


def test_file_result_carries_the_repeated_keys_and_the_distinct_characters(tmp_path):
    path = _novel(tmp_path / "a.txt", 0, {c: ["手机用户请到m.xxx.net阅读第1页"] for c in range(1, 21)})
    result = novels.read_and_split(path, False)
    assert result.repeated == [[key("手机用户请到阅读第1页"), True]]
    assert result.distinct_chars == "".join(sorted(set("".join(result.chapters)) - {"\n"}))
    assert novels.FileResult.from_json(result.to_json()) == result


@pytest.mark.parametrize(
    "repeated_field",
    [[["0123456789abcdef"]], [["0123456789abcdeg", True]], [["0123456789abcdef", 1]], ["0123456789abcdef"], {}],
    ids=["short-pair", "not-hex", "int-flag", "bare-key", "not-a-list"],
)
def test_a_cached_result_with_a_malformed_repeated_field_is_refused(repeated_field):
    fields = json.loads(novels.FileResult("x").to_json())
    with pytest.raises(ValueError):
        novels.FileResult.from_json(json.dumps({**fields, "repeated": repeated_field}))


def test_a_cached_result_with_non_string_distinct_chars_is_refused():
    fields = json.loads(novels.FileResult("x").to_json())
    with pytest.raises(ValueError):
        novels.FileResult.from_json(json.dumps({**fields, "distinct_chars": ["a"]}))


# --- the real novels ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> dict[str, novels.FileResult]:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    return {p.stem: novels.read_and_split(str(p), False) for p in sorted(CORPUS.glob("*.txt"))}


def test_real_novels_lose_nothing_to_boilerplate(corpus):
    keys = reduce([r.repeated for r in corpus.values()])
    removed: Counter = Counter()
    for name, r in corpus.items():
        for chapter in r.chapters:
            lines = chapter.split("\n")[1:]
            for line in lines:
                if key(line) in keys:
                    print(f"{name}: {line}")
            remove(lines, keys, removed)
    total = sum(len(c) for r in corpus.values() for c in r.chapters)
    print(f"boilerplate on {len(corpus)} real novels: {removed['boilerplate']} of {total} characters")
    assert removed["boilerplate"] <= 0.001 * total


def test_site_lines_injected_into_real_novels_are_exactly_what_is_removed(corpus, tmp_path):
    results = []
    for name in ("hongloumeng", "sanguoyanyi"):
        lines = (CORPUS / f"{name}.txt").read_text(encoding="utf-8-sig").splitlines()
        for i in range(len(lines) - 1, 0, -25):  # every 25th line: in most chapters
            lines.insert(i, f"（天才一秒记住：青石书屋 qs{i}.xyz）")
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        results.append(novels.read_and_split(str(path), False))
    keys = reduce([r.repeated for r in results] + [r.repeated for r in corpus.values()])
    assert keys == {key("（天才一秒记住：青石书屋 ）")}
    for r in results:
        removed: Counter = Counter()
        kept = [remove(c.split("\n"), keys, removed) for c in r.chapters]
        assert not any("青石书屋" in line for c in kept for line in c)
        injected = sum(c.count("青石书屋") for c in r.chapters)
        assert removed["boilerplate"] == len("（天才一秒记住：青石书屋 ）") * injected
