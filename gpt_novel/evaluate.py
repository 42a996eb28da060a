"""`gpt-novel eval HF_DIR --data DATA_DIR`: how good a consolidated model is.

1. Held-out perplexity and bits per character on the val shards (bits per character divides the total
   negative log-likelihood by the characters the predicted tokens stand for, so word and character vocabularies
   compare).
2. Continuation quality on K held-out chapters (the val split, decoded back to chapter texts): the model gets the
   first P characters as a new chapter's start, generates, and its first L characters are compared with the true
   next L characters: BLEU (sacrebleu, Chinese tokenization), ROUGE-L F1 over characters; on the generated text
   alone distinct-1/2 (unique character n-grams / all n-grams) and a repetition rate (the share of character
   4-grams that repeat an earlier 4-gram of the same continuation). Seeded: the same seed gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from gpt_novel.consolidate import CARD_FILE
from gpt_novel.data.dataset import Dataset
from gpt_novel.data.stream import ShardSet, val_batches
from gpt_novel.data.vocab import Vocab
from gpt_novel.errors import UserError
from gpt_novel.generate import SamplingOptions, continue_text, load
from gpt_novel.model import heldout_metrics, heldout_sums


def perplexity(model, vocab: Vocab, val: ShardSet, batch_size: int = 8, max_batches: int = 10**9) -> dict:
    """Mean negative log-likelihood per token over the val samples, its exp, and bits per character."""
    with torch.no_grad():
        nats, tokens, chars = heldout_sums(model, val_batches(val, 0, 1, batch_size, max_batches),
                                           vocab.char_lengths(), model.device)
    return {**heldout_metrics(nats, tokens, chars), "val_tokens": int(tokens)}


def held_out_chapters(vocab: Vocab, val: ShardSet) -> list[str]:
    """The val split's chapters as text, in order (the last may be cut short by packing)."""
    samples = [val.read(shard, i) for shard in range(len(val.counts)) for i in range(int(val.counts[shard]))]
    stream = np.concatenate([samples[0]] + [s[1:] for s in samples[1:]]).tolist()
    chapters, current = [], None
    for i in stream:
        if i == vocab.mask:
            current = []
        elif i == vocab.cls and current is not None:
            chapters.append(vocab.decode(current))
            current = None
        elif current is not None:
            current.append(i)
    if current:
        chapters.append(vocab.decode(current))
    return chapters


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 over characters (longest common subsequence)."""
    if not hyp or not ref:
        return 0.0
    prev = [0] * (len(ref) + 1)
    for h in hyp:
        cur = [0]
        for j, r in enumerate(ref):
            cur.append(prev[j] + 1 if h == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def distinct(texts: list[str], n: int) -> float:
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def shortfall(n_chapters: int, n_long_enough: int, asked: int, min_chars: int) -> str:
    """Why fewer chapters than --chapters are continued, so a small val split is not mistaken for the number asked."""
    have = f"the val split has {n_chapters} chapter{'s' if n_chapters != 1 else ''}"
    if n_long_enough < n_chapters:
        have += f", {n_long_enough} of them with at least {min_chars} characters"
    return f"{have}; continuing {n_long_enough} of the {asked} asked"


def continuation_quality(model, vocab: Vocab, chapters: list[str], k: int, prompt_chars: int, gen_chars: int,
                         seed: int) -> dict:
    import sacrebleu

    long_enough = [c for c in chapters if len(c) >= prompt_chars + gen_chars]
    if not long_enough:
        raise UserError(f"no held-out chapter has {prompt_chars + gen_chars} characters; lower --prompt-chars or "
                        "--gen-chars")
    usable = long_enough[:k]
    if len(usable) < k:
        print(f"gpt-novel eval: warning: {shortfall(len(chapters), len(long_enough), k, prompt_chars + gen_chars)}",
              file=sys.stderr)
    hyps, refs = [], []
    for n, chapter in enumerate(usable):  # a token is at least one character: gen_chars tokens are enough
        options = SamplingOptions(max_new_tokens=gen_chars, seed=seed + n, new_chapter=True)
        hyps.append(continue_text((model, vocab), chapter[:prompt_chars], options)[0][:gen_chars])
        refs.append(chapter[prompt_chars : prompt_chars + gen_chars])
    return {
        "chapters": len(usable), "chapters_asked": k, "prompt_chars": prompt_chars, "gen_chars": gen_chars,
        "seed": seed,
        "bleu": sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score,
        "rouge_l": sum(rouge_l(h, r) for h, r in zip(hyps, refs, strict=True)) / len(hyps),
        "distinct_1": distinct(hyps, 1), "distinct_2": distinct(hyps, 2),
        "repetition_4": sum(map(repetition_rate, hyps)) / len(hyps),
        "examples": [{"prompt": c[:prompt_chars][-40:], "generated": h, "reference": r}
                     for c, h, r in zip(usable[:3], hyps, refs, strict=False)],
    }


def evaluate(model_dir: str | Path, data: str | Path, chapters: int = 8, prompt_chars: int = 64,
             gen_chars: int = 64, seed: int = 1234, device: str | None = None, max_batches: int = 10**9) -> dict:
    dataset = Dataset.load(data)  # before the model: a bad --data is refused without loading any weights
    model, vocab = load(model_dir, device, "fp32" if device in (None, "cpu") and not torch.cuda.is_available()
                        else None)
    if Vocab.load(dataset.tokenizer_dir).tokens != vocab.tokens:
        raise UserError(f"{data} was prepared with another vocabulary than the model's")
    val = ShardSet.load(dataset, "val")
    result = {"model": str(model_dir), "data": str(data), **perplexity(model, vocab, val, max_batches=max_batches)}
    result["continuation"] = continuation_quality(model, vocab, held_out_chapters(vocab, val), chapters,
                                                  prompt_chars, gen_chars, seed)
    return result


def table(result: dict) -> str:
    c = result["continuation"]
    rows = [("val loss", f"{result['val_loss']:.4f}"), ("val perplexity", f"{result['val_ppl']:.2f}"),
            ("bits per character", f"{result['val_bpc']:.4f}"), ("chapters", str(c["chapters"])),
            ("BLEU (zh)", f"{c['bleu']:.2f}"), ("ROUGE-L", f"{c['rouge_l']:.4f}"),
            ("distinct-1 / -2", f"{c['distinct_1']:.4f} / {c['distinct_2']:.4f}"),
            ("repetition (4-gram)", f"{c['repetition_4']:.4f}")]
    return "\n".join(f"{k:<22}{v}" for k, v in rows)


EVAL_FILE = "eval.json"  # in the model folder, unless --json says otherwise; `gpt-novel serve` shows it


def run_cli(args: argparse.Namespace) -> int:
    result = evaluate(args.model_dir, args.data, args.chapters, args.prompt_chars, args.gen_chars, args.seed,
                      args.device)
    out = Path(args.json) if args.json else Path(args.model_dir) / EVAL_FILE
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print(f"wrote {out}", file=sys.stderr)
    if args.model_card:
        card = Path(args.model_dir) / CARD_FILE
        with open(card, "a", encoding="utf-8") as f:
            f.write(f"\n## Evaluation (`gpt-novel eval`, data {args.data})\n\n```\n{table(result)}\n```\n")
        print(f"updated {card} (evaluation appended)", file=sys.stderr)
    return 0
