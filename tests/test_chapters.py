"""Chapter splitting: Chinese numerals, the heading shapes real files have, TOCs, repeated headings, front matter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gpt_novel.data import chapters, novels
from gpt_novel.data.chapters import RUN_ON_LINE, Chapter, chinese_number, parse_heading, split_chapters, split_run_on
from gpt_novel.data.clean import clean_lines, normalize

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "corpus" / "青石镇.txt"


def split(lines: list[str]) -> tuple[list[Chapter], dict[str, int]]:
    removed: Counter = Counter()
    chapters = split_chapters(lines, removed)
    return chapters, {k: v for k, v in removed.items() if v}


def outline(chapters: list[Chapter]) -> list[tuple[str, int | None, list[str]]]:
    return [(c.heading, c.number, c.lines) for c in chapters]


# --- chinese_number -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("一", 1),
        ("十", 10),
        ("十二", 12),
        ("二十", 20),
        ("二十一", 21),
        ("一百二十", 120),
        ("一百零八", 108),
        ("一百八", 108),
        ("一零零", 100),
        ("一二零", 120),
        ("二百四十", 240),
        ("两百", 200),
        ("一千零一", 1001),
        ("廿三", 23),
        ("〇〇七", 7),
        ("001", 1),
        ("12", 12),
        ("１２", 12),
        ("０３", 3),
        (" 十五 ", 15),
    ],
)
def test_chinese_number(text, value):
    assert chinese_number(text) == value


@pytest.mark.parametrize("text", ["junk", "", "  ", "十a", "第一", "一章", "１a"])
def test_chinese_number_rejects_junk(text):
    assert chinese_number(text) is None


# --- parse_heading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text", "number"),
    [
        ("第一回 宴桃园豪杰三结义 斩黄巾英雄首立功", "第一回 宴桃园豪杰三结义 斩黄巾英雄首立功", 1),
        (normalize("第一百二十回\u3000荐杜预老将献新谋"), "第一百二十回 荐杜预老将献新谋", 120),
        ("第一零零回 汉兵劫寨破曹真 武侯斗阵辱仲达", "第一零零回 汉兵劫寨破曹真 武侯斗阵辱仲达", 100),
        ("第一百八回 宋公明全伙受招安", "第一百八回 宋公明全伙受招安", 108),
        ("第001章", "第001章", 1),
        ("第12章 回家", "第12章 回家", 12),
        ("第 12 章", "第 12 章", 12),
        ("第１２章 回家", "第１２章 回家", 12),
        ("第十章：雨夜", "第十章：雨夜", 10),
        ("上卷 第一回 王教头私走延安府 九纹龙大闹史家村", "上卷 第一回 王教头私走延安府 九纹龙大闹史家村", 1),
        ("第一卷 第三章 标题", "第一卷 第三章 标题", 3),
        ("第三节", "第三节", 3),
        ("第五節 夜話", "第五節 夜話", 5),
        ("第四十六回廣成子破金光陣", "第四十六回廣成子破金光陣", 46),
        ("楔子 张天师祈禳瘟疫 洪太尉误走妖魔", "楔子 张天师祈禳瘟疫 洪太尉误走妖魔", None),
        ("序章", "序章", None),
        ("尾声 归来", "尾声 归来", None),
        ("《》目录 第一回 灵根育孕源流出 心性修持大道生", "第一回 灵根育孕源流出 心性修持大道生", 1),
        ("《西游记》第二回 悟彻菩提真妙理", "第二回 悟彻菩提真妙理", 2),
        ("第一章 雨夜来客", "第一章 雨夜来客", 1),
    ],
)
def test_parse_heading_accepts(line, text, number):
    h = parse_heading(line)
    assert h is not None
    assert h.text == text
    assert h.number == number
    assert h.glued_body == ""


def test_junk_prefix_is_removed_from_the_heading_and_counted():
    line = "《》目录 第一回 灵根育孕源流出 心性修持大道生"
    chapters, removed = split([line, "诗曰：混沌未分天地乱。"])
    assert outline(chapters) == [("第一回 灵根育孕源流出 心性修持大道生", 1, ["诗曰：混沌未分天地乱。"])]
    assert removed == {"heading_junk": len("《》目录")}


@pytest.mark.parametrize(
    "line",
    [
        "第四回中既将薛家母子在荣府内寄居等事略已表明，此回则暂不能写矣．",
        "第三章已经写完了，他放下笔，吹灭了灯。",
        "第一次见面，他就笑了。",
        "第二天一早，阿福去了镇上。",
        "民国十二年，也就是1923年的秋天，青石镇一连下了七天的雨。",
        "他翻到第十二章，读了起来。",
        "章回小说",
        "",
    ],
)
def test_parse_heading_rejects_sentences_and_ordinary_lines(line):
    assert parse_heading(line) is None


def test_heading_glued_to_its_first_sentence_is_split():
    line = "第三十二回 晏蛾兒逾牆殉節 群公子大鬧朝堂話說齊桓公背了管仲遺言，復用豎刁、易牙、開方三人。"
    h = parse_heading(line)
    assert h is not None
    assert h.text == "第三十二回 晏蛾兒逾牆殉節 群公子大鬧朝堂"
    assert h.number == 32
    assert h.glued_body.startswith("話說齊桓公")
    assert h.text + h.glued_body == line


def test_glued_first_sentence_becomes_the_first_body_line():
    line = "第三十二回 晏蛾兒逾牆殉節 群公子大鬧朝堂話說齊桓公背了管仲遺言，復用豎刁。"
    chapters, removed = split([line, "三人專權，朝政日壞。"])
    assert outline(chapters) == [
        ("第三十二回 晏蛾兒逾牆殉節 群公子大鬧朝堂", 32, ["話說齊桓公背了管仲遺言，復用豎刁。", "三人專權，朝政日壞。"])
    ]
    assert removed == {}


def test_two_headings_on_one_line_are_a_toc_line():
    h = parse_heading("第一回 紂王女媧宮進香 第二回 賞州侯蘇護反商")
    assert h is not None and h.toc_line


# --- split_chapters ---------------------------------------------------------------------------------------------

BODY1 = ["話說那日天氣晴好，眾人都在院中閒坐。", "那人又說了一句話。"]
BODY2 = ["卻說蘇護回到府中，心中不樂。"]
BODY3 = ["且說姬昌出了城門。"]
H1, H2, H3 = "第一回 紂王女媧宮進香", "第二回 賞州侯蘇護反商", "第三回 姬昌解圍進妲己"


def test_toc_before_the_body_is_removed_and_counted():
    lines = [H1, H2, H3, H1, *BODY1, H2, *BODY2, H3, *BODY3]
    chapters, removed = split(lines)
    assert outline(chapters) == [(H1, 1, BODY1), (H2, 2, BODY2), (H3, 3, BODY3)]
    assert removed == {"toc": len(H1) + len(H2) + len(H3)}


def test_toc_with_two_headings_per_line_is_removed():
    toc = ["第一回 紂王女媧宮進香 第二回 賞州侯蘇護反商", "第三回 姬昌解圍進妲己 第四回 恩州驛狐狸殺妲己"]
    chapters, removed = split([*toc, H1, *BODY1, H2, *BODY2])
    assert outline(chapters) == [(H1, 1, BODY1), (H2, 2, BODY2)]
    assert removed == {"toc": sum(map(len, toc))}


def test_toc_whose_last_entry_is_followed_by_a_blurb():
    blurb = "這是一部講商周之事的神魔小說，流傳甚廣。"
    chapters, removed = split([H1, H2, H3, blurb, H1, *BODY1, H2, *BODY2])
    assert outline(chapters) == [(H1, 1, BODY1), (H2, 2, BODY2)]
    assert removed == {"toc": len(H1) + len(H2) + len(H3), "front_matter": len(blurb)}


def test_title_on_the_next_line_merges_into_the_heading():
    lines = ["第六回", "周望廉細說見妖事 劉泰真捉妖被妖捉", "話說周望廉回到家中，把見妖的事說了一遍。", "眾人聽了。"]
    chapters, removed = split(lines)
    assert outline(chapters) == [("第六回 周望廉細說見妖事 劉泰真捉妖被妖捉", 6, lines[2:])]
    assert removed == {}


def test_toc_with_titles_on_their_own_lines_is_removed():
    toc = ["第一回", "宴桃园豪杰三结义", "第二回", "张翼德怒鞭督邮"]
    body1, body2 = ["话说天下大势，分久必合。", "合久必分。"], ["且说董卓字仲颖。", "众人皆惊。"]
    chapters, removed = split([*toc, "第一回", "宴桃园豪杰三结义", *body1, "第二回", "张翼德怒鞭督邮", *body2])
    assert outline(chapters) == [("第一回 宴桃园豪杰三结义", 1, body1), ("第二回 张翼德怒鞭督邮", 2, body2)]
    assert removed == {"toc": sum(map(len, toc))}


def test_heading_repeated_inside_its_chapter_is_not_a_new_chapter():
    lines = ["第一章 雨夜来客", "雨下了七天。", "第一章 雨夜来客", "阿福打了个哈欠。", "第二章 旧事", "掌柜叹了口气。"]
    chapters, removed = split(lines)
    assert outline(chapters) == [
        ("第一章 雨夜来客", 1, ["雨下了七天。", "阿福打了个哈欠。"]),
        ("第二章 旧事", 2, ["掌柜叹了口气。"]),
    ]
    assert removed == {"duplicate_heading": len("第一章 雨夜来客")}


def test_short_front_matter_is_removed():
    front = ["封神演義", "作者：許仲琳", "一部講商周之事的神魔小說。"]
    chapters, removed = split([*front, H1, *BODY1, H2, *BODY2])
    assert outline(chapters) == [(H1, 1, BODY1), (H2, 2, BODY2)]
    assert removed == {"front_matter": sum(map(len, front))}


def test_long_front_matter_is_kept_as_a_chapter_without_heading():
    preface = ["这是一篇很长的序言，讲述了作者写作的缘起。" * 10] * 12
    chapters, removed = split([*preface, "第一章 开始", "正文。"])
    assert outline(chapters) == [("", None, preface), ("第一章 开始", 1, ["正文。"])]
    assert removed == {}


def test_text_without_headings_is_one_chapter():
    lines = ["只是一段没有标题的文字。", "第二段。"]
    chapters, removed = split(lines)
    assert outline(chapters) == [("", None, lines)]
    assert chapters[0].text == "只是一段没有标题的文字。\n第二段。"
    assert removed == {}


def test_no_lines_no_chapters():
    assert split([]) == ([], {})


def test_chapters_keep_their_numbers_in_order():
    lines = []
    for n, numeral in enumerate(["一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二"], 1):
        lines += [f"第{numeral}章", f"这是第{n}章的正文。"]
    chapters, removed = split(lines)
    assert [c.number for c in chapters] == list(range(1, 13))
    assert [c.lines for c in chapters] == [[f"这是第{n}章的正文。"] for n in range(1, 13)]
    assert removed == {}


def test_special_headings_have_no_number():
    lines = ["楔子 张天师祈禳瘟疫", "话说大宋仁宗天子在位。", "第一回 王教头私走延安府", "且说王进。", "尾声", "后来。"]
    chapters, _ = split(lines)
    assert [(c.heading, c.number) for c in chapters] == [
        ("楔子 张天师祈禳瘟疫", None),
        ("第一回 王教头私走延安府", 1),
        ("尾声", None),
    ]


def test_chapter_text_is_heading_then_body():
    chapters, _ = split([H1, *BODY1])
    assert chapters[0].text == "\n".join([H1, *BODY1])
    assert Chapter("第一章", ["甲。", "乙。"], 1).text == "第一章\n甲。\n乙。"
    assert Chapter("", ["甲。"]).text == "甲。"


def test_heading_glued_to_a_body_ending_in_a_dot_is_not_duplicated():
    line = "第八十八回 博庭欢宝玉赞孤儿 正家法贾珍鞭悍仆 却说惜春正在那里揣摩棋谱．未知何事，下回分解."
    h = parse_heading(line)
    assert h is not None and h.text == "第八十八回 博庭欢宝玉赞孤儿 正家法贾珍鞭悍仆"
    assert h.glued_body == "却说惜春正在那里揣摩棋谱．未知何事，下回分解."


def test_run_on_heading_without_separator_ends_its_title_at_a_space():
    h = parse_heading("第二回賞州侯蘇護反商 丞相金鑾直諫君，忠肝義膽孰能群？")
    assert h is not None and (h.text, h.number) == ("第二回賞州侯蘇護反商", 2)
    assert h.glued_body == "丞相金鑾直諫君，忠肝義膽孰能群？"


def test_lines_after_a_toc_line_are_kept_not_dropped():
    body = ["這是一段很長的正文，講的是紂王進香的事情。", "第二段正文。"]
    chapters, removed = split(["第一回 紂王女媧宮進香 第二回 賞州侯蘇護反商", *body])
    assert [x for c in chapters for x in c.lines] == body
    assert removed == {}


# --- a text without line breaks -----------------------------------------------------------------------------------

PARA = "话说那日天气晴好，众人都在院中闲坐，说些家常话。"


def _run_on_novel(sep: str, n: int = 6) -> tuple[str, list[str]]:
    titles = "雨夜来客 旧事重提 渡口相逢 客栈风波 夜访书院 山中论道 江上送别 故人归来 尾声之前".split()
    headings = [f"第{numeral}回 {title}" for numeral, title in zip("一二三四五六七八九", titles, strict=True)][:n]
    return sep.join(h + sep + sep.join([PARA] * 40) for h in headings), headings


@pytest.mark.parametrize("sep", ["", " "], ids=["glued", "spaces"])
def test_a_run_on_line_is_broken_before_its_headings(sep):
    line, headings = _run_on_novel(sep)
    pieces = split_run_on([line])
    # the heading and its body become lines of their own: the title runs to a space, or to 话说 when glued
    assert pieces[0::2] == headings
    assert all(not p.startswith("第") for p in pieces[1::2])
    assert "".join(pieces).replace(" ", "") == line.replace(" ", "")


@pytest.mark.parametrize(
    "line",
    [
        "他翻到第十二章，读了起来。" * 100,
        ("好。第三回 " + "正文" * 600)[:RUN_ON_LINE],
        "甲" * 2000 + "这第三回写的是什么",
    ],
    ids=["no-sentence-end-before", "not-longer-than-RUN_ON_LINE", "inside-a-sentence"],
)
def test_split_run_on_leaves_other_lines_alone(line):
    assert split_run_on([line, "第一回 甲"]) == [line, "第一回 甲"]


def test_split_run_on_keeps_volume_and_scraper_prefixes_with_their_heading():
    line = PARA * 30 + " 上卷 第一回 王教头私走延安府 " + PARA * 30 + "《》目录 第二回 悟彻菩提真妙理 " + PARA
    pieces = split_run_on([line])
    assert [p[:8] for p in pieces[1::2]] == ["上卷 第一回 王", "《》目录 第二回"]


@pytest.mark.parametrize("sep", ["", "\u3000\u3000"], ids=["glued", "indented"])
def test_a_novel_without_line_breaks_keeps_its_text_and_chapters(tmp_path, sep):
    ad = "更多精彩小说请访问丫丫小说网www.yayabook.com。"
    text, headings = _run_on_novel(sep, 9)
    at = text.index(PARA, len(text) // 2)
    path = tmp_path / "one-line.txt"
    front = "《某书》作者：某某。"
    path.write_text(front + sep + text[:at] + ad + text[at:], encoding="utf-8")
    result = novels.read_and_split(str(path), False)
    assert result.status == "ok"
    assert [c.split("\n")[0] for c in result.chapters] == headings
    def solid(s: str) -> str:
        return "".join(s.split())

    assert solid("".join(result.chapters)) == solid(text)
    assert result.removed["ad"] == len(ad) and result.removed["front_matter"] == len(front)
    assert "no chapter headings found: the whole file is one chapter" not in result.warnings


def test_a_real_novel_without_line_breaks_keeps_its_text_and_chapters(tmp_path):
    source = SAMPLE.parent.parent.parent.parent / "shared" / "corpus" / "sanguoyanyi.txt"
    if not source.exists():
        pytest.skip("../shared/corpus is absent")
    lines = [x.strip() for x in source.read_text(encoding="utf-8").splitlines() if x.strip()]
    one = tmp_path / "sanguo.txt"
    one.write_text("\u3000\u3000".join(lines), encoding="utf-8")
    as_lines, as_one = novels.read_and_split(str(source), False), novels.read_and_split(str(one), False)
    assert len(as_one.chapters) == len(as_lines.chapters) == 120
    solid = [sum(len(c) - c.count("\n") - c.count(" ") for c in r.chapters) for r in (as_lines, as_one)]
    assert solid[0] == solid[1]


# --- the shipped sample -----------------------------------------------------------------------------------------


def test_sample_novel_splits_into_its_six_chapters():
    lines = normalize(SAMPLE.read_text(encoding="utf-8")).split("\n")
    removed: Counter = Counter()
    chapters = split_chapters(clean_lines(lines, removed), removed)

    numerals = ["一", "二", "三", "四", "五", "六"]
    assert len(chapters) == 6
    assert [c.heading.split(" ")[0] for c in chapters] == [f"第{n}章" for n in numerals]
    assert [c.number for c in chapters] == [1, 2, 3, 4, 5, 6]
    assert all(len(c.lines) > 10 for c in chapters)
    assert lines[0] == "《青石镇》" and lines[1].startswith("作者：")
    assert {k: v for k, v in removed.items() if v} == {"front_matter": len(lines[0]) + len(lines[1])}
    # Nothing else is lost: every body line is in some chapter, in order.
    assert [x for c in chapters for x in [c.heading, *c.lines]] == lines[2:]


def test_a_hard_wrapped_text_is_rejoined_into_paragraphs_and_verse_and_headings_stay():
    paragraphs = ["话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。及秦灭之后，楚、汉分争，又并入于汉。",
                  "汉朝自高祖斩白蛇而起义，一统天下，后来光武中兴，传至献帝，遂分为三国。推其致乱之由，殆始于桓、灵二帝"]
    paragraphs = [p * 3 for p in paragraphs]  # ten lines at the wrap's width at least
    first, second = ([p[i : i + 20] for i in range(0, len(p), 20)] for p in paragraphs)
    verse = ["滚滚长江东逝水，浪花淘尽英雄。", "是非成败转头空，青山依旧在。"]
    lines = ["第一回 宴桃园豪杰三结义", *first, "第二回 张翼德怒鞭督邮", *second, *verse]
    assert chapters.wrap_width(lines) == 20
    # no full piece ends a sentence here: each paragraph comes back whole
    assert chapters.unwrap(lines) == ["第一回 宴桃园豪杰三结义", "".join(first), "第二回 张翼德怒鞭督邮",
                                      "".join(second), *verse]
    assert chapters.unwrap(paragraphs + verse) == paragraphs + verse  # lengths spread out: not wrapped

