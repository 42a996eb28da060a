"""Input decoding: every encoding a Chinese novel download comes in, judged by the text it produces; refusals."""

from __future__ import annotations

import codecs
import errno
import json
import os
import random
from pathlib import Path

import opencc
import pytest

from gpt_novel.data.ingest import Decoded, RefusedFile, detect_and_decode, find_inputs, read_file
from gpt_novel.errors import UserError

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "corpus" / "青石镇.txt"
# Cantonese characters that only Big5-HKSCS has (neither strict Big5 nor CP950 can encode them).
HKSCS_ONLY = "嘅咗啲"
# A character outside GBK (CJK Extension B) that only GB18030 encodes (as four bytes).
GB18030_ONLY = "𠮷"


@pytest.fixture(scope="module")
def simplified() -> str:
    return SAMPLE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def traditional(simplified) -> str:
    return opencc.OpenCC("s2t").convert(simplified)


def encodable(text: str, codec: str) -> str:
    """The text without the characters `codec` cannot encode, so that the test controls the exact bytes."""
    out = []
    for ch in text:
        try:
            ch.encode(codec)
        except UnicodeEncodeError:
            continue
        out.append(ch)
    return "".join(out)


def fails_strictly(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except UnicodeDecodeError:
        return True
    return False


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- encodings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "bom", "expected"),
    [
        ("utf-8", b"", "utf-8"),
        ("utf-8", codecs.BOM_UTF8, "utf-8-sig"),
        ("utf-16-le", codecs.BOM_UTF16_LE, "utf-16"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "utf-16"),
    ],
)
def test_unicode_encodings_are_detected_and_decoded_exactly(tmp_path, simplified, codec, bom, expected):
    path = write(tmp_path, "novel.txt", bom + simplified.encode(codec, errors="strict"))
    decoded = read_file(path)
    assert isinstance(decoded, Decoded)
    assert decoded.encoding == expected
    assert decoded.texts == [simplified]
    assert decoded.undecodable_bytes == 0
    assert decoded.warnings == []
    assert decoded.confidence > 0.9


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_mostly_ascii_is_detected(tmp_path, codec):
    text = "Chapter 1. The rain in Qingshi town (青石镇) lasted seven days.\n" * 20
    decoded = read_file(write(tmp_path, "novel.txt", text.encode(codec)))
    assert decoded.encoding == codec
    assert decoded.texts == [text]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_chinese_is_detected(tmp_path, simplified, codec):
    decoded = read_file(write(tmp_path, "novel.txt", simplified.encode(codec)))
    assert decoded.encoding == codec
    assert decoded.texts == [simplified]


def test_strict_gbk_file_reports_gbk(tmp_path, simplified):
    text = encodable(simplified, "gbk")
    data = text.encode("gbk", errors="strict")
    decoded = read_file(write(tmp_path, "gbk.txt", data))
    assert decoded.encoding == "gbk"
    assert decoded.texts == [text]
    assert decoded.undecodable_bytes == 0


def test_file_only_gb18030_decodes_reports_gb18030(tmp_path, simplified):
    first, rest = simplified.split("\n", 1)
    text = f"{first}\n阿福的名字里有个{GB18030_ONLY}字。\n{rest}"
    data = text.encode("gb18030", errors="strict")
    assert fails_strictly(data, "gbk")
    decoded = read_file(write(tmp_path, "gb18030.txt", data))
    assert decoded.encoding == "gb18030"
    assert decoded.texts == [text]
    assert decoded.undecodable_bytes == 0


def test_strict_big5_file_reports_big5(tmp_path, traditional):
    text = encodable(traditional, "big5")
    data = text.encode("big5", errors="strict")
    decoded = read_file(write(tmp_path, "big5.txt", data))
    assert decoded.encoding == "big5"
    assert decoded.texts == [text]
    assert decoded.undecodable_bytes == 0


