"""The vocabulary and tokenizer: round trip, no [UNK] on corpus text, the Hugging Face files."""

from __future__ import annotations

from collections import Counter

import pytest

from gpt_novel.data import clean, segment
from gpt_novel.data.vocab import SPECIAL_TOKENS, Vocab, build_tokens, vocab_size_for
from gpt_novel.errors import UserError


@pytest.fixture(scope="module")
def vocab(sample_data) -> Vocab:
    return Vocab.load(sample_data / "tokenizer")


def test_special_tokens_come_first(vocab):
    assert vocab.tokens[:5] == list(SPECIAL_TOKENS)
    assert (vocab.sep, vocab.cls, vocab.mask, vocab.pad, vocab.unk) == (0, 1, 2, 3, 4)


def test_round_trip_of_the_whole_corpus_text(vocab, sample_text):
    body = sample_text[sample_text.index("第一章"):]  # the title lines before it are front matter, not corpus
    ids = vocab.encode(body)
    assert vocab.unk not in ids
    assert vocab.decode(ids) == clean.normalize(body)


def test_words_are_used_and_unknown_words_fall_back_to_characters(vocab):
    words = [t for t in vocab.tokens if len(t) > 1 and not t.startswith("[")]
    assert words, "a word vocabulary holds multi-character words"
    assert vocab.encode(words[0]) == [vocab.index[words[0]]]
    text = "沈砚青石"  # characters of the corpus, in an order thulac may not have seen as one word
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.unk not in vocab.encode(text)


def test_newline_is_sep_and_chapter_markers(vocab):
    ids = vocab.encode("雨夜\n来客", new_chapter=True, end_chapter=True)
    assert ids[0] == vocab.mask and ids[-1] == vocab.cls and vocab.sep in ids
    assert vocab.decode(ids) == "雨夜\n来客"
    assert vocab.decode(ids, keep_special=True).startswith("[MASK]")


def test_normalization_applies_to_prompts(vocab):
    assert vocab.decode(vocab.encode("　　雨夜  来客\r\n\r\n　　来客")) == "雨夜 来客\n来客"


def test_character_outside_the_corpus_is_unk(vocab):
    ids = vocab.encode("雨嗎")
    assert ids[-1] == vocab.unk


def test_auto_tokenizer_loads_and_decodes_text(sample_data, vocab, sample_text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_data / "tokenizer")
    assert len(tok) == len(vocab)
    assert tok.eos_token == "[CLS]" and tok.pad_token == "[PAD]" and tok.bos_token == "[MASK]"
    paragraph = clean.normalize(sample_text).split("\n")[5]
    ids = tok(paragraph + "\n" + paragraph)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == paragraph + "\n" + paragraph
    # the same ids as our encoder for single characters; only word boundaries may differ
    assert tok("雨")["input_ids"] == vocab.encode("雨")


def test_char_vocabulary_has_one_token_per_character():
    words = Counter(segment.segment_text("天下大势\n分久必合", kind="char"))
    tokens = build_tokens(words, "char", 100)
    assert all(len(t) == 1 for t in tokens[5:])
    assert set(tokens[5:]) == set("天下大势分久必合")


def test_vocab_size_limits_words_but_keeps_every_character():
    words = Counter({"天下": 5, "大势": 4, "分久": 3, "天": 1, "下": 1})
    tokens = build_tokens(words, "word", 5 + 6 + 1)
    assert tokens[5:7] == ["下", "天"]  # the most frequent characters first (6 each), ties by code point
    assert set(tokens[7:11]) == set("大势分久")
    assert tokens[11:] == ["天下"]  # room for one word: the most frequent
    with pytest.raises(UserError, match="--vocab-size 8 is too small"):
        build_tokens(words, "word", 8)


def test_an_unset_vocab_size_is_the_benchmarks_for_bpe_and_makes_room_for_merges():
    from gpt_novel.config import prepare_config

    config = prepare_config(["novels/", "--out", "data/"])
    assert (config.tokenizer, config.vocab_size) == ("bpe", None)  # benchmarks/tokenizer_choice.py's winner
    assert vocab_size_for("bpe", None, 8_024) == 12_000
    assert vocab_size_for("bpe", None, 20_000) == 20_000 + 5 + 3_000  # a large corpus's rare characters
    assert vocab_size_for("word", None, 20_000) == vocab_size_for("char", None, 9) == 50_000
    assert vocab_size_for("bpe", 9_000, 8_024) == 9_000
    with pytest.raises(UserError, match="--vocab-size 9000 is too small: .* at least 9005"):
        vocab_size_for("bpe", 9_000, 9_000)


def test_segmentation_keeps_the_text_exactly():
    text = "他说：“你好！” abc 123\n第二行，" + "很长的句子。" * 400
    words = segment.segment_text(text)
    assert "".join(words) == text
    assert "\n" in words and " " in words
    assert max(len(w) for w in words) < 100
