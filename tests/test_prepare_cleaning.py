"""Cleaning end to end through `gpt-novel prepare`, on the sample novel reshaped as real downloads come: without
line breaks, with stray foreign letters standing for lost characters, with site lines injected by repetition.

What is judged is what training sees, the report and the decoded shards, not the cleaning functions themselves
(test_clean, test_chapters and test_boilerplate do that). The char tokenizer keeps the runs fast: the word
vocabulary plays no part in what cleaning keeps.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import SHARED_CORPUS, run_prepare

from gpt_novel.data import chapters, charsets, clean, ingest, novels
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.vocab import Vocab

OPTIONS = ["--tokenizer", "char", "--seq-len", "16", "--val-ratio", "0", "--workers", "1"]


def _prepare(corpus: Path, out: Path, cache: Path) -> dict:
    """prepare with OPTIONS; the report."""
    assert run_prepare([corpus], out, cache, *OPTIONS) == 0
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _decoded(out: Path) -> str:
    """What training reads: every split's shards unpacked (samples overlap by one id) and decoded, specials kept
    ([MASK] opens a chapter, [CLS] closes it)."""
    dataset = Dataset.load(out)
    vocab = Vocab.load(dataset.tokenizer_dir)
    texts = []
    for split in dataset.manifest.splits.values():
        urls = [str(out / s.path) for s in split.shards]
        samples = [x["tokens.npy"] for x in wds.WebDataset(urls, shardshuffle=False).decode()]
        ids = np.concatenate([samples[0]] + [s[1:] for s in samples[1:]])
        texts.append(vocab.decode(ids, keep_special=True))
    return "".join(texts)


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


def _paragraphs(sample_text: str) -> list[str]:
    """The sample's non-empty lines without their indentation: front matter, headings and paragraphs."""
    return [line.strip() for line in sample_text.split("\n") if line.strip()]


# --- a novel without line breaks --------------------------------------------------------------------------------

ONE_LINE = {"indented": "\u3000\u3000", "glued": ""}  # what stands between paragraphs once the breaks are lost


@pytest.fixture(scope="module")
def one_line_runs(tmp_path_factory, sample_text, cache_dir) -> dict[str, tuple[dict, Path]]:
    """The sample prepared as it is ("lines") and as one line per way of joining its paragraphs: report and output."""
    root = tmp_path_factory.mktemp("one-line")
    texts = {"lines": sample_text, **{k: sep.join(_paragraphs(sample_text)) for k, sep in ONE_LINE.items()}}
    runs = {}
    for name, text in texts.items():
        out = root / f"out-{name}"
        report = _prepare(_write(root / name, "novel.txt", text), out, cache_dir)
        runs[name] = (report["files"][0], out)
    return runs


@pytest.mark.parametrize("joined", ONE_LINE)
def test_a_novel_without_line_breaks_keeps_its_text(one_line_runs, joined):
    lines, _ = one_line_runs["lines"]
    one, _ = one_line_runs[joined]
    assert one["status"] == "ok"
    assert one["chars_kept"] == pytest.approx(lines["chars_kept"], rel=0.03)
    assert set(one["chars_removed"]) <= {"whitespace", "front_matter"}


@pytest.mark.parametrize("joined", ONE_LINE)
def test_a_novel_without_line_breaks_keeps_its_chapters(one_line_runs, joined):
    lines, _ = one_line_runs["lines"]
    one, _ = one_line_runs[joined]
    assert lines["chapters"] == 6
    assert one["chapters"] == lines["chapters"] and "no chapter headings found" not in " ".join(one["warnings"])


def test_a_novel_without_line_breaks_keeps_its_first_sentences_whole(one_line_runs, sample_text):
    _, out = one_line_runs["indented"]
    text = _decoded(out)
    lines = _paragraphs(sample_text)
    starts = [lines[i + 1][:12] for i, line in enumerate(lines) if chapters.parse_heading(line)]
    assert len(starts) == 6
    assert [s for s in starts if s not in text] == []


# --- stray foreign letters ----------------------------------------------------------------------------------------

STRAY = "Ёㄅキ│"  # Cyrillic, bopomofo, katakana, box drawing (not ─, which editions use as a dash)
PHRASE = "ありがとう"


