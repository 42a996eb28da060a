"""A DeepSpeed ZeRO checkpoint (any stage, with or without offload) → one ordinary Hugging Face model folder.

    python tools/consolidate.py RUN_DIR_OR_CHECKPOINT OUT_DIR [--step N] [--dtype bf16|fp32]

DeepSpeed's consolidation reads the fp32 master weights from the ZeRO shards; it is used in lazy mode (shards
memory-mapped, one tensor materialised at a time, straight into a model built on the meta device), so peak memory
is about one copy of the weights. The weights go into `GPT2LMHeadModel`, which ties the output head to the token
embedding; `save_pretrained` then writes (sharded when large) safetensors with the tie recorded, the tokenizer, a
generation config and a model card. DeepSpeed's own `zero_to_fp32.py --safe_serialization` is not used: it trips
on the shared embedding/head tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from gpt_novel import checkpoint
from gpt_novel.config import TrainConfig, load_config
from gpt_novel.data.vocab import Vocab
from gpt_novel.data.workdir import owner_tag, replace_dir
from gpt_novel.errors import UserError
from gpt_novel.generate import DTYPES, SamplingOptions, generation_kwargs
from gpt_novel.metrics import LOSS_PLOT, evals_until
from gpt_novel.model import build_model
from gpt_novel.parallel import name_deepspeed_accelerator

# The dtypes a folder is saved in: fp16 is left out because training ran in bf16, whose range fp16 lacks
# (activations that fit bf16 can overflow fp16), so a folder saved in fp16 could generate NaNs; tools/sample.py can
# still load a bf16/fp32 folder in fp16 on purpose.
SAVE_DTYPES = tuple(name for name in DTYPES if name != "fp16")


def find_checkpoint(src: str | Path, step: int | None = None, best: bool = False) -> Path:
    """A checkpoint directory from a run directory (newest complete, --step, or --best: the lowest val loss) or a
    checkpoint path, its files verified."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src} does not exist")
    if (src / checkpoint.MARKER).exists() or (src / checkpoint.STATE).exists():
        path = src
    elif (src / "checkpoints").is_dir():
        path = _in_run_dir(src, step, best)
    else:
        raise UserError(f"{src} is neither a training run directory nor a checkpoint")
    try:
        checkpoint.check_usable(path)  # every digest, before DeepSpeed's loader unpickles anything
    except ValueError as e:
        raise UserError(str(e)) from None
    return path


def _in_run_dir(run_dir: Path, step: int | None, best: bool) -> Path:
    warn = functools.partial(print, file=sys.stderr)
    if best:
        path = checkpoint.find_best(run_dir, warn=warn)
        if path is None:
            raise UserError(f"{run_dir} holds no complete checkpoint saved at an evaluation step (no val loss to "
                            "compare: no val split, or --save-every is not a multiple of --eval-every)")
        warn(f"consolidate: the best checkpoint is {path.name} (val loss {checkpoint.val_loss(path):.4f})")
        return path
    if step is not None:
        path = checkpoint.checkpoints_dir(run_dir) / f"{checkpoint.PREFIX}{step:08d}"
        if not path.is_dir():
            raise UserError(f"{run_dir} has no checkpoint of step {step}")
        return path
    path = checkpoint.find_latest(run_dir, warn=warn, check=checkpoint.verify)
    if path is None:
        raise UserError(f"{run_dir} holds no complete checkpoint")
    return path


