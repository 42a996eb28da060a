"""Integration: prepare the eight real classic novels of ../shared/corpus (skipped when it is absent)."""

from __future__ import annotations

import json

import pytest
import webdataset as wds
from conftest import SHARED_CORPUS, run_prepare

from gpt_novel.data.vocab import Vocab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/corpus is not present"),
]

# file → (encoding family, script, true chapter count)
EXPECTED = {
    "hongloumeng.txt": ("utf-8", "simplified", 120),
    "xiyouji.txt": ("utf-8-sig", "simplified", 100),
    "sanguoyanyi.txt": ("utf-8", "simplified", 120),
    "shuihuzhuan.txt": ("gb18030", "simplified", 120),
    "rulinwaishi.txt": ("gbk", "traditional", 55),
    "fengshenyanyi.txt": ("big5", "traditional", 100),
    "dongzhoulieguozhi.txt": ("big5hkscs", "traditional", 108),
    "jigongquanzhuan.txt": ("big5", "traditional", 240),
}
JUNK = ("丫丫电子书", "TXT小说天堂", "bookhome", "書香門第注", "更新时间", "本章字数", "下载24小时内删除", "首页|")


@pytest.fixture(scope="module")
def corpus_data(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("corpus") / "data"
    # characters, not thulac words: what is tested here is decoding and cleaning, which come before segmentation
    # (thulac on the 13 MB took 30 of this fixture's 40 s; the word path is tested on the sample)
    assert run_prepare([SHARED_CORPUS], out, cache_dir, "--seq-len", "512", "--shard-size", "4MB",
                       "--tokenizer", "char") == 0
    return out


@pytest.fixture(scope="module")
def report(corpus_data):
    return {f["path"].rsplit("/", 1)[-1]: f for f in json.loads((corpus_data / "report.json").read_text())["files"]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_novel_is_decoded_right_and_split_into_its_chapters(report, name):
    encoding, script, chapters = EXPECTED[name]
    f = report[name]
    assert f["status"] == "ok"
    assert f["encoding"] == encoding and f["script"] == script
    assert f["undecodable_bytes"] == 0 and f["unk"] == 0
    assert abs(f["chapters"] - chapters) <= max(1, round(0.02 * chapters)), f["chapters"]
    assert f["chars_kept"] > 0.9 * f["chars_in"]
    assert f["chars_kept"] + sum(f["chars_removed"].values()) == f["chars_in"]


def test_known_defects_are_removed_and_counted(report):
    assert report["sanguoyanyi.txt"]["chars_removed"]["ad"] == 10  # 丫丫电子书, injected twice
    assert report["sanguoyanyi.txt"]["chars_removed"]["mojibake"] > 3000
    assert report["shuihuzhuan.txt"]["chars_removed"]["metadata"] > 0
    assert report["jigongquanzhuan.txt"]["chars_removed"]["watermark"] > 0
    assert report["hongloumeng.txt"]["chars_removed"]["navigation"] > 0
    assert report["dongzhoulieguozhi.txt"]["chars_removed"]["toc"] > 0


def test_the_training_text_holds_no_junk_and_no_mojibake(corpus_data):
    vocab = Vocab.load(corpus_data / "tokenizer")
    manifest = json.loads((corpus_data / "manifest.json").read_text())
    urls = [str(corpus_data / s["path"]) for split in manifest["splits"].values() for s in split["shards"]]
    text = "".join(vocab.decode(x["tokens.npy"][1:]) for x in wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(text) > 5_000_000 * 0.9
    for junk in JUNK:
        assert junk not in text, junk
    for mojibake in ("杩植恢", "ㄉ霞"):  # fragments of half-shifted lines in hongloumeng / sanguoyanyi
        assert mojibake not in text
    assert "周宣王聞謠輕殺" in text and "滚滚长江东逝水" in text  # traditional and simplified text both intact