def _with_stray_letters(sample_text: str) -> tuple[str, int]:
    """The sample with each STRAY letter put between two Han characters of three paragraphs (one letter in a
    paragraph, so none has a letter of its script nearby), and a paragraph holding a Japanese word; and how many
    letters were put in."""
    lines, count, k = sample_text.split("\n"), 0, 0
    for i, line in enumerate(lines):
        if not line.startswith("\u3000") or len(line) < 60 or i % 7:
            continue
        at = next(j for j in range(30, len(line)) if charsets.is_han(line[j - 1]) and charsets.is_han(line[j]))
        lines[i] = line[:at] + STRAY[k % len(STRAY)] + line[at:]
        count, k = count + 1, k + 1
        if k == 3 * len(STRAY):
            break
    at = lines.index(next(x for x in lines if x.startswith("第二章")))
    lines.insert(at, f"\u3000\u3000那洋教士临走时说了一句“{PHRASE}”，阿福一直不知道是什么意思。")
    return "\n".join(lines), count


def test_stray_foreign_letters_are_counted_and_kept_out_of_the_vocabulary(tmp_path, sample_text, cache_dir):
    text, count = _with_stray_letters(sample_text)
    assert count == 12
    report = _prepare(_write(tmp_path / "in", "novel.txt", text), tmp_path / "d", cache_dir)
    (f,) = report["files"]
    assert f["chars_removed"]["stray_foreign"] == count
    assert f["chapters"] == 6 and "mojibake" not in f["chars_removed"]
    vocab = set((tmp_path / "d" / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    assert not vocab & set(STRAY)
    assert set(PHRASE) <= vocab
    decoded = _decoded(tmp_path / "d")
    assert f"“{PHRASE}”" in decoded and not set(STRAY) & set(decoded)


# --- boilerplate found by repetition ------------------------------------------------------------------------------

REFRAIN = "欲知后事如何，且听下回分解。"
VERSE = "有诗为证：青石桥下水东流，一夜秋风满镇愁。"
REPLY = "“是。”"
NO_URL_LINE = "本书首发于云上书阁，转载请注明"
NOVELS = "abc"
CHAPTERS_PER_NOVEL = 10


def _site_line(novel: int, chapter: int) -> str:
    """A line a site injects, in a phrasing no list in `clean` holds, its domain and digits varying."""
    n = 7 * novel + chapter
    return f"（天才一秒记住：某某书屋 ab{n}cd{n * 37}.xyz）"


def _phone_line(chapter: int) -> str:
    return f"手机用户请到m.yunge{chapter}.net阅读第{chapter + 3}页"


def _novels(sample_text: str, polluted: bool) -> tuple[dict[str, str], list[str]]:
    """Three novels of CHAPTERS_PER_NOVEL chapters each, cut from the sample's paragraphs (no chapter repeats
    another); their own repeated lines (a refrain in every chapter of novel a, a verse quoted twice in b, short
    replies everywhere); with `polluted`, site lines in most chapters. Returns the texts and the injected lines."""
    paras = [p for p in _paragraphs(sample_text)[2:] if chapters.parse_heading(p) is None]
    size = len(paras) // (len(NOVELS) * CHAPTERS_PER_NOVEL)
    texts, injected = {}, []
    for v, name in enumerate(NOVELS):
        lines = []
        for c in range(CHAPTERS_PER_NOVEL):
            start = (v * CHAPTERS_PER_NOVEL + c) * size
            body = paras[start : start + size]
            if c % 2:
                body.insert(2, REPLY)
            body += [REFRAIN] if name == "a" else [VERSE] if name == "b" and c in (2, 7) else []
            site = [_site_line(v, c)] if c % 5 else []  # 8 chapters of 10
            site += [NO_URL_LINE] if name in "ab" and c not in (3, 6) else []
            site += [_phone_line(c)] if name == "c" and c > 1 else []
            if polluted:
                body = body[:3] + site[:1] + body[3:] + site[1:]
                injected += site
            lines += [f"第{c + 1}章", *body]
        texts[f"{name}.txt"] = "\n".join(lines) + "\n"
    return texts, injected


def _corpus(root: Path, texts: dict[str, str]) -> Path:
    for name, text in texts.items():
        _write(root, name, text)
    return root


def _removed(report: dict) -> Counter:
    return sum((Counter(f["chars_removed"]) for f in report["files"]), Counter())


def test_site_lines_repeated_across_files_are_removed_and_a_novels_own_repeats_kept(tmp_path, sample_text,
                                                                                     cache_dir):
    clean_texts, _ = _novels(sample_text, polluted=False)
    dirty_texts, injected = _novels(sample_text, polluted=True)
    base = _prepare(_corpus(tmp_path / "clean", clean_texts), tmp_path / "d-clean", cache_dir)
    dirty = _prepare(_corpus(tmp_path / "dirty", dirty_texts), tmp_path / "d-dirty", cache_dir)
    assert "boilerplate" not in _removed(base)  # the novels' own repeats are not boilerplate
    assert base["totals"]["chapters"] == dirty["totals"]["chapters"] == len(NOVELS) * CHAPTERS_PER_NOVEL
    # every injected character is removed, the site lines' text as boilerplate (their URLs as url, their line
    # breaks as whitespace), and nothing else
    cut: Counter = Counter()
    left = clean.clean_lines(injected, cut)
    assert len(left) == len(injected)  # no list in `clean` knows these lines: only repetition finds them
    extra = _removed(dirty) - _removed(base)
    assert extra == Counter(boilerplate=sum(map(len, left)), whitespace=len(injected)) + cut
    assert dirty["totals"]["chars_kept"] == base["totals"]["chars_kept"]
    text = _decoded(tmp_path / "d-dirty")
    assert text == _decoded(tmp_path / "d-clean")
    for phrase in ("天才一秒记住", "云上书阁", "手机用户请到"):
        assert phrase not in text
    assert text.count(REFRAIN) == CHAPTERS_PER_NOVEL and text.count(VERSE) == 2
    assert text.count(REPLY) >= len(NOVELS) * CHAPTERS_PER_NOVEL // 2


# --- one site's navigation in a single novel ----------------------------------------------------------------------

NAVIGATION = ["上一章　目录　下一章", "请收藏本站", "求推荐票", "（本章未完，请点击下一页继续阅读）"]
REFRAIN = "欲知后事如何，且听下回分解。"


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_one_sites_navigation_in_a_single_novel_is_removed_and_its_refrains_kept(tmp_path, cache_dir):
    """西游记 as one site serves it, alone in the corpus and without a URL: its navigation and pagination lines in
    every chapter (and a page number that changes) go as boilerplate; a refrain in every chapter and the novel's
    own closing formula (毕竟不知…且听下回分解) stay."""
    lines = (SHARED_CORPUS / "xiyouji.txt").read_text(encoding="utf-8-sig").split("\n")
    heads = [n for n, line in enumerate(lines) if re.search(r"第[一二三四五六七八九十百]+回", line)]  # 《》目录 第一回…
    out_lines, injected = [], 0
    for start, end in zip(heads, [*heads[1:], len(lines)], strict=True):  # each chapter ends as its pages end
        out_lines += [*lines[start:end], REFRAIN, *NAVIGATION, f"（第{injected % 7 + 1}页）"]
        injected += 1
    corpus = _write(tmp_path / "novels", "xiyouji.txt", "\n".join(lines[: heads[0]] + out_lines))
    report = _prepare(corpus, tmp_path / "d", cache_dir)
    text = _decoded(tmp_path / "d")
    assert injected == 100 and report["files"][0]["chars_removed"]["boilerplate"] >= injected * 30
    for line in NAVIGATION:
        assert clean.normalize(line) not in text
    assert "页）" not in text
    # every refrain but perhaps the last, which packing may cut (the stream's last ids that fill no sample)
    assert text.count(REFRAIN) >= injected - 1 and text.count("且听下回分解") >= 2 * injected - 2


# --- mojibake split by hard wrapping ------------------------------------------------------------------------------

@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_mojibake_that_hard_wrapping_split_is_judged_over_the_paragraph(tmp_path):
    """The shared 三国演义 hard-wrapped at 30 characters, as some downloads are: each damaged line's pieces are
    too short for the mojibake rule alone; rejoined into their paragraph they are cut as in the original, and no
    odd character is left."""
    original = SHARED_CORPUS / "sanguoyanyi.txt"
    text = clean.normalize(ingest.read_file(original).texts[0])
    wrapped = _write(tmp_path, "sanguoyanyi.txt",
                     "\n".join(p[i : i + 30] for p in text.split("\n") for i in range(0, len(p), 30))) / original.name
    before, after = novels.read_and_split(str(original), False), novels.read_and_split(str(wrapped), False)
    assert before.removed["mojibake"] == 4735  # the original's damage, as the report counts it
    assert after.removed["mojibake"] >= 0.95 * before.removed["mojibake"]
    assert not any(charsets.SUSPICIOUS.match(ch) or charsets.foreign_script(ch) for ch in "".join(after.chapters))
    assert "故托张昊" not in "".join(after.chapters) and len(after.chapters) == len(before.chapters)