def consolidate(src: str | Path, out: str | Path, step: int | None = None, dtype: str = "bf16",
                best: bool = False) -> Path:
    """Write the HF folder; returns its path."""
    ckpt = find_checkpoint(src, step, best)
    out = Path(out)
    _check_out(out)
    cfg = load_config(TrainConfig, str(ckpt / "config.yaml"), {})
    vocab = Vocab.load(ckpt / "tokenizer")
    try:
        state = checkpoint.load_state(ckpt)
    except ValueError as e:
        raise UserError(str(e)) from None
    lazy = _fp32_weights(ckpt)
    with torch.device("meta"):
        model = _model_of(ckpt, cfg, vocab)
    expected = dict(model.state_dict())
    _check_shapes(lazy, expected, vocab, ckpt)
    weights = {}
    for name in tqdm(list(lazy), desc="consolidate", unit="tensor", disable=None):
        weights[name] = lazy[name].contiguous().to(DTYPES[dtype])
    if "lm_head.weight" not in weights:  # the tie: the head is the token embedding
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config(vocab, cfg.n_positions)
    tmp = out.parent / f".{out.name}.partial-{owner_tag()}"
    try:
        tmp.mkdir(parents=True)
        from transformers.utils import logging

        logging.disable_progress_bar()  # "Writing model shards" after our own "consolidate" bar says nothing more
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        _copy_tokenizer(ckpt / "tokenizer", tmp)
        facts = training_facts(ckpt, cfg, state)
        (tmp / FACTS_FILE).write_text(json.dumps(facts, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(ckpt, facts, dtype, out), encoding="utf-8")
        if (ckpt.parent.parent / LOSS_PLOT).is_file():
            shutil.copyfile(ckpt.parent.parent / LOSS_PLOT, tmp / LOSS_PLOT)
        _respect_umask(tmp)
        replace_dir(tmp, out, out.parent / f".{out.name}.old-{owner_tag()}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_of(ckpt: Path, cfg: TrainConfig, vocab: Vocab):
    """The architecture the checkpoint trained: its model_config.json (a run from --init-from keeps every detail of
    the folder's config, and the folder need not exist any more), else the one its options describe."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if (ckpt / checkpoint.MODEL_CONFIG).is_file():
        return GPT2LMHeadModel(GPT2Config.from_json_file(str(ckpt / checkpoint.MODEL_CONFIG)))
    return build_model(dataclasses.replace(cfg, init_from=""), vocab)


def _fp32_weights(ckpt: Path) -> dict:
    """DeepSpeed's fp32 master weights of any ZeRO stage, read lazily. Its reader narrates on stdout and draws a bar
    for a few files ("Detected checkpoint of type zero stage ZeroStageEnum.gradients, world_size: 2"…), none of which
    a user needs: kept out of our output, and shown only if it fails. Its logger's warnings still pass."""
    name_deepspeed_accelerator()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=checkpoint.DS_TAG, lazy_mode=True)
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise


def _check_out(out: Path) -> None:
    """A new or empty directory, or a model folder (replaced whole, so nothing of the old one, such as its
    eval.json, is left to describe the new weights); anything else is refused, as prepare refuses it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out} is not empty and holds no model folder; choose a new or empty directory")


def _respect_umask(folder: Path) -> None:
    """safetensors writes its file with mode 0600; give every file the mode the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _check_shapes(lazy: dict, expected: dict, vocab: Vocab, ckpt: Path) -> None:
    wte = lazy.get("transformer.wte.weight")
    if wte is None:
        raise UserError(f"{ckpt} does not hold a GPT-2 model (no transformer.wte.weight)")
    if tuple(wte.shape)[0] != len(vocab):
        raise UserError(f"{ckpt}: the model has {tuple(wte.shape)[0]} token embeddings but its tokenizer "
                        f"{len(vocab)} tokens (a checkpoint from another vocabulary?)")
    missing = sorted(set(expected) - set(lazy) - {"lm_head.weight"})
    if missing:
        raise UserError(f"{ckpt}: weights missing from the checkpoint: {', '.join(missing[:5])}")
    for name, tensor in lazy.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{ckpt}: {name} has shape {tuple(tensor.shape)}, the config says "
                            f"{tuple(expected[name].shape)}")


