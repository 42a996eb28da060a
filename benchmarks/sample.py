"""Benchmark generation: tools/sample.py's path against a bare `model.generate` and a loop without KV cache.

usage: python benchmarks/sample.py [--model HF_DIR] [--max-new-tokens N] [--repeats R] [--batch B]

Same model, prompt, seed and sampling settings for all three; --batch B drafts at once (tools/sample.py
--num-samples B; tokens/s count every draft's tokens). `sample.py`'s path includes encoding the prompt with
thulac (its model load is warmed up first) and decoding; the bare call gets the ids ready-made; the third is
`generate(use_cache=False)`, which recomputes the whole prefix at every token. Without --model an untrained GPT-2
(4 layers, 256 dims, 512 positions) on the sample's tokenizer is used. Target (issue 4): ≥ 0.9 × bare generate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def untrained_model_dir(tmp: Path, n_layer: int = 4, n_embd: int = 256, n_positions: int = 512) -> Path:
    """An untrained GPT-2 on the shipped sample's tokenizer, saved as a model folder (generation speed does not
    depend on training)."""
    from gpt_novel.config import TrainConfig
    from gpt_novel.consolidate import generation_config
    from gpt_novel.data.vocab import Vocab
    from gpt_novel.model import build_model

    data = tmp / "data"
    subprocess.run([sys.executable, "-m", "gpt_novel", "prepare", str(ROOT / "sample" / "corpus"), "--out", str(data),
                    "--seq-len", "128", "--cache-dir", str(tmp / "cache")], check=True, stdout=subprocess.DEVNULL)
    vocab = Vocab.load(data / "tokenizer")
    torch.manual_seed(0)
    model = build_model(TrainConfig(n_layer=n_layer, n_head=4, n_embd=n_embd, n_positions=n_positions, dropout=0.0),
                        vocab)
    model.generation_config = generation_config(vocab, n_positions)
    out = tmp / "model"
    model.save_pretrained(out)
    for f in (data / "tokenizer").iterdir():
        shutil.copy2(f, out / f.name)
    return out


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="drafts generated together")
    args = parser.parse_args()
    from gpt_novel.generate import SamplingOptions, continue_ids, generation_kwargs, load, prompt_ids

    with tempfile.TemporaryDirectory() as tmp:
        model, vocab = load(args.model or untrained_model_dir(Path(tmp)))
    positions = model.config.n_positions
    if args.max_new_tokens >= positions:
        parser.error(f"--max-new-tokens must be below the model's {positions} positions: a bare generate cannot "
                     "slide the context as sample.py does")
    prompt = "青石镇一连下了七天的雨。沈砚推开客栈的门，"
    options = SamplingOptions(max_new_tokens=args.max_new_tokens, seed=1, num_samples=args.batch)

    def encoded() -> list[int]:  # sample.py's encoding, cut to the tail that leaves room: no path slides
        return prompt_ids(vocab, prompt, options, positions)[-(positions - args.max_new_tokens):]

    ids = encoded()  # also loads thulac (word vocabulary) once
    batch = torch.tensor([ids] * args.batch, device=model.device)
    common = dict(attention_mask=torch.ones_like(batch), **generation_kwargs(vocab, options))

    def bare(use_cache: bool) -> torch.Tensor:
        torch.manual_seed(options.seed)
        with torch.no_grad():
            return model.generate(batch, use_cache=use_cache, **common)

    new_tokens = (bare(True).shape[1] - len(ids)) * args.batch  # the same seed: the same tokens on every path
    ours = _timed(lambda: continue_ids((model, vocab), encoded(), options), args.repeats)
    plain = _timed(lambda: bare(True), args.repeats)
    no_cache = _timed(lambda: bare(False), args.repeats)
    print(json.dumps({
        "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""), "batch": args.batch,
        "new_tokens": new_tokens,
        "sample_py_tokens_per_s": round(new_tokens / ours, 1),
        "bare_generate_tokens_per_s": round(new_tokens / plain, 1),
        "no_kv_cache_tokens_per_s": round(new_tokens / no_cache, 1), "ratio_to_bare": round(plain / ours, 3),
        "ratio_target": 0.9, "ratio_ok": plain / ours >= 0.9, "kv_cache_speedup": round(no_cache / plain, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
