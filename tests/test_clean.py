"""Normalization and cleaning: what download sites add is removed and counted by reason; prose is left alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gpt_novel.data.clean import clean_lines, normalize, to_simplified

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
    "她轻声说了一句あ就走了。",
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