def generation_config(vocab: Vocab, n_positions: int):
    """tools/sample.py's defaults (from generate.py, so `pipeline(...)` samples as sample.py does); a chapter
    starts at [MASK] and ends at [CLS]."""
    from transformers import GenerationConfig

    options = SamplingOptions(max_new_tokens=min(256, n_positions // 2))
    return GenerationConfig(bos_token_id=vocab.mask, **generation_kwargs(vocab, options))


def _copy_tokenizer(src: Path, out: Path) -> None:
    for f in src.iterdir():
        shutil.copy2(f, out / f.name)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = json.loads((out / "config.json").read_text(encoding="utf-8"))["n_positions"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True)
                                               + "\n", encoding="utf-8")


FACTS_FILE = "training.json"  # what the model card says, for programs (`gpt-novel serve` shows it)


def training_facts(ckpt: Path, cfg: TrainConfig, state: checkpoint.TrainerState) -> dict:
    """How the weights were made: preset and shape, steps, tokens, the last held-out scores they had seen and the
    first ones of the run (bits per character mean little alone: beside the start they show what training did)."""
    evals = evals_until(ckpt.parent.parent, state.step)
    first, last = (evals[0], evals[-1]) if evals else (None, None)
    keys = ("step", "val_loss", "val_ppl", "val_bpc")
    return {
        "preset": cfg.preset, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
        "n_positions": cfg.n_positions, "n_params": state.n_params, "steps": state.step,
        "tokens": state.tokens, "init_from": cfg.init_from or None,
        "data_fingerprint": state.data_fingerprint,
        "tokenizer": Vocab.load(ckpt / "tokenizer").kind,
        "validation": {k: last[k] for k in keys} if last else None,
        "first_validation": {k: first[k] for k in keys} if first else None,
    }


CARD_FILE = "README.md"  # the model card, as the Hugging Face hub names it


def card_title(folder: Path) -> str | None:
    """The model card's first heading (`model_card` writes one; a card from elsewhere may have none), or None."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(64 << 10)  # a heading is near the top; a huge card is not read whole
    return next((line[2:].strip() for line in head.splitlines() if line.startswith("# ")), None)


def model_card(ckpt: Path, facts: dict, dtype: str, out: Path) -> str:
    last, first = facts["validation"], facts.get("first_validation")
    val = (f"val loss {last['val_loss']:.4f}, perplexity {last['val_ppl']:.2f}, {last['val_bpc']:.3f} bits per "
           f"character (step {last['step']})" if last else "no validation recorded")
    if last and first and first["step"] != last["step"]:
        val += f"; the run's first evaluation, step {first['step']}: {first['val_bpc']:.3f} (lower is better)"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
language: zh
---
# gpt-novel: GPT-2 ({facts['preset']}) for Chinese novel continuation

{f"Fine-tuned from `{facts['init_from']}`" if facts['init_from'] else "Trained from scratch"} with gpt-novel, \
consolidated from `{ckpt}`.

| | |
|---|---|
| preset | {facts['preset']}: {facts['n_layer']} layers, {facts['n_head']} heads, {facts['n_embd']} dims, \
{facts['n_positions']} positions |
| parameters | {facts['n_params'] or 'n/a'} |
| steps | {facts['steps']} |
| tokens seen | {facts['tokens']:,} |
| data | manifest fingerprint `{facts['data_fingerprint'] or 'n/a'}` |
| validation | {val} |
| weights | {dtype} safetensors |

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```

{TOKENIZER_NOTES[facts['tokenizer']]}
"""


TOKENIZER_NOTES = {
    "word": "The tokenizer here segments words by greedy longest match over the vocabulary. Training segmented with "
            "thulac:\n`tools/sample.py` encodes a prompt exactly as training did and is the better way to continue a "
            "text.",
    "char": "The tokenizer here has one token per character, as training had.",
    "bpe": "The tokenizer here is the byte-pair vocabulary training learnt from the corpus, with the same pipeline: "
           "it encodes a\nprompt as training did.",
    "pretrained": "The tokenizer is the pretrained one the data was encoded with (it adds no [CLS] … [SEP]); "
                  "`tools/sample.py`\nalso keeps a prompt's newlines as the newline token.",
}


def parser(prog: str = "consolidate") -> argparse.ArgumentParser:
    """The command line of `gpt-novel consolidate` and tools/consolidate.py (the docs' commands are checked
    against it)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("out", metavar="OUT_DIR")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint of this step (default: the newest complete one)")
    which.add_argument("--best", action="store_true", help="the checkpoint with the lowest validation loss (kept "
                       "by training whatever --keep-last)")
    parser.add_argument("--dtype", choices=SAVE_DTYPES, default="bf16")
    return parser


def main(argv: list[str] | None = None, prog: str = "consolidate") -> int:
    """`gpt-novel consolidate` and tools/consolidate.py."""
    args = parser(prog).parse_args(argv)
    try:
        out = consolidate(args.src, args.out, args.step, args.dtype, args.best)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (AutoModelForCausalLM / AutoTokenizer .from_pretrained)")
    return 0
