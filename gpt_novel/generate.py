"""Continue a novel from a prompt with a consolidated model: encode as training did, `model.generate`, decode.

    python tools/sample.py HF_DIR --prompt "话说" [--max-new-tokens 200 --temperature 0.9 --top-k 40 --top-p 0.95
                                               --repetition-penalty 1.1 --num-samples 3 --seed 1 --stream]

The prompt goes through the same normalization and tokenization (BPE, thulac words…) as the training text
(`Vocab.encode`); `--new-chapter` (or an empty prompt) starts it with [MASK] as chapters start. Generation uses the
model's KV cache, never produces [UNK]/[PAD]/[MASK], and stops at [CLS], the end of a chapter. [SEP] becomes a
newline and words are joined without spaces. A prompt longer than the context keeps its tail, and a continuation of
any length slides the context over it (`continue_ids`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_novel.data import ingest
from gpt_novel.data.vocab import Vocab
from gpt_novel.errors import UserError
from gpt_novel.model_folder import check_model_folder

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class SamplingOptions:
    """How to sample; the defaults are the project's one set, used by tools/sample.py and saved by consolidate."""

    max_new_tokens: int = 200
    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    num_samples: int = 1
    seed: int | None = None
    new_chapter: bool = False


def never_generated(vocab: Vocab) -> list[list[int]]:
    """`bad_words_ids` for [UNK], [PAD] and [MASK]: text never holds them, so a model that emits one is wrong."""
    return [[vocab.unk], [vocab.pad], [vocab.mask]]


def generation_kwargs(vocab: Vocab, options: SamplingOptions) -> dict:
    """`model.generate` / `GenerationConfig` arguments for `options`: one place, so sampling and the saved config
    agree. Temperature 0 is greedy (the sampling knobs are then unset, as transformers wants); [CLS] ends a chapter.
    """
    sampling = options.temperature > 0
    return dict(
        max_new_tokens=options.max_new_tokens, do_sample=sampling,
        temperature=options.temperature if sampling else None, top_k=options.top_k if sampling else None,
        top_p=options.top_p if sampling else None, repetition_penalty=options.repetition_penalty,
        eos_token_id=vocab.cls, pad_token_id=vocab.pad, bad_words_ids=never_generated(vocab),
    )


