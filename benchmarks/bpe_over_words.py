"""Would byte-pair merges over thulac's words beat the default BPE? Compression and cost on a held-out novel. JSON.

usage: python benchmarks/bpe_over_words.py [--corpus DIR] [--held-out FILE] [--vocab-size 12000] [--work DIR]

Issue 25 asked to consider a BPE learnt over thulac words (merges never cross a word boundary). It pays thulac's
segmentation in prepare, so it can only win on held-out bits per character; and at equal FLOPs a tokenizer that
packs fewer characters into a token sees fewer characters a step. This measures what decides whether it is worth
a training run, on the split of `tokenizer_choice.py` (every novel but one learnt from, the held-out one only
encoded): characters per token of the held-out novel for the default BPE (`vocab.train_bpe`: merges inside runs
between punctuation) and for BPE over thulac words, the same size, the same cleaned training text (prepare's, read
back from a `--tokenizer char` dataset), the same alphabet, both merging only pairs seen twice; and thulac's
segmentation in CPU-seconds per MB of text, in this process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tokenizer_choice import ROOT, _prepare, split_corpus

from gpt_novel.data import segment
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.stream import ShardSet
from gpt_novel.data.vocab import SPECIAL_TOKENS, UNK, Vocab, train_bpe
from gpt_novel.evaluate import held_out_chapters

WORD_SEP = "\u2063"  # invisible separator: joins thulac's words into one string that the pre-tokenizer splits again


def cleaned_lines(novels: Path, work: Path, *extra: str) -> list[str]:
    """The novels' text as prepare keeps it (cleaned, chapters split), one paragraph a line, its train split (all
    of it with --val-ratio 0)."""
    data = work / f"{novels.name}-char"
    _prepare(novels.name, novels, data, work, "--tokenizer", "char", *extra)
    chapters = held_out_chapters(Vocab.load(data / "tokenizer"), ShardSet.load(Dataset.load(data), "train"))
    return [line for chapter in chapters for line in chapter.split("\n") if line]


def word_lines(lines: list[str]) -> tuple[list[str], float]:
    """Each line's thulac words joined by WORD_SEP, and the CPU-seconds thulac took."""
    start = time.process_time()
    joined = [WORD_SEP.join(segment.segment_text(line)) for line in lines]
    return joined, time.process_time() - start


def train_over_words(lines: list[str], alphabet: set[str], size: int):
    """A `tokenizers` BPE whose pre-tokens are thulac's words (the default BPE's trainer settings otherwise)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(WORD_SEP, "removed")
    chars = sorted(alphabet)
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=chars, limit_alphabet=len(chars),
        show_progress=False, min_frequency=2))
    return tok


def chars_per_token(tok, lines: list[str], chars: int) -> float:
    return round(chars / sum(len(e.ids) for e in tok.encode_batch(lines)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--held-out", default="sanguoyanyi.txt")
    parser.add_argument("--vocab-size", type=int, default=12000)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-bpe-over-words")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    train_dir, held_dir = split_corpus(args.corpus, args.held_out, args.work)
    train, held = cleaned_lines(train_dir, args.work), cleaned_lines(held_dir, args.work, "--val-ratio", "0")
    alphabet = set("".join(train)) | set("".join(held))  # both know every character: no [UNK] on either side
    held_chars = sum(map(len, held))
    runs = train_bpe(train, alphabet, args.vocab_size, to_simplified=False).hf
    train_words, thulac_cpu = word_lines(train)
    held_words, _ = word_lines(held)
    words = train_over_words(train_words, alphabet, args.vocab_size)
    mb = sum(len(line.encode()) for line in train) / 1e6
    result = {
        "vocab_size": args.vocab_size, "train_chars": sum(map(len, train)), "held_out_chars": held_chars,
        "bpe_over_runs": {"vocab_size": runs.get_vocab_size(),
                          "chars_per_token": chars_per_token(runs, held, held_chars)},
        "bpe_over_words": {"vocab_size": words.get_vocab_size(),
                           "chars_per_token": chars_per_token(words, held_words, held_chars)},
        "thulac_cpu_s_per_mb": round(thulac_cpu / mb, 2),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
