"""`gpt-novel` command line: argument parsing only; each subcommand calls into its module."""

from __future__ import annotations

import argparse
import sys

from gpt_novel import __version__
from gpt_novel.config import prepare_config
from gpt_novel.errors import UserError


def _prepare_parser(sub) -> None:
    # `prepare` parses its own options, generated from PrepareConfig: `gpt-novel prepare --help` lists them.
    p = sub.add_parser("prepare", add_help=False, help="novel .txt files → tokenizer + WebDataset shards")
    p.add_argument("prepare_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from gpt_novel import prepare

    prepare.run(prepare_config(args.prepare_args))
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
    sub.add_parser("consolidate", add_help=False, help="a run's checkpoint → a Hugging Face model folder (gpt-novel "
                   "consolidate RUN_DIR HF_DIR --help); tools/consolidate.py is the same")
    sub.add_parser("sample", add_help=False, help="continue a novel from a prompt with a model folder (gpt-novel "
                   "sample HF_DIR --help); tools/sample.py is the same")
    sub.add_parser("serve", add_help=False, help="a web page that continues a novel with a consolidated model, "
                   "drafts streamed side by side (gpt-novel serve HF_DIR --help)")
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
    if argv[:1] == ["serve"]:  # the server parses its own options
        from gpt_novel import serve

        return serve.main(argv[1:])
    if argv[:1] == ["consolidate"]:
        from gpt_novel import consolidate

        return consolidate.main(argv[1:], prog="gpt-novel consolidate")
    if argv[:1] == ["sample"]:
        from gpt_novel import generate

        return generate.main(argv[1:], prog="gpt-novel sample")
    if argv[:1] == ["prepare"]:  # prepare's options are generated from its config, --help included
        args = argparse.Namespace(command="prepare", func=_run_prepare, prepare_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"gpt-novel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt-novel {args.command}: interrupted; nothing was published", file=sys.stderr)
        return 130