def device_of(spec: str | None) -> torch.device:
    """The --device of sample, serve and eval as a torch.device (None: cuda when available), refused in one line
    when it names no device or one this machine lacks, rather than a traceback from deep inside the model's load."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta and friends hold no weights to run
        raise UserError(f"--device {spec} is not a device (cpu, cuda, cuda:1 …)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec}: MPS is not available on this machine")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 …")
    return device


def load(model_dir: str | Path, device: str | None = None, dtype: str | None = None):
    """(model, vocab) from a folder written by tools/consolidate.py, the device and every file of the folder
    checked before anything loads it."""
    model_dir = Path(model_dir)
    target = device_of(device)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json); make one with tools/consolidate.py")
    check_model_folder(model_dir, str(model_dir))
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from gpt_novel.parallel import name_deepspeed_accelerator

    name_deepspeed_accelerator()  # transformers imports DeepSpeed when it is installed: no "Setting accelerator"
    logging.disable_progress_bar()  # a "Loading weights" bar for a folder that loads in a blink
    vocab = Vocab.load(model_dir)
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if target.type == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, use_safetensors=True,
                                                 local_files_only=True).to(target).eval()
    if model.config.vocab_size != len(vocab):
        raise UserError(f"{model_dir}: the model has {model.config.vocab_size} tokens, its tokenizer {len(vocab)}")
    return model, vocab


def prompt_ids(vocab: Vocab, prompt: str, options: SamplingOptions, n_positions: int) -> list[int]:
    """The prompt as training saw it, cut to the tail the model reads when it outgrows the context."""
    return fit_prompt(encode_prompt(vocab, prompt, options), n_positions)


def encode_prompt(vocab: Vocab, prompt: str, options: SamplingOptions) -> list[int]:
    """The whole prompt as training saw it; an empty one, or `new_chapter`, starts with [MASK] as chapters do."""
    return vocab.encode(prompt, new_chapter=options.new_chapter or not prompt.strip())


def slide_keep(n_positions: int) -> int:
    """How many of the last tokens stay as context when prompt and continuation outgrow the model's positions: 3/4
    of them, so that generation slides by a quarter of the context. GPT2-Chinese slides by one token and reads the
    whole context again for each; a quarter keeps every token's context at least 3/4 as long, at the cost of one
    prefill per n_positions/4 new tokens (the prefill reads its tokens at once, so it costs a few decode steps)."""
    return max(1, n_positions - n_positions // 4)


def fit_prompt(ids: list[int], n_positions: int) -> list[int]:
    """The prompt's ids, or, when the prompt itself leaves no room for a token, the tail that generation would
    keep after a slide (`slide_keep`)."""
    return ids if len(ids) < n_positions else ids[-slide_keep(n_positions):]


def continue_text(model_or_dir, prompt: str, options: SamplingOptions | None = None, *, device: str | None = None,
                  dtype: str | None = None, streamer=None, stop: threading.Event | None = None) -> list[str]:
    """Continuations of `prompt` (num_samples of them, each different), as plain text."""
    options = options or SamplingOptions()
    model, vocab = load(model_or_dir, device, dtype) if isinstance(model_or_dir, (str, Path)) else model_or_dir
    ids = prompt_ids(vocab, prompt, options, model.config.n_positions)
    return continue_ids((model, vocab), ids, options, streamer=streamer, stop=stop)


def continue_ids(model_and_vocab, ids: list[int], options: SamplingOptions, *, streamer=None,
                 stop: threading.Event | None = None) -> list[str]:
    """Continuations of a prompt already encoded and fitted, of any length: when they reach the model's positions,
    generation goes on from the last `slide_keep` tokens (one `generate` call per slide; the RNG and the streamer
    carry over, so a seed gives the same text and a stream has no seam). `stop`, once set, ends generation after
    the token being made."""
    model, vocab = model_and_vocab
    if options.seed is not None:
        torch.manual_seed(options.seed)
    n_positions = model.config.n_positions
    rows = torch.tensor([ids] * options.num_samples, device=model.device)
    made = 0
    with torch.no_grad():
        while made < options.max_new_tokens:
            context = rows[:, -slide_keep(n_positions):] if made else rows
            chunk = min(options.max_new_tokens - made, n_positions - context.size(1))
            kwargs = generation_kwargs(vocab, dataclasses.replace(options, max_new_tokens=chunk))
            out = model.generate(context, attention_mask=torch.ones_like(context), use_cache=True, streamer=streamer,
                                 stopping_criteria=[_Stopped(stop)] if stop else None, **kwargs)
            rows = torch.cat([rows, out[:, context.size(1):]], dim=1)
            made = rows.size(1) - len(ids)
            ended = (rows[:, len(ids):] == vocab.cls).any(dim=1).all()
            if ended or out.size(1) - context.size(1) < chunk or (stop is not None and stop.is_set()):
                break
    return [decode_until_end(vocab, row[len(ids):].tolist()) for row in rows]


def decode_until_end(vocab: Vocab, ids: list[int]) -> str:
    """Text up to the first [CLS] (the end of the chapter)."""
    if vocab.cls in ids:
        ids = ids[: ids.index(vocab.cls)]
    return vocab.decode(ids)


class _Stopped:
    """A stopping criterion (transformers calls it after each token) that ends generation once `event` is set: a
    stop button, a client gone."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class DraftStreamer:
    """Streams several drafts at once through transformers' streamer interface (put/end, duck-typed so that this
    module imports without transformers). transformers' own TextIteratorStreamer takes one sequence and decodes with
    a Hugging Face tokenizer, not our vocabulary.

    `model.generate` calls put() with the prompt, then with each step's new token of every draft; `on_step(deltas)`
    gets the text each draft gained, until [CLS] ends that draft. Only a draft's tokens not yet sent are decoded (our
    decoding joins tokens, so the pieces add up to the whole), and while they end in U+FFFD they wait for the next
    token: a character split over byte-level tokens arrives once, complete."""

    def __init__(self, vocab: Vocab, drafts: int, on_step: Callable[[list[str]], None]):
        self.vocab, self.on_step = vocab, on_step
        self.ids: list[list[int]] = [[] for _ in range(drafts)]
        self.sent = [0] * drafts  # how many of each draft's tokens have been sent
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for ids, token in zip(self.ids, value.reshape(-1).tolist(), strict=True):
            if self.vocab.cls not in ids:
                ids.append(token)
        self.on_step([self._delta(n) for n in range(len(self.ids))])

    def _delta(self, n: int) -> str:
        text = decode_until_end(self.vocab, self.ids[n][self.sent[n]:])
        if text.endswith("\ufffd"):
            return ""
        self.sent[n] = len(self.ids[n])
        return text

    def end(self) -> None:
        self.prompt_seen = False  # a slide (`continue_ids`) calls generate again, which puts its context first


def print_stream(deltas: list[str]) -> None:
    print(deltas[0], end="", flush=True)


