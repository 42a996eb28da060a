"""Character classes used to judge decoded Chinese text: common Han characters, both scripts, plausible symbols.

They are derived from the codecs Python ships (GB2312 level 1 and Big5's frequently-used range), so no data file
is needed and the sets are the same on every machine.
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata


def _decode_range(codec: str, leads: range, trails: list[int]) -> frozenset[str]:
    chars = set()
    for lead in leads:
        for trail in trails:
            try:
                chars.add(bytes([lead, trail]).decode(codec))
            except UnicodeDecodeError:
                continue
    return frozenset(c for c in chars if is_han(c))


_GB_TRAILS = list(range(0xA1, 0xFF))
_BIG5_TRAILS = list(range(0x40, 0x7F)) + list(range(0xA1, 0xFF))


@functools.cache
def gb2312_level1() -> frozenset[str]:
    """The 3,755 most common simplified characters (GB2312 level 1)."""
    return _decode_range("gb2312", range(0xB0, 0xD8), _GB_TRAILS)


@functools.cache
def gb2312_all() -> frozenset[str]:
    return _decode_range("gb2312", range(0xB0, 0xF8), _GB_TRAILS)


@functools.cache
def big5_common() -> frozenset[str]:
    """Big5's 5,401 frequently used (traditional) characters, 0xA440-0xC67E."""
    chars = _decode_range("big5", range(0xA4, 0xC6), _BIG5_TRAILS)
    return chars | _decode_range("big5", range(0xC6, 0xC7), list(range(0x40, 0x7F)))


@functools.cache
def big5_all() -> frozenset[str]:
    return _decode_range("big5", range(0xA1, 0xFA), _BIG5_TRAILS)


@functools.cache
def common_han() -> frozenset[str]:
    """Characters that make up nearly all of any correctly decoded Chinese novel, in either script."""
    return gb2312_level1() | big5_common()


@functools.cache
def traditional_only() -> frozenset[str]:
    return big5_common() - gb2312_all()


@functools.cache
def simplified_only() -> frozenset[str]:
    return gb2312_level1() - big5_all()


def is_han(ch: str) -> bool:
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x3134F or 0xF900 <= cp <= 0xFAFF


@functools.cache
def _plausible_symbol(ch: str) -> bool:
    cp = ord(ch)
    if 0x3000 <= cp <= 0x303F or 0xFF01 <= cp <= 0xFF5E or 0x2010 <= cp <= 0x2027 or cp in (0x00B7, 0xFF0E):
        return True
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def plausibility(text: str) -> float:
    """Share of the non-ASCII characters that a real Chinese text would contain (1.0 when there are none).

    A wrong decode (Big5 read as GB18030 or the reverse) decodes without error but produces many rare characters,
    kana and symbols, so this share drops far below that of the right decode.
    """
    counts = collections.Counter(text)
    common = common_han()
    total = sum(n for ch, n in counts.items() if ch >= "\x80")
    good = sum(n for ch, n in counts.items() if ch >= "\x80" and (ch in common or _plausible_symbol(ch)))
    return good / total if total else 1.0


def script_of(text: str) -> str:
    """'traditional', 'simplified' or 'mixed', from characters that exist in only one of the two scripts."""
    trad, simp = traditional_only(), simplified_only()
    t = sum(1 for ch in text if ch in trad)
    s = sum(1 for ch in text if ch in simp)
    if t + s == 0:
        return "unknown"
    share = t / (t + s)
    return "traditional" if share > 0.7 else "simplified" if share < 0.3 else "mixed"


# Characters that do not occur in Chinese prose but do in mojibake (accented Latin, IPA and modifier letters, Greek,
# Cyrillic, box drawing, kana, bopomofo, Hangul, private use, vertical forms, half-width kana, replacement character).
# Full-width Latin letters (ＯＫ) and circled numbers (①) are left out: novels use them.
_SUSPICIOUS_RANGES = (
    (0x0180, 0x02FF),
    (0x0370, 0x052F),
    (0x2502, 0x259F),  # box drawing, but not ─ ━ (U+2500/2501), which some editions use as a dash
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0xAC00, 0xD7AF),
    (0xE000, 0xF8FF),
    (0xFE30, 0xFE4F),
    (0xFF61, 0xFF9F),
    (0xFFFD, 0xFFFD),
)


SUSPICIOUS = re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in _SUSPICIOUS_RANGES) + "]")


def is_suspicious(ch: str) -> bool:
    return SUSPICIOUS.match(ch) is not None


# Letters of the scripts that some editions put where a character was lost (a GBK symbol row standing in for a
# character the encoding lacked: 窄Ё袄, 纨э气习, 知縣ˍ聽), and that half-character-shift mojibake is made of: Latin
# extended, IPA and modifier letters, Greek, Cyrillic, box drawing, kana, bopomofo, Hangul, half-width kana: the
# letters among `SUSPICIOUS`. Not in it: ・ and ー (U+30FB/30FC: Chinese texts write 約翰・史密斯 and use ー as a
# dash), private-use characters (a font's stand-in for one particular rare character, consistent through a file: it
# keeps that character's place) and U+FFFD (counted as undecodable).
_FOREIGN_SCRIPTS = (
    ("latin", 0x0180, 0x02FF),
    ("greek", 0x0370, 0x03FF),
    ("cyrillic", 0x0400, 0x052F),
    ("box", 0x2502, 0x259F),
    ("kana", 0x3041, 0x30FA),
    ("kana", 0x30FD, 0x30FF),
    ("bopomofo", 0x3105, 0x312F),
    ("hangul", 0xAC00, 0xD7AF),
    ("kana", 0xFF66, 0xFF9F),
)
FOREIGN = re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for _, lo, hi in _FOREIGN_SCRIPTS) + "]")


def foreign_script(ch: str) -> str | None:
    """The script of a letter of `FOREIGN` ('kana', 'cyrillic', ...), None for any other character."""
    cp = ord(ch)
    return next((name for name, lo, hi in _FOREIGN_SCRIPTS if lo <= cp <= hi), None)
