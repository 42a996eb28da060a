"""Normalization and cleaning: what download sites add is removed and counted by reason; prose is left alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gpt_novel.data import novels
from gpt_novel.data.clean import WHOLE_LINE_MAX, clean_lines, normalize, to_simplified

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "corpus" / "青石镇.txt"
GOOD = "他推开门走了出去，外面的雨越下越大。"
# GB text shifted by half a character and re-decoded: mostly real (wrong) Han characters, a few giveaways.
GB_MOJIBAKE = "σ搪杩植恢杏茫?蠓锝阌爰昼鏊盗耍?ㄉ霞盖б?樱?"
# The same kinds of damage from other code pages: GBK bytes read as CP1251, and as EUC-KR.
_GBK = "镇上唯一还亮着灯的是渡口边的晚秋客栈".encode("gbk")
CYRILLIC_MOJIBAKE = _GBK.decode("cp1251", errors="replace")
HANGUL_MOJIBAKE = _GBK.decode("euc_kr", errors="replace").replace("\ufffd", "")


def clean_one(line: str) -> tuple[list[str], dict[str, int]]:
    removed: Counter = Counter()
    out = clean_lines([line], removed)
    return out, {k: v for k, v in removed.items() if v}


# --- normalize ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("第一行\r\n第二行\r第三行\n", "第一行\n第二行\n第三行"),
        ("\u3000\u3000民国十二年的秋天。\n    镇子不大。\n\t阿福。", "民国十二年的秋天。\n镇子不大。\n阿福。"),
        ("第一段。\n\n\n\u3000\u3000\n  \t \n第二段。\n", "第一段。\n第二段。"),
        ("他说  了\t\t一句\u3000\u3000话。   ", "他说 了 一句 话。"),
        ("青\u200b石\u200c镇\u200d的\u2060雨\ufeff。", "青石镇的雨。"),
        ("\ufeff第一章 雨夜来客\r\n\u3000\u3000正文。", "第一章 雨夜来客\n正文。"),
        ("甲\u2028乙\u2029丙\x0c丁\x85戊", "甲\n乙\n丙\n丁\n戊"),
        ("Tea House", "Tea House"),
        ("", ""),
        ("\r\n\u3000 \n", ""),
    ],
    ids=[
        "line-endings",
        "indentation",
        "blank-lines",
        "inner-spaces",
        "zero-width",
        "bom-crlf",
        "unicode-breaks",
        "ascii",
        "empty",
        "only-blanks",
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalize_is_idempotent_on_the_sample():
    once = normalize(SAMPLE.read_text(encoding="utf-8"))
    assert normalize(once) == once
    assert "\r" not in once and "\u3000" not in once and "\n\n" not in once
    assert all(line == line.strip() and line for line in once.split("\n"))


# --- clean_lines: what is removed -------------------------------------------------------------------------------

AD_LINE = "TXT小说天堂  https://www.xstt5.com，最有文艺气息的文学网站"
WATERMARK = '老爺說：１七出之條：即封建時代丈夫休妻的七個理由。--書香門第注www.bookhome.net"你講！'
METADATA = "更新时间:2007-1-12 23:57:15 本章字数:5906"
DISCLAIMER = "作品仅供读者预览,请在下载24小时内删除，不得用作商业用途"
NAV_BAR = "首页|原创书库|现代|言情|武侠|科幻"

P = pytest.param
CASES = [
    # line, expected output lines, expected removed counts
    P(AD_LINE, [], {"ad": len(AD_LINE)}, id="ad-line"),
    P("TXT小說天堂", [], {"ad": 7}, id="ad-line-traditional"),
    P("他说详情请见https://example.com/a?b=1然后走了。", ["他说详情请见然后走了。"], {"url": 25}, id="url-http"),
    P("他在www.abc.net上看到的。", ["他在上看到的。"], {"url": 11}, id="url-www"),
    P("阿福记下了qingshi.cn/town这个地址。", ["阿福记下了这个地址。"], {"url": 15}, id="url-domain"),
    P("手机用户请到m.xxx.net阅读", ["手机用户请到阅读"], {"url": 9}, id="url-domain-before-han"),
    P(WATERMARK, ['老爺說："你講！'], {"watermark": len(WATERMARK) - len('老爺說："你講！')}, id="watermark"),
    P(METADATA, [], {"metadata": len(METADATA)}, id="metadata"),
    P("上傳時間：2008-3-1", [], {"metadata": len("上傳時間：2008-3-1")}, id="metadata-traditional"),
    P(DISCLAIMER, [], {"disclaimer": len(DISCLAIMER)}, id="disclaimer"),
    P("版權所有，請支持正版", [], {"disclaimer": 10}, id="disclaimer-copyright"),
    P(NAV_BAR, [], {"navigation": len(NAV_BAR)}, id="navigation-bar"),
    P("回首页", [], {"navigation": 3}, id="navigation-home"),
    P("上一章", [], {"navigation": 3}, id="navigation-previous"),
    P("--------", [], {"decoration": 8}, id="decoration-dashes"),
    P("＊＊＊＊＊＊", [], {"decoration": 6}, id="decoration-stars"),
    P("= = = = =", [], {"decoration": 9}, id="decoration-spaced"),
    P("——————", [], {"decoration": 6}, id="decoration-em-dashes"),
    P("他说：“走吧。”\ufffd\ufffd", ["他说：“走吧。”"], {"undecodable": 2}, id="replacement-chars"),
    P(GOOD + GB_MOJIBAKE, [GOOD], {"mojibake": len(GB_MOJIBAKE)}, id="mojibake-gb-tail"),
    P(GB_MOJIBAKE, [], {"mojibake": len(GB_MOJIBAKE)}, id="mojibake-gb-line"),
    P(GOOD + CYRILLIC_MOJIBAKE, [GOOD], {"mojibake": len(CYRILLIC_MOJIBAKE)}, id="mojibake-cyrillic-tail"),
    P(CYRILLIC_MOJIBAKE, [], {"mojibake": len(CYRILLIC_MOJIBAKE)}, id="mojibake-cyrillic-line"),
    P(GOOD + HANGUL_MOJIBAKE, [GOOD], {"mojibake": len(HANGUL_MOJIBAKE)}, id="mojibake-hangul-tail"),
]


@pytest.mark.parametrize(("line", "expected", "counts"), CASES)
def test_clean_lines_removes_and_counts_by_reason(line, expected, counts):
    out, removed = clean_one(line)
    assert out == expected
    assert removed == counts
    assert sum(removed.values()) == len(line) - sum(map(len, out))


def test_ad_injected_mid_sentence_is_cut_from_a_long_line():
    prose = "这是他年轻时在书院里读过的文章，" * 5
    line = prose + "皓首穷经；丫丫电子书虽有千言"
    assert clean_one(line) == ([prose + "皓首穷经；虽有千言"], {"ad": 5})


def test_ad_injected_mid_sentence_is_cut_from_a_short_line():
    assert clean_one("皓首穷经；丫丫电子书虽有千言") == (["皓首穷经；虽有千言"], {"ad": 5})


@pytest.mark.parametrize(
    "line", ["他说：“这本电子书是我从网上下载的。”", "他打开手机，搜索“青石镇 小说网”。"], ids=["ebook", "novel-site"]
)
def test_prose_mentioning_an_ad_keyword_is_kept(line):
    assert clean_one(line) == ([line], {})


@pytest.mark.parametrize(
    "line", ["他说 https://x.com/abc 然后走了。", "他说详情请见 www.abc.com 然后走了。"], ids=["http", "www"]
)
def test_removed_counts_match_when_a_cut_leaves_double_spaces(line):
    out, removed = clean_one(line)
    assert sum(removed.values()) == len(line) - sum(map(len, out))


# --- clean_lines: what is kept ----------------------------------------------------------------------------------

KEPT = [
    "丫丫叉叉的树枝伸到窗前。",
    "乃是書香門第，禮樂人家",
    "民国十二年，也就是1923年的秋天，青石镇一连下了七天的雨。",
    "一行是“晚秋客栈”，另一行却是洋文“Tea House”。",
    "老人说：“你——你——你怎么来了？”",
    "“你是谁？你从哪里来？你要做什么？”他一连问了三个问题。",
    "“你是谁?”“我?我是阿福。”“阿福?”",
    "他等了一会儿……又等了一会儿……",
    "第一章 ———— 开始",
    "更新了门上的旧木牌，时间是下午三点。",
    "他把书放回首页那一格的书架上。",
]


@pytest.mark.parametrize("line", KEPT, ids=range(len(KEPT)))
def test_prose_passes_through_unchanged(line):
    assert clean_one(line) == ([line], {})


def test_dialogue_with_ascii_question_marks_is_kept():
    line = "“什么?你说什么?再说一遍?”他瞪大了眼睛。"
    assert clean_one(line) == ([line], {})


def test_sample_novel_is_untouched_by_cleaning():
    lines = normalize(SAMPLE.read_text(encoding="utf-8")).split("\n")
    removed: Counter = Counter()
    assert clean_lines(lines, removed) == lines
    assert sum(removed.values()) == 0


def test_mixed_lines_keep_order_and_counts_add_up():
    lines = [
        "第一章 雨夜来客",
        METADATA,
        "民国十二年的秋天，青石镇下了七天的雨。",
        NAV_BAR,
        "--------",
        GOOD + GB_MOJIBAKE,
        "他在www.abc.net上看到的。",
        AD_LINE,
        "回首页",
    ]
    removed: Counter = Counter()
    out = clean_lines(lines, removed)
    assert out == ["第一章 雨夜来客", "民国十二年的秋天，青石镇下了七天的雨。", GOOD, "他在上看到的。"]
    assert set(k for k, v in removed.items() if v) == {"metadata", "navigation", "decoration", "mojibake", "url", "ad"}
    assert removed["navigation"] == len(NAV_BAR) + 3
    assert sum(removed.values()) == sum(map(len, lines)) - sum(map(len, out))


def test_clean_lines_adds_to_an_existing_counter():
    removed = Counter({"ad": 10, "toc": 4})
    clean_lines(["回首页", AD_LINE], removed)
    assert removed["ad"] == 10 + len(AD_LINE)
    assert removed["navigation"] == 3
    assert removed["toc"] == 4


# --- long lines: every rule removes an ad-sized span, never a novel ------------------------------------------------

PROSE = "这是他年轻时在书院里读过的文章，至今还记得其中的句子。"
LONG = PROSE * 20  # far longer than WHOLE_LINE_MAX: paragraphs run together


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("TXT小说天堂提供全本免费下载，网址https://www.xstt5.com。", "ad"),
        ("作品仅供读者预览，请在下载24小时内删除。", "disclaimer"),
        ("版權所有，請支持正版！", "disclaimer"),
    ],
    ids=["ad", "disclaimer", "copyright"],
)
def test_in_a_long_line_a_whole_line_rule_cuts_only_its_sentence(junk, reason):
    line = LONG + junk + LONG
    out, removed = clean_one(line)
    assert out == [LONG + LONG]
    assert removed == {reason: len(junk)}


def test_in_a_long_line_a_navigation_bar_is_cut():
    bar = "首页|原创书库|现代|言情|武侠|论坛"
    assert clean_one(LONG + bar + " " + LONG) == ([LONG + " " + LONG], {"navigation": len(bar)})


def test_in_a_long_line_a_navigation_bar_glued_to_prose_keeps_its_outer_items():
    inner = "|原创书库|现代|言情|武侠|"
    line = LONG + "他走到书院首页" + inner + "论坛门口" + LONG
    assert clean_one(line) == ([LONG + "他走到书院首页论坛门口" + LONG], {"navigation": len(inner)})


def test_in_a_long_line_metadata_is_cut_with_its_value_only():
    heading, body = "上卷 第一回 王教头私走延安府", "话说大宋仁宗天子在位。"
    line = f"{heading} 更新时间:2007-1-12 23:57:15 本章字数:5906 {body}" + LONG
    out, removed = clean_one(line)
    assert out == [f"{heading} {body}{LONG}"]
    assert removed == {"metadata": len("更新时间:2007-1-12 23:57:15本章字数:5906"), "whitespace": 2}


def test_in_a_long_line_navigation_words_go_only_when_standing_alone():
    line = LONG + " 上一章 回目录 下一章 " + "他把书放回首页那一格的书架上。" + LONG
    out, removed = clean_one(line)
    assert out == [LONG + " 他把书放回首页那一格的书架上。" + LONG]
    assert removed == {"navigation": 9, "whitespace": 3}


def test_the_whole_line_bound():
    short = DISCLAIMER + "，" + "他" * (WHOLE_LINE_MAX - len(DISCLAIMER) - 1)
    assert len(short) == WHOLE_LINE_MAX and clean_one(short) == ([], {"disclaimer": WHOLE_LINE_MAX})
    longer = short + "。"  # one character more: only the disclaimer's sentence (the whole line up to 。) is too long
    out, removed = clean_one(longer)
    assert out and removed["disclaimer"] < 30


def test_a_novel_without_line_breaks_loses_only_the_ad_sentence():
    ad = "更多精彩小说请访问丫丫小说网www.yayabook.com。"
    novel = "".join(f"第{n}章 雨夜 " + PROSE * 300 for n in range(1, 9))  # 8 chapters, one line of 128K characters
    at = novel.index("。", 50_000) + 1
    line = novel[:at] + ad + novel[at:]
    out, removed = clean_one(line)
    assert out == [novel]
    assert removed == {"ad": len(ad)}


@pytest.mark.parametrize("junk", [AD_LINE, METADATA, NAV_BAR, DISCLAIMER], ids=["ad", "meta", "nav", "disclaimer"])
def test_a_novel_without_line_breaks_is_never_removed_whole(junk):
    line = junk + PROSE * 25_000  # 700K characters
    out, removed = clean_one(line)
    assert sum(removed.values()) <= WHOLE_LINE_MAX
    assert out[0].endswith(PROSE * 24_999)


def test_mojibake_in_a_long_line_cuts_only_the_damaged_sentence():
    line = LONG + GB_MOJIBAKE + "。" + LONG + CYRILLIC_MOJIBAKE + " " + LONG
    out, removed = clean_one(line)
    assert out == [LONG + LONG + " " + LONG]
    assert removed == {"mojibake": len(GB_MOJIBAKE) + 1 + len(CYRILLIC_MOJIBAKE)}


def test_mojibake_without_sentence_ends_cuts_a_bounded_span():
    line = "他" * 100_000 + GB_MOJIBAKE + "他" * 100_000
    out, removed = clean_one(line)
    assert removed["mojibake"] <= len(GB_MOJIBAKE) + 2 * WHOLE_LINE_MAX
    assert sum(removed.values()) == len(line) - len(out[0])


@pytest.mark.parametrize("seed", range(20))
def test_mojibake_cuts_add_up_and_keep_order(seed):
    import random

    rng = random.Random(seed)
    parts = [GOOD, PROSE, GB_MOJIBAKE, CYRILLIC_MOJIBAKE, HANGUL_MOJIBAKE, "他说", " ", "。", "一二三四五六七八九十"]
    line = "".join(rng.choice(parts) for _ in range(rng.randint(3, 40)))
    out, removed = clean_one(line)
    kept = "".join(out)
    assert sum(removed.values()) == len(line) - len(kept)
    it = iter(line)
    assert all(ch in it for ch in kept)  # a subsequence: nothing duplicated or reordered


def test_a_refused_file_says_where_its_characters_went(tmp_path):
    path = tmp_path / "ads.txt"
    path.write_text((AD_LINE + "\n") * 3 + "https://www.xstt5.com\n", encoding="utf-8")
    result = novels.read_and_split(str(path), False)
    assert result.status == "refused"
    assert result.reason == f"no text left after cleaning (ad {3 * len(normalize(AD_LINE))}; url 21)"


def test_a_refused_one_line_file_names_its_counts_with_thousands_separators(tmp_path):
    path = tmp_path / "junk.txt"
    path.write_text("-" * 1500, encoding="utf-8")
    result = novels.read_and_split(str(path), False)
    assert result.reason == "no text left after cleaning (decoration 1,500)"


# --- stray foreign letters ----------------------------------------------------------------------------------------

STRAY = [
    # a lost character's stand-in, as editions of 红楼梦, 水浒传 and 济公全传 have them
    ("着缕金百蝶穿花大红洋缎窄Ё袄，外罩五彩刻丝石青银鼠褂", "Ё"),
    ("凡是那些纨э气习者，莫不喜与他来往。", "э"),
    ("一边是玻璃ニ．地下两溜十六张楠木交椅", "ニ"),
    ("她轻声说了一句あ就走了。", "あ"),
    ("知縣ˍ聽，連說：", "ˍ"),
    ("身边取出号旗号╣，就庄前放起。", "╣"),
    ("这是第三个γ字。", "γ"),
    ("她说：“你好한。”", "한"),
    ("头上只散挽着シ", "シ"),
]


@pytest.mark.parametrize(("line", "letter"), STRAY, ids=range(len(STRAY)))
def test_a_stray_foreign_letter_is_removed_and_counted(line, letter):
    assert clean_one(line) == ([line.replace(letter, "")], {"stray_foreign": 1})


FOREIGN_KEPT = [
    "她轻声说了一句ありがとう就走了。",  # a Japanese word
    "她念道：“私は学生です。”",  # a Japanese sentence, kanji and kana
    "他用俄语说：“Спасибо, друг.”",  # a Russian phrase
    "他只会说一个词：Да。",  # two letters are a word
    "老师念道：nǐ hǎo。",  # pinyin: letters among Latin letters
    "约翰・史密斯走了进来。",  # ・ as a name separator
    "她说：“서울에 가요.”",  # Korean
    "这是αβ射线。",  # two Greek letters
    "却说□□二人来到庄上。",  # the editions' own mark for a lost character
    "我\ue003才前日来家。",  # a private-use stand-in for one rare character
]


@pytest.mark.parametrize("line", FOREIGN_KEPT, ids=range(len(FOREIGN_KEPT)))
def test_words_and_phrases_of_another_script_stay(line):
    assert clean_one(line) == ([line], {})


def test_a_long_japanese_sentence_is_not_mojibake():
    line = "他在信的末尾写道：“今日は本当にありがとうございました。また会いましょう。”"
    assert clean_one(line) == ([line], {})


def test_stray_letters_in_mojibake_are_counted_once_as_mojibake():
    out, removed = clean_one(GOOD + GB_MOJIBAKE)
    assert out == [GOOD] and removed == {"mojibake": len(GB_MOJIBAKE)}


def test_two_stand_ins_a_few_characters_apart_are_both_removed():
    line = "那一种是金す草，这一种是玉ぁ藤，红的自然是紫芸"  # 红楼梦 (the shared edition) as found
    assert clean_one(line) == ([line.replace("す", "").replace("ぁ", "")], {"stray_foreign": 2})


def test_two_stray_letters_far_apart_are_both_removed():
    line = "窄Ё袄" + "，外罩五彩刻丝石青银鼠褂" * 2 + "纨э气习。"
    assert clean_one(line) == ([line.replace("Ё", "").replace("э", "")], {"stray_foreign": 2})


# --- to_simplified ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traditional", "simplified"),
    [
        ("說", "说"),
        ("老爺說：書香門第，禮樂人家", "老爷说：书香门第，礼乐人家"),
        ("晏蛾兒逾牆殉節 群公子大鬧朝堂", "晏蛾儿逾墙殉节 群公子大闹朝堂"),
        ("青石鎮一連下了七天的雨。", "青石镇一连下了七天的雨。"),
        ("已是简体，不变。", "已是简体，不变。"),
        ("Tea House 1923", "Tea House 1923"),
    ],
)
def test_to_simplified(traditional, simplified):
    assert to_simplified(traditional) == simplified