def test_cp950_file_reports_cp950(tmp_path, traditional):
    text = encodable(traditional, "cp950")
    data = text.encode("cp950", errors="strict")
    assert fails_strictly(data, "big5"), "the sample should use characters that CP950 has and strict Big5 lacks"
    decoded = read_file(write(tmp_path, "cp950.txt", data))
    assert decoded.encoding == "cp950"
    assert decoded.texts == [text]
    assert decoded.undecodable_bytes == 0


def test_big5_hkscs_file_reports_big5hkscs(tmp_path, traditional):
    first, rest = traditional.split("\n", 1)
    cantonese = "阿福說：「我食咗飯，啲嘢好好食嘅。」"
    text = encodable(f"{first}\n{cantonese}\n{rest}", "big5hkscs")
    assert all(ch in text for ch in HKSCS_ONLY)
    data = text.encode("big5hkscs", errors="strict")
    assert fails_strictly(data, "big5")
    assert fails_strictly(data, "cp950")
    decoded = read_file(write(tmp_path, "hkscs.txt", data))
    assert decoded.encoding == "big5hkscs"
    assert decoded.texts == [text]
    assert decoded.undecodable_bytes == 0


def _excerpts(text: str) -> list[str]:
    """The first three paragraphs of each chapter: short texts, where a wrong family is likelier to win."""
    paragraphs = text.split("\n")
    starts = [i for i, p in enumerate(paragraphs) if p.startswith("第") and "章" in p[:4]]
    return ["\n".join(paragraphs[i : i + 4]) for i in starts]


@pytest.mark.parametrize("chapter", range(6))
def test_big5_is_never_decoded_as_gb_nor_gbk_as_big5(simplified, traditional, chapter):
    """Big5 bytes also decode as GB18030 (to mojibake) and GBK bytes as Big5: the right family must win."""
    simp = encodable(_excerpts(simplified)[chapter], "gbk")
    trad = encodable(_excerpts(traditional)[chapter], "big5")

    got = detect_and_decode(simp.encode("gbk"))
    assert got.encoding in ("gbk", "gb18030")
    assert (got.text, got.undecodable_bytes, got.lines_recoded) == (simp, 0, 0)

    got = detect_and_decode(trad.encode("big5"))
    assert got.encoding in ("big5", "cp950", "big5hkscs")
    assert (got.text, got.undecodable_bytes, got.lines_recoded) == (trad, 0, 0)


def test_big5_sample_decodes_as_gb18030_too_so_detection_matters(traditional):
    """Guard for the test above: the wrong decode really is possible (and is mojibake), so passing means something."""
    data = encodable(traditional, "big5").encode("big5")
    wrong = data.decode("gb18030", errors="replace")
    assert wrong != encodable(traditional, "big5")
    assert wrong.count("\ufffd") < len(wrong) * 0.05  # decodes nearly cleanly: only plausibility tells them apart


# --- damaged and refused files ------------------------------------------------------------------------------------


