"""The vocabulary, the Hugging Face tokenizer files, and encode/decode exactly as training saw the text.

Ids 0-4 are the special tokens. A newline is `[SEP]`; a chapter is `[MASK]` + text + `[CLS]`. After the specials
come every character of the corpus (so any corpus text encodes without `[UNK]`) and then the most frequent
multi-character words up to the vocabulary size ("word" vocabulary, thulac segmentation) — or only characters
("char" vocabulary, as GPT2-Chinese's BERT vocabulary did).

`encode` segments with thulac as `prepare` did; the saved `tokenizer.json` (what `AutoTokenizer` loads) cannot run
thulac, so it segments by greedy longest match over the same vocabulary instead: the same ids for single
characters and most words, possibly different word boundaries.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from gpt_novel.data import clean, segment
from gpt_novel.errors import UserError

SEP, CLS, MASK, PAD, UNK = "[SEP]", "[CLS]", "[MASK]", "[PAD]", "[UNK]"
SPECIAL_TOKENS = (SEP, CLS, MASK, PAD, UNK)
META_FILE = "gpt_novel_tokenizer.json"
_SKIPPED_IN_TEXT = (CLS, MASK, PAD)


def build_tokens(words: Counter, kind: str, vocab_size: int) -> list[str]:
    """Specials, then all characters by frequency, then (word vocabulary) the most frequent words to fill the size."""
    chars: Counter = Counter()
    for word, n in words.items():
        for ch in word:
            chars[ch] += n
    chars.pop("\n", None)
    return tokens_from_counts(chars, [(w, n) for w, n in words.items() if len(w) > 1 and n > 1], kind, vocab_size)


def tokens_from_counts(chars: Counter, words: list[tuple[str, int]], kind: str, vocab_size: int) -> list[str]:
    """The token list from character counts (characters inside words counted too, newline excluded) and the
    multi-character words seen at least twice with their counts (any order; those beyond the size may be absent):
    ties are broken by the token itself, so the list never depends on the order counts were merged in."""
    check_vocab_size(len(chars), vocab_size)
    tokens = list(SPECIAL_TOKENS) + sorted(chars, key=lambda c: (-chars[c], c))
    if kind == "word":
        tokens += [w for w, _ in sorted(words, key=lambda x: (-x[1], x[0]))][: vocab_size - len(tokens)]
    return tokens


def check_vocab_size(distinct_chars: int, vocab_size: int) -> None:
    """The vocabulary holds the specials and every character of the corpus (newline aside), whatever else."""
    if distinct_chars + len(SPECIAL_TOKENS) > vocab_size:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the corpus has {distinct_chars} distinct characters, so it must "
            f"be at least {distinct_chars + len(SPECIAL_TOKENS)}"
        )


class Vocab:
    """Token strings and ids, plus how text was prepared (segmenter kind, traditional→simplified)."""

    def __init__(self, tokens: Sequence[str], kind: str = "word", to_simplified: bool = False):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.kind = kind
        self.to_simplified = to_simplified
        self.sep, self.cls, self.mask, self.pad, self.unk = (self.index[t] for t in SPECIAL_TOKENS)
        self._lookup = {**self.index, "\n": self.sep}
        self._memo: dict[str, tuple[int, ...]] = {}  # word → ids, filled as words are met

    def __len__(self) -> int:
        return len(self.tokens)

    def char_lengths(self) -> list[int]:
        """Characters each token stands for in text ([SEP] a newline, [CLS]/[MASK]/[PAD] none): the denominator of
        bits per character, which compares word and character vocabularies."""
        return [0 if t in _SKIPPED_IN_TEXT else 1 if t == SEP else len(t) for t in self.tokens]

    # --- encoding -----------------------------------------------------------------------------------------------
    def ids_of_words(self, words: Iterable[str]) -> list[int]:
        """Ids of segmented words: newline → [SEP], unknown word → its characters, unknown character → [UNK]."""
        words = words if isinstance(words, list) else list(words)
        memo, lookup, index, unk = self._memo, self._lookup, self.index, self.unk
        for word in set(words).difference(memo):
            i = lookup.get(word)
            memo[word] = (i,) if i is not None else tuple(index.get(ch, unk) for ch in word)
        return list(itertools.chain.from_iterable(map(memo.__getitem__, words)))

    def prepare_text(self, text: str) -> str:
        """The normalization `prepare` applies before segmenting (no cleaning: a prompt has no ads)."""
        text = clean.normalize(text)
        return clean.to_simplified(text) if self.to_simplified else text

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of `text` (as `encode` normalizes it) that the vocabulary lacks, each once, in order:
        `encode` turns them into [UNK], which a user should be told."""
        known = self.index
        return list(dict.fromkeys(ch for ch in self.prepare_text(text) if ch != "\n" and ch not in known))

    def encode(self, text: str, *, new_chapter: bool = False, end_chapter: bool = False) -> list[int]:
        """Raw text → ids exactly as training saw it (normalization and thulac segmentation included)."""
        ids = self.ids_of_words(segment.segment_text(self.prepare_text(text), self.kind))
        return ([self.mask] if new_chapter else []) + ids + ([self.cls] if end_chapter else [])

    def decode(self, ids: Iterable[int], *, keep_special: bool = False) -> str:
        """Ids → text: [SEP] is a newline, words join without spaces; [MASK]/[CLS]/[PAD] are dropped unless asked."""
        out = []
        for i in ids:
            token = self.tokens[int(i)]
            if token == SEP:
                out.append("\n")
            elif keep_special or token not in _SKIPPED_IN_TEXT:
                out.append(token)
        return "".join(out)

    # --- files --------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """vocab.txt (one token per line, GPT2-Chinese style), tokenizer.json + tokenizer_config.json for
        `AutoTokenizer`, and our own metadata."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("".join(f"{t}\n" for t in self.tokens), encoding="utf-8")
        _hf_tokenizer(self.tokens).save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": MASK,
            "eos_token": CLS,
            "pad_token": PAD,
            "unk_token": UNK,
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
        }
        _write_json(directory / "tokenizer_config.json", config)
        special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        _write_json(directory / "special_tokens_map.json", special)
        meta = {"kind": self.kind, "to_simplified": self.to_simplified, "segmenter": segment.SEGMENTER_ID,
                "vocab_size": len(self), "special_tokens": {t: self.index[t] for t in SPECIAL_TOKENS}}
        _write_json(directory / META_FILE, meta)

    @classmethod
    def load(cls, directory: str | Path) -> Vocab:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            lines = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as e:
            missing = Path(e.filename).name
            raise UserError(f"{directory} is not a gpt-novel tokenizer folder (missing {missing})") from None
        return cls(lines[:-1], meta["kind"], meta["to_simplified"])


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _hf_tokenizer(tokens: list[str]):
    """A `tokenizers` pipeline that approximates thulac + vocabulary lookup with greedy longest match."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=UNK, continuing_subword_prefix="",
                         max_input_chars_per_word=64)
    )
    # The same normalization as `clean.normalize`: one paragraph per line, no indentation, single spaces.
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"\r\n?"), "\n"),
        normalizers.Replace(Regex(r"[^\S\n]+"), " "),
        normalizers.Replace(Regex(r" ?\n[\s]*"), "\n"),
        normalizers.Strip(),
        normalizers.Replace("\n", SEP),
    ])
    # "[SEP]", then single whitespace / punctuation / symbol characters, then runs of other characters (≤ 32).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[SEP\]|[\s\p{P}\p{S}]|[^\s\p{P}\p{S}]{1,32}"), "isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SEP, "\n"), decoders.Fuse()])
    tok.add_special_tokens([CLS, MASK, PAD, UNK])
    return tok
