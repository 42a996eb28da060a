"""The vocabulary, the Hugging Face tokenizer files, and encode/decode exactly as training saw the text.

Ids 0-4 are the special tokens. A newline is `[SEP]`; a chapter is `[MASK]` + text + `[CLS]`. After the specials
come every character of the corpus (so any corpus text encodes without `[UNK]`) and then byte-pair merges of
characters learnt with Hugging Face `tokenizers` ("bpe", the default, `train_bpe`), which like a pretrained
tokenizer encodes and decodes through its own pipeline — or the most frequent multi-character words up to the
vocabulary size ("word" vocabulary, thulac segmentation), or nothing more ("char", as GPT2-Chinese's BERT
vocabulary did).

For a word vocabulary `encode` segments with thulac as `prepare` did; the saved `tokenizer.json` (what
`AutoTokenizer` loads) cannot run thulac, so it segments by greedy longest match over the same vocabulary instead:
the same ids for single characters and most words, possibly different word boundaries.
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
# What each special token does; a BERT-style vocabulary (GPT2-Chinese's) has them under these names, another
# pretrained tokenizer names its own with `prepare --special-tokens`.
ROLES = ("newline", "end", "start", "pad", "unk")
DEFAULT_SPECIALS = dict(zip(ROLES, SPECIAL_TOKENS, strict=True))
META_FILE = "gpt_novel_tokenizer.json"
PRETRAINED = "pretrained"  # the kind of a vocabulary taken from a Hugging Face tokenizer folder
BPE = "bpe"  # byte-pair merges learnt from the corpus by `train_bpe`
TOKENIZES = (PRETRAINED, BPE)  # kinds that encode and decode with their `tokenizers.Tokenizer`, not our lookup


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


# Unset --vocab-size: a BPE vocabulary of 12,000 won benchmarks/tokenizer_choice.py (README), where the corpus had
# about 8,000 characters and so about 4,000 merges. A corpus with more characters (a large download folder keeps
# rare ones) gets at least BPE_MIN_MERGES merges beyond them, instead of an error after hours of reading.
BPE_SIZE, BPE_MIN_MERGES, WORD_SIZE = 12_000, 3_000, 50_000


def vocab_size_for(kind: str, given: int | None, distinct_chars: int) -> int:
    """The vocabulary size: --vocab-size (`given`) if set, else the default for the kind; checked to hold every
    character of the corpus (`distinct_chars`)."""
    size = given
    if size is None:
        size = max(BPE_SIZE, distinct_chars + len(SPECIAL_TOKENS) + BPE_MIN_MERGES) if kind == BPE else WORD_SIZE
    check_vocab_size(distinct_chars, size)
    return size


def check_vocab_size(distinct_chars: int, vocab_size: int) -> None:
    """The vocabulary holds the specials and every character of the corpus (newline aside), whatever else."""
    if distinct_chars + len(SPECIAL_TOKENS) > vocab_size:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the corpus has {distinct_chars} distinct characters, so it must "
            f"be at least {distinct_chars + len(SPECIAL_TOKENS)}"
        )


class Vocab:
    """Token strings and ids, plus how text was prepared (segmenter kind, traditional→simplified). A "pretrained"
    vocabulary encodes and decodes with its Hugging Face tokenizer (`hf`, a `tokenizers.Tokenizer`) instead of
    thulac and our word lookup."""

    def __init__(self, tokens: Sequence[str], kind: str = "word", to_simplified: bool = False,
                 specials: dict[str, str] | None = None, hf=None):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.kind = kind
        self.to_simplified = to_simplified
        self.specials = dict(specials or DEFAULT_SPECIALS)
        self.hf = hf
        self.sep, self.cls, self.mask, self.pad, self.unk = (self.index[self.specials[r]] for r in ROLES)
        self._lookup = {**self.index, "\n": self.sep}
        self._memo: dict[str, tuple[int, ...]] = {}  # word → ids, filled as words are met

    def __len__(self) -> int:
        return len(self.tokens)

    def char_lengths(self) -> list[int]:
        """Characters each token stands for in text (the newline token one, start/end/pad none, unknown one): the
        denominator of bits per character, which compares word, character and pretrained vocabularies."""
        silent = {self.cls, self.mask, self.pad}
        return [0 if i in silent else 1 if i in (self.sep, self.unk) else len(self.decode([i]))
                for i in range(len(self.tokens))]

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

    def ids_of_text(self, text: str) -> list[int]:
        """A pretrained tokenizer's ids of normalized text, line by line, the newline token between lines (so a
        newline is one token whatever the tokenizer does with it)."""
        lines = [self.hf.encode(line, add_special_tokens=False).ids for line in text.split("\n")]
        return list(itertools.chain.from_iterable(itertools.chain([self.sep], ids) if n else ids
                                                  for n, ids in enumerate(lines)))

    def ids_of_segmented(self, words: list[str]) -> list[int]:
        """Ids of what the segment step wrote: words, or (bpe, pretrained) the text's characters, tokenized here."""
        return self.ids_of_text("".join(words)) if self.kind in TOKENIZES else self.ids_of_words(words)

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of `text` (as `encode` normalizes it) that the vocabulary lacks, each once, in order:
        `encode` turns them into [UNK], which a user should be told."""
        chars = dict.fromkeys(ch for ch in self.prepare_text(text) if ch != "\n")
        if self.kind in TOKENIZES:
            return [ch for ch in chars if self.unk in self.ids_of_text(ch)]
        return [ch for ch in chars if ch not in self.index]

    def encode(self, text: str, *, new_chapter: bool = False, end_chapter: bool = False) -> list[int]:
        """Raw text → ids exactly as training saw it (normalization, then thulac segmentation or the pretrained
        tokenizer)."""
        text = self.prepare_text(text)
        ids = self.ids_of_text(text) if self.kind in TOKENIZES else \
            self.ids_of_words(segment.segment_text(text, self.kind))
        return ([self.mask] if new_chapter else []) + ids + ([self.cls] if end_chapter else [])

    def decode(self, ids: Iterable[int], *, keep_special: bool = False) -> str:
        """Ids → text: the newline token is a newline, words join without spaces (a pretrained tokenizer's decoder
        joins its pieces); start/end/pad are dropped unless asked."""
        silent = () if keep_special else (self.cls, self.mask, self.pad)
        lines: list[list[int]] = [[]]
        for i in map(int, ids):
            if i == self.sep:
                lines.append([])
            elif i not in silent:
                lines[-1].append(i)
        return "\n".join(map(self._join, lines))

    def _join(self, ids: list[int]) -> str:
        if self.kind not in TOKENIZES:
            return "".join(self.tokens[i] for i in ids)
        if type(self.hf.model).__name__ == "WordPiece" or self.hf.decoder is None:
            # WordPiece's decoder (and a tokenizer without one) puts a space between pieces, and so between Chinese
            # characters: join them as GPT2-Chinese's readers do, "##" marking a piece that continues a word.
            return "".join(self.tokens[i].removeprefix("##") for i in ids)
        return self.hf.decode(ids, skip_special_tokens=False)

    # --- files --------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """vocab.txt (one token per line, GPT2-Chinese style), tokenizer.json + tokenizer_config.json for
        `AutoTokenizer` (a pretrained tokenizer's own pipeline, following our conventions), and our metadata."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("".join(f"{t}\n" for t in self.tokens), encoding="utf-8")
        tok = _as_ours(self.hf, self.specials["newline"]) if self.kind == PRETRAINED else \
            self.hf if self.kind == BPE else _hf_tokenizer(self.tokens)
        tok.save(str(directory / "tokenizer.json"))
        roles = {"bos_token": "start", "eos_token": "end", "pad_token": "pad", "unk_token": "unk"}
        special = {key: self.specials[role] for key, role in roles.items()}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "clean_up_tokenization_spaces": False,
                  "model_input_names": ["input_ids", "attention_mask"]}
        _write_json(directory / "tokenizer_config.json", config)
        _write_json(directory / "special_tokens_map.json", special)
        meta = {"kind": self.kind, "to_simplified": self.to_simplified, "segmenter": segment.SEGMENTER_ID,
                "vocab_size": len(self), "special_tokens": {t: self.index[t] for t in self.specials.values()},
                "specials": self.specials}
        _write_json(directory / META_FILE, meta)

    @classmethod
    def load(cls, directory: str | Path) -> Vocab:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            lines = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
            hf = read_tokenizer(directory / "tokenizer.json") if meta["kind"] in TOKENIZES else None
            return cls(lines[:-1], meta["kind"], meta["to_simplified"], meta.get("specials"), hf)
        except FileNotFoundError as e:
            missing = Path(e.filename).name
            raise UserError(f"{directory} is not a gpt-novel tokenizer folder (missing {missing})") from None
        except (KeyError, TypeError, ValueError) as e:  # a folder from elsewhere: its files disagree or are damaged
            raise UserError(f"{directory}: {META_FILE} and vocab.txt do not make a vocabulary ("
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _as_ours(hf, newline: str):
    """A pretrained tokenizer's pipeline as the data directory (and every model trained on it) saves it: no
    template adding [CLS] … [SEP] around a prompt (those are a chapter's end and a newline here, so a
    `pipeline("text-generation")` would start from them), and a WordPiece decoder that joins pieces without spaces
    and turns the newline token into a newline, as `Vocab.decode` does. Vocabulary, normalizer and model unchanged."""
    from tokenizers import Tokenizer, decoders

    tok = Tokenizer.from_str(hf.to_str())
    tok.post_processor = None
    if type(tok.model).__name__ == "WordPiece":
        tok.decoder = decoders.Sequence([decoders.Replace(newline, "\n"), decoders.Replace("##", ""),
                                         decoders.Fuse()])
    return tok


def read_tokenizer(path: Path):
    """The `tokenizers.Tokenizer` of a tokenizer.json; one line when it is not one (the library raises a bare
    Exception for that, so nothing narrower can be caught)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise FileNotFoundError(2, "missing", str(path))
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a tokenizer ({str(e).splitlines()[0]})") from None


# Files of a Hugging Face tokenizer folder (not the weights beside them): what the digest of a pretrained
# tokenizer covers.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", META_FILE)


def given_kind(path: str | Path) -> str | None:
    """The kind of vocabulary a --tokenizer folder gives: a gpt-novel one (a data directory's tokenizer/ or a
    model folder from tools/consolidate.py) keeps its kind, so a word vocabulary still segments with thulac; any
    other Hugging Face tokenizer is "pretrained"."""
    meta = Path(path) / META_FILE
    if meta.is_file():  # no kind: Vocab.load says what is wrong with it
        return json.loads(meta.read_text(encoding="utf-8")).get("kind")
    return PRETRAINED


def given_vocab(path: str | Path, to_simplified: bool, specials: dict[str, str] | None) -> Vocab:
    """The vocabulary of a --tokenizer folder: ours as saved, any other through `load_pretrained`."""
    return Vocab.load(path) if (Path(path) / META_FILE).is_file() else load_pretrained(path, to_simplified, specials)


def tokenizer_digest(path: str | Path) -> str:
    """sha256 over a tokenizer folder's tokenizer files (names and bytes): what identifies a pretrained tokenizer."""
    import hashlib

    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (Path(path) / name).is_file():
            digest.update(name.encode() + b"\0" + (Path(path) / name).read_bytes())
    return digest.hexdigest()


def load_pretrained(path: str | Path, to_simplified: bool = False, specials: dict[str, str] | None = None) -> Vocab:
    """The Vocab of a Hugging Face tokenizer folder (a model folder will do); one line when it
    is not one, is not a fast tokenizer, or lacks the special tokens gpt-novel needs."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"--tokenizer {path} is not a Hugging Face tokenizer folder ({str(e).splitlines()[0]})") \
            from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--tokenizer {path}: {type(tokenizer).__name__} has no fast (Rust) version to encode with")
    by_id = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(by_id, key=by_id.__getitem__)
    if [by_id[t] for t in tokens] != list(range(len(tokens))):
        raise UserError(f"--tokenizer {path}: its token ids are not 0 … {len(tokens) - 1} without gaps")
    specials = specials or DEFAULT_SPECIALS
    missing = [t for t in specials.values() if t not in by_id]
    if missing:
        raise UserError(f"--tokenizer {path} lacks {', '.join(missing)}: gpt-novel needs a token for a newline, a "
                        "chapter's end and start, padding and unknown characters; name five of its tokens with "
                        "--special-tokens NEWLINE,END,START,PAD,UNK")
    return Vocab(tokens, PRETRAINED, to_simplified, specials, tokenizer.backend_tokenizer)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# Both our pipelines cut text into the runs between punctuation and spaces (BPE learns its merges inside them); a
# run longer than this is cut, so that a paragraph without punctuation (a table, a poem's line of 700 characters)
# does not make one huge word.
BPE_RUN = 32


def train_bpe(lines: Iterable[str], alphabet: Iterable[str], vocab_size: int, to_simplified: bool) -> Vocab:
    """A byte-pair vocabulary learnt from `lines` (text without newlines): the specials at ids 0-4, every
    character of `alphabet` (the corpus's: no corpus text encodes to [UNK]), then merges up to `vocab_size`.
    Hugging Face `tokenizers` does the training; the pipeline around it is ours: a newline is [SEP], punctuation
    stands alone, and decoding joins pieces without spaces."""
    from tokenizers import Tokenizer, models, trainers

    # ignore_merges: a whole run that is a token is that token, so "[SEP]" (what the normalizer makes of a
    # newline for AutoTokenizer) stays one token instead of its letters
    tok = Tokenizer(models.BPE(unk_token=UNK, ignore_merges=True))
    _our_pipeline(tok)
    chars = sorted(set(alphabet) - {"\n"})
    # min_frequency 2: a pair seen once is never merged, as a word vocabulary keeps only words seen twice. Otherwise a
    # small corpus spends the size on pieces of single sentences (the shipped sample: 8,906 tokens for its 14,758
    # characters, too few samples to train on); the benchmark's vocabularies are the same bytes either way.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=chars,
                                  limit_alphabet=len(chars), show_progress=False, min_frequency=2)
    tok.train_from_iterator(lines, trainer)
    by_id = tok.get_vocab(with_added_tokens=True)
    return Vocab(sorted(by_id, key=by_id.__getitem__), BPE, to_simplified, hf=tok)


def _our_pipeline(tok) -> None:
    """Our pipeline around a `tokenizers` model: `_normalizer`; "[SEP]", then single whitespace / punctuation /
    symbol characters, then runs of other characters (≤ BPE_RUN); decoding turns [SEP] into a newline and joins
    pieces without spaces."""
    from tokenizers import Regex, decoders, pre_tokenizers

    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(rf"\[SEP\]|[\s\p{{P}}\p{{S}}]|[^\s\p{{P}}\p{{S}}]{{1,{BPE_RUN}}}"),
                                             "isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SEP, "\n"), decoders.Fuse()])


def _normalizer():
    """The same normalization as `clean.normalize`: one paragraph per line, no indentation, single spaces; a
    newline becomes [SEP]."""
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([
        normalizers.Replace(Regex(r"\r\n?"), "\n"),
        normalizers.Replace(Regex(r"[^\S\n]+"), " "),
        normalizers.Replace(Regex(r" ?\n[\s]*"), "\n"),
        normalizers.Strip(),
        normalizers.Replace("\n", SEP),
    ])


def _hf_tokenizer(tokens: list[str]):
    """A `tokenizers` pipeline that approximates thulac + vocabulary lookup with greedy longest match."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=UNK, continuing_subword_prefix="",
                         max_input_chars_per_word=64)
    )
    _our_pipeline(tok)
    tok.add_special_tokens([CLS, MASK, PAD, UNK])
    return tok