class _WithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, where it has one (no "default: None" for a flag or an unset seed)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default in (None, False, "") else super()._get_help_string(action)


def parser(prog: str = "sample") -> argparse.ArgumentParser:
    """The command line of `gpt-novel sample` and tools/sample.py (the docs' commands are checked against it)."""
    parser = argparse.ArgumentParser(prog=prog, description="Continue a novel from a prompt.",
                                     formatter_class=_WithDefaults)
    parser.add_argument("model_dir", metavar="HF_DIR", help="a folder written by tools/consolidate.py")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default="", help="the text to continue (empty: start a new chapter)")
    source.add_argument("--prompt-file", type=Path, help="read the prompt from a file in any encoding prepare "
                        "reads (UTF-8/16, GBK, GB18030, Big5 …)")
    parser.add_argument("--new-chapter", action="store_true", help="start the prompt as a new chapter ([MASK])")
    defaults = SamplingOptions()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="tokens to add; past the model's context, generation slides over it")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="sample from the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="… and from the smallest set this likely")
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                        help="1: none; above 1 discourages repeating the context")
    parser.add_argument("--num-samples", type=int, default=1, help="continuations, each different")
    parser.add_argument("--seed", type=int, help="the same seed gives the same text")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--stream", action="store_true", help="print tokens as they come (one sample)")
    return parser


def main(argv: list[str] | None = None, prog: str = "sample") -> int:
    """`gpt-novel sample` and tools/sample.py."""
    args = parser(prog).parse_args(argv)
    try:
        prompt = _read_prompt(args.prompt_file, prog) if args.prompt_file else args.prompt
        if lone := lone_surrogate(prompt):  # a byte that is not UTF-8 in argv (surrogateescape); printing it fails
            raise UserError(f"--prompt holds a lone surrogate ({lone}), which is not text (a byte that is not UTF-8? "
                            "--prompt-file reads any encoding)")
        options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                  args.repetition_penalty, args.num_samples, args.seed, args.new_chapter)
        _check(options, args.stream)
        model, vocab = load(args.model_dir, args.device, args.dtype)
        _warn_unknown(vocab, prompt, prog)
        streamer = DraftStreamer(vocab, 1, print_stream) if args.stream else None
        if args.stream:
            print(prompt, end="", flush=True)
        texts = continue_text((model, vocab), prompt, options, streamer=streamer)
        if args.stream:
            print(flush=True)
    except (UserError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if not args.stream:
        for n, text in enumerate(texts, 1):
            if len(texts) > 1:
                print(f"--- sample {n} ---")
            print(prompt + text)
    return 0


def _read_prompt(path: Path, prog: str) -> str:
    text, warnings = ingest.read_text(path)
    for line in warnings:
        print(f"{prog}: warning: {line}", file=sys.stderr)
    return text


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds a surrogate only alone: a pair decodes to one character


def lone_surrogate(text: str) -> str | None:
    """The text's first lone surrogate, escaped ("\\ud800"), else None: JSON's "\\ud800" and a command-line byte that
    is not UTF-8 (Python's surrogateescape) make one, and the text then fails where it is encoded, not where it came
    in (tools/sample.py, gpt-novel serve)."""
    found = _LONE_SURROGATE.search(text)
    return f"\\u{ord(found.group()):04x}" if found else None


def _warn_unknown(vocab: Vocab, prompt: str, prog: str) -> None:
    """The model never saw these characters: say so, rather than continue from [UNK]s the user cannot see."""
    unknown = vocab.unknown_chars(prompt)
    if unknown:
        print(f"{prog}: warning: {unknown_line(unknown)}", file=sys.stderr)


def unknown_line(unknown: list[str]) -> str:
    """What to tell the user of the prompt's characters the vocabulary lacks (tools/sample.py, gpt-novel serve)."""
    shown = " ".join(repr(ch) if ch.isspace() else ch for ch in unknown[:40])
    more = f" (and {len(unknown) - 40} more)" if len(unknown) > 40 else ""
    return (f"{len(unknown)} character(s) of the prompt are not in the model's vocabulary and become [UNK]: "
            f"{shown}{more}")


def _check(options: SamplingOptions, stream: bool) -> None:
    if options.max_new_tokens < 1 or options.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    if options.temperature < 0 or not 0 < options.top_p <= 1 or options.top_k < 0 or options.repetition_penalty <= 0:
        raise UserError("need --temperature ≥ 0, 0 < --top-p ≤ 1, --top-k ≥ 0, --repetition-penalty > 0")
    if stream and options.num_samples > 1:
        raise UserError("--stream prints one sample; use --num-samples 1")
