"""`gpt-novel` command line: argument parsing only; each subcommand calls into its module."""

from __future__ import annotations

import argparse
import sys

from gpt_novel import __version__
from gpt_novel.config import PrepareConfig
from gpt_novel.errors import UserError


def _prepare_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="novel .txt files → tokenizer + WebDataset shards",
        description="Read novels in any common Chinese encoding, clean them, split chapters, segment words with "
        "thulac, build a vocabulary and write WebDataset shards, a manifest and a report into DATA_DIR.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".txt/.json/.jsonl files or directories (searched recursively)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory (created atomically)")
    p.add_argument("--config", metavar="YAML", help="options from a YAML file (keys as below, with _ or -)")
    p.add_argument("--tokenizer", choices=("word", "char"), help="word: thulac words + characters (default); "
                   "char: one token per character")
    p.add_argument("--vocab-size", type=int, help="vocabulary size including 5 special tokens (default 50000)")
    p.add_argument("--seq-len", type=int, help="tokens per training sample (default 1024); samples store seq-len+1")
    p.add_argument("--val-ratio", type=float, help="share of chapters held out for validation (default 0.01, "
                   "at least one chapter; 0 for none)")
    p.add_argument("--seed", type=int, help="seed of the train/val split (default 1234)")
    p.add_argument("--shard-size", help="target shard size, e.g. 256MB (default), 64MiB, 100000")
    p.add_argument("--partition-size", help="input bytes per partition, the unit of restartable work and of "
                   "packing (default 32MB); part of what makes the output, unlike --workers and --tasks")
    p.add_argument("--workers", type=int, help="processes for cleaning and segmentation (default: all cores)")
    p.add_argument("--to-simplified", action="store_const", const=True, help="convert traditional characters "
                   "to simplified (OpenCC t2s)")
    p.add_argument("--cache-dir", help="cache of cleaned files and segmentations (default ~/.cache/gpt-novel)")
    p.add_argument("--no-cache", action="store_const", const=True, help="do not read or write the cache")
    p.add_argument("--force", action="store_const", const=True, help="replace DATA_DIR if it holds another dataset")
    p.add_argument("--work-dir", help="where the steps keep their outputs until DATA_DIR is published (default "
                   ".DATA_DIR.work next to it; on a cluster, a shared file system)")
    p.add_argument("--keep-work", action="store_const", const=True, help="keep the work directory after publishing "
                   "(else it is removed)")
    p.add_argument("--step", choices=PrepareConfig.STEPS, help="run one step (what slurm/prepare.sh does): plan, "
                   "then read, merge, segment, vocab, encode, finish; default all, in order")
    p.add_argument("--task", type=int, help="with --tasks N: this task does partitions TASK, TASK+N, … (default 0)")
    p.add_argument("--tasks", type=int, help="number of tasks sharing a partition step (default 1)")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from gpt_novel import prepare
    from gpt_novel.config import load_config

    overrides = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command")}
    cfg = load_config(PrepareConfig, args.config, overrides).validate()
    prepare.run(cfg)
    return 0


def _plot_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="plot a run's train/val loss to a PNG",
        description="Read RUN_DIR/metrics.jsonl and plot train loss and validation loss against tokens seen.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (holds metrics.jsonl)")
    p.add_argument("--out", metavar="PNG", help="output image (default RUN_DIR/loss.png)")
    p.set_defaults(func=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpt_novel import metrics

    out = metrics.plot_run(Path(args.run_dir), Path(args.out) if args.out else None)
    print(out)
    return 0


def _train_parser(sub) -> None:
    # The trainer parses its own options (every config field is a flag): `gpt-novel train --help` lists them.
    p = sub.add_parser("train", add_help=False, help="train GPT-2 on prepared shards (one process; for several use "
                       "accelerate launch or torchrun with -m gpt_novel.train)")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from gpt_novel import train

    return train.main(args.train_args)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity, bits per character and continuation quality of a model",
                       description="Held-out perplexity / bits per character on the val shards, and BLEU, ROUGE-L, "
                       "distinct-1/2 and repetition of continuations of K held-out chapters.")
    p.add_argument("model_dir", metavar="HF_DIR", help="a folder written by tools/consolidate.py")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="the prepared data (its val split is used)")
    p.add_argument("--chapters", type=int, default=8, help="held-out chapters to continue, K (default 8)")
    p.add_argument("--prompt-chars", type=int, default=64, help="characters of each chapter given as prompt, P")
    p.add_argument("--gen-chars", type=int, default=64, help="characters generated and compared, L")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", help="cpu, cuda … (default: cuda when available)")
    p.add_argument("--json", metavar="PATH", help="write the JSON here (default HF_DIR/eval.json)")
    p.add_argument("--model-card", action="store_true", help="add the results to HF_DIR/README.md")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from gpt_novel import evaluate

    return evaluate.run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-novel", description="Pretrain GPT-2 on Chinese novels.")
    parser.add_argument("--version", action="version", version=f"gpt-novel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _prepare_parser(sub)
    _train_parser(sub)
    _plot_parser(sub)
    _eval_parser(sub)
    sub.add_parser("launch", add_help=False, help="run torchrun or accelerate launch and exit with the trainer's "
                   "status (75 after a graceful stop); signals become a checkpoint and stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # everything after `train` belongs to the trainer, --help included
        return _run_train(argparse.Namespace(train_args=argv[1:]))
    if argv[:1] == ["launch"]:  # everything after `launch` is the launcher's command line
        from gpt_novel import launch

        return launch.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"gpt-novel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt-novel {args.command}: interrupted; nothing was published", file=sys.stderr)
        return 130