def test_undecodable_bytes_are_counted_and_warned_not_dropped(tmp_path, simplified):
    cut = simplified.index("\n", len(simplified) // 2)
    before, after = simplified[:cut], simplified[cut:]
    data = before.encode("utf-8") + b"\xff\xfe\xff" + after.encode("utf-8")
    decoded = read_file(write(tmp_path, "damaged.txt", data))
    assert decoded.encoding == "utf-8"
    assert decoded.undecodable_bytes == 3
    assert decoded.texts == [before + "\ufffd" * 3 + after]
    assert len(decoded.warnings) == 1
    assert "3 undecodable" in decoded.warnings[0]


def test_undecodable_bytes_in_gbk_file_are_counted(tmp_path, simplified):
    text = encodable(simplified, "gbk")
    cut = text.index("\n", len(text) // 2)
    data = text[:cut].encode("gbk") + b"\xff\xff" + text[cut:].encode("gbk")
    decoded = read_file(write(tmp_path, "damaged-gbk.txt", data))
    assert decoded.encoding in ("gbk", "gb18030")
    assert decoded.undecodable_bytes == 2
    assert decoded.texts[0].replace("\ufffd", "") == text
    assert decoded.warnings


def test_heavily_damaged_file_is_refused(tmp_path, simplified):
    rng = random.Random(0)
    raw = bytearray(simplified.encode("utf-8"))
    for i in rng.sample(range(len(raw)), len(raw) // 10):
        raw[i] = 0xFF
    with pytest.raises(RefusedFile):
        read_file(write(tmp_path, "broken.txt", bytes(raw)))


def test_bom_with_undecodable_body_is_refused(tmp_path):
    data = codecs.BOM_UTF8 + "青石镇".encode() + bytes(range(0x80, 0xC0)) * 4
    with pytest.raises(RefusedFile, match="byte-order mark"):
        read_file(write(tmp_path, "bom.txt", data))


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", b"\n\n\n"], ids=["empty", "blanks", "newlines"])
def test_empty_or_whitespace_file_is_refused(tmp_path, data):
    with pytest.raises(RefusedFile, match="empty"):
        read_file(write(tmp_path, "empty.txt", data))


@pytest.mark.parametrize(
    "data",
    [codecs.BOM_UTF8, codecs.BOM_UTF16_LE + " \n".encode("utf-16-le"), "\u3000\u3000\n".encode()],
    ids=["utf8-bom-only", "utf16-bom-blanks", "ideographic-spaces"],
)
def test_file_that_decodes_to_whitespace_is_refused(tmp_path, data):
    with pytest.raises(RefusedFile, match="empty"):
        read_file(write(tmp_path, "blank.txt", data))


def test_binary_file_with_nul_bytes_is_refused(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00" + bytes(200)
    with pytest.raises(RefusedFile, match="binary"):
        read_file(write(tmp_path, "cover.txt", png))


def test_binary_file_with_control_bytes_is_refused(tmp_path):
    with pytest.raises(RefusedFile, match="binary"):
        read_file(write(tmp_path, "controls.txt", bytes(range(1, 32)) * 50))


def test_random_bytes_are_refused(tmp_path):
    with pytest.raises(RefusedFile, match="binary"):
        read_file(write(tmp_path, "random.txt", random.Random(0).randbytes(4096)))


def test_random_high_bytes_are_refused_as_unsure(tmp_path):
    """Bytes that every double-byte codec decodes, but to nonsense: no family is plausible, so no guess."""
    rng = random.Random(0)
    data = bytes(rng.randrange(0x81, 0xFF) for _ in range(4096))
    with pytest.raises(RefusedFile, match="cannot tell the encoding with confidence"):
        read_file(write(tmp_path, "noise.txt", data))


# --- JSON inputs ------------------------------------------------------------------------------------------------

ARTICLES = ["第一章 雨夜来客\n民国十二年的秋天，青石镇下了七天的雨。", "第二章 桥下浮尸\n天亮时雨停了。", "短文。"]


def test_json_list_gives_one_text_per_article(tmp_path):
    path = write(tmp_path, "train.json", json.dumps(ARTICLES, ensure_ascii=False).encode())
    decoded = read_file(path)
    assert decoded.texts == ARTICLES
    assert decoded.encoding == "utf-8"


def test_json_list_with_ascii_escapes(tmp_path):
    path = write(tmp_path, "train.json", json.dumps(ARTICLES).encode())
    assert read_file(path).texts == ARTICLES


def test_jsonl_with_a_string_per_line(tmp_path):
    body = "\n".join(json.dumps(a, ensure_ascii=False) for a in ARTICLES) + "\n\n"
    assert read_file(write(tmp_path, "train.jsonl", body.encode())).texts == ARTICLES


def test_jsonl_with_text_objects_per_line(tmp_path):
    body = "\n".join(json.dumps({"id": i, "text": a}, ensure_ascii=False) for i, a in enumerate(ARTICLES))
    assert read_file(write(tmp_path, "train.jsonl", body.encode())).texts == ARTICLES


def test_jsonl_in_gbk_is_decoded(tmp_path):
    body = "\n".join(json.dumps({"text": a}, ensure_ascii=False) for a in ARTICLES * 5)
    decoded = read_file(write(tmp_path, "train.jsonl", body.encode("gbk")))
    assert decoded.encoding in ("gbk", "gb18030")
    assert decoded.texts == ARTICLES * 5


def test_invalid_jsonl_line_is_refused(tmp_path):
    body = json.dumps({"text": ARTICLES[0]}, ensure_ascii=False) + '\n{"text": "未闭合\n'
    with pytest.raises(RefusedFile, match="line 2 is not valid JSON"):
        read_file(write(tmp_path, "train.jsonl", body.encode()))


def test_invalid_json_list_is_refused(tmp_path):
    with pytest.raises(RefusedFile, match="not valid JSON"):
        read_file(write(tmp_path, "train.json", '["第一篇", "第二篇"'.encode()))


@pytest.mark.parametrize("item", [3, None, {"title": "无正文"}, {"text": 5}, ["嵌套"]])
def test_json_item_without_text_is_refused(tmp_path, item):
    body = json.dumps(["好的一篇", item], ensure_ascii=False)
    with pytest.raises(RefusedFile, match="neither a string nor an object"):
        read_file(write(tmp_path, "train.json", body.encode()))


# --- finding inputs -----------------------------------------------------------------------------------------------


def test_find_inputs_is_recursive_filtered_and_sorted(tmp_path):
    names = ["b.txt", "a.json", "sub/c.jsonl", "sub/deeper/a.txt", "z/UPPER.TXT"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("正文", encoding="utf-8")
    for ignored in ("notes.md", "cover.png", "sub/readme", "sub/data.json.bak"):
        (tmp_path / ignored).write_bytes(b"x")
    found = find_inputs([str(tmp_path)])
    assert found.files == sorted((tmp_path / n for n in names), key=str)


def test_find_inputs_merges_several_inputs_without_duplicates(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    a.write_text("甲", encoding="utf-8")
    b.write_text("乙", encoding="utf-8")
    found = find_inputs([str(b), str(tmp_path), str(a)])
    assert (found.files, found.refused, found.warnings) == ([a, b], [], [])


def test_find_inputs_takes_a_named_file_whatever_its_suffix(tmp_path):
    f = tmp_path / "novel.text"
    f.write_text("正文", encoding="utf-8")
    assert find_inputs([str(f)]).files == [f]


def test_find_inputs_without_text_files_is_a_user_error(tmp_path):
    (tmp_path / "cover.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt, .json or .jsonl files"):
        find_inputs([str(tmp_path)])


def test_find_inputs_missing_path_is_a_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="input not found"):
        find_inputs([str(missing)])


def test_find_inputs_follows_a_symlinked_directory_once_and_warns_of_a_loop(tmp_path):
    outside, inputs = tmp_path / "outside", tmp_path / "in"
    (outside / "deep").mkdir(parents=True)
    inputs.mkdir()
    (outside / "deep" / "a.txt").write_text("正文", encoding="utf-8")
    (inputs / "b.txt").write_text("正文", encoding="utf-8")
    (inputs / "books").symlink_to(outside, target_is_directory=True)
    (outside / "deep" / "up").symlink_to(outside, target_is_directory=True)  # a loop: books/deep/up → books
    (inputs / "more").symlink_to(outside / "deep", target_is_directory=True)  # a second way into deep
    found = find_inputs([str(inputs)])
    assert found.files == [inputs / "b.txt", inputs / "books" / "deep" / "a.txt"]
    assert found.refused == []
    assert found.warnings == [
        f"{inputs}/books/deep/up: symbolic link loop back to {inputs}/books; not followed",
        f"{inputs}/more: the same directory as {inputs}/books/deep (symbolic link); read once",
    ]


def test_find_inputs_refuses_a_pipe_named_txt_without_opening_it(tmp_path):
    (tmp_path / "novel.txt").write_text("正文", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block for ever: it must be refused from its type
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    found = find_inputs([str(tmp_path)])
    assert found.files == [tmp_path / "novel.txt"]
    assert dict(found.refused) == {str(tmp_path / "pipe.txt"): "not a regular file (a pipe, socket or device)",
                                   str(tmp_path / "dangling.txt"): "broken symbolic link"}


def test_find_inputs_refuses_a_directory_it_cannot_list(tmp_path, monkeypatch):
    """Root lists a chmod 000 directory anyway, so the refusal of the system call is simulated."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "hidden.txt").write_text("正文", encoding="utf-8")
    (tmp_path / "novel.txt").write_text("正文", encoding="utf-8")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_inputs([str(tmp_path)])
    assert found.files == [tmp_path / "novel.txt"]
    assert found.refused == [(str(tmp_path / "locked"), "cannot list the directory: Permission denied")]


def test_find_inputs_leaves_out_what_the_caller_excludes(tmp_path):
    for name in ("novel.txt", "data/tokenizer/vocab.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("正文", encoding="utf-8")
    found = find_inputs([str(tmp_path)], exclude=lambda p: p.name == "data")
    assert found.files == [tmp_path / "novel.txt"]


# --- files that mix encodings -------------------------------------------------------------------------------------


def _mixed(text: str, major: str, minor: str, every: int = 10) -> tuple[bytes, list[str]]:
    """The text's lines in `major`, every `every`-th long line in `minor` instead; returns the bytes and those lines."""
    lines = encodable(encodable(text, major), minor).split("\n")
    chosen = [i for i, line in enumerate(lines) if len(line) > 20][::every]
    data = b"\n".join(line.encode(minor if i in chosen else major) for i, line in enumerate(lines))
    return data, [lines[i] for i in chosen]


@pytest.mark.parametrize(("major", "minor"), [("gbk", "utf-8"), ("big5", "utf-8"), ("utf-8", "gbk"),
                                              ("utf-8", "big5")])
def test_lines_in_another_encoding_are_decoded_as_what_they_are(simplified, traditional, major, minor):
    text = traditional if "big5" in (major, minor) else simplified
    data, other = _mixed(text, major, minor)
    legacy = major if minor == "utf-8" else minor
    assert fails_strictly(data, "utf-8")
    got = detect_and_decode(data)
    assert got.text == encodable(encodable(text, major), minor)  # no mojibake, nothing lost
    assert (got.encoding, got.lines_recoded, got.recoded_as, got.undecodable_bytes) == (major, len(other), minor, 0)
    wrong = other[0].encode(minor).decode(legacy if minor == "utf-8" else "utf-8", errors="replace")
    assert wrong != other[0] and wrong not in got.text


def test_read_file_warns_of_mixed_encodings(tmp_path, simplified):
    data, other = _mixed(simplified, "gbk", "utf-8")
    decoded = read_file(write(tmp_path, "mixed.txt", data))
    assert decoded.lines_recoded == len(other)
    assert decoded.warnings == [f"{len(other)} line(s) decoded as utf-8: the file mixes encodings"]


def test_legacy_line_that_happens_to_be_valid_utf8_stays_legacy(simplified):
    """GBK bytes that are also valid UTF-8 (which then gives Cyrillic, Greek …): the file's own encoding wins."""
    both = [ch for ch in encodable(simplified, "gb2312") if _valid_utf8(ch.encode("gbk"))]
    assert len(both) >= 3
    line = "".join(both[:6])
    data = encodable(simplified, "gbk").encode("gbk") + b"\n" + line.encode("gbk") + b"\n"
    got = detect_and_decode(data)
    assert got.encoding == "gbk" and got.lines_recoded == 0 and got.text.endswith(line + "\n")


def _valid_utf8(data: bytes) -> bool:
    return not fails_strictly(data, "utf-8")
