"""Typed configs: dataclasses filled from an optional YAML file, then CLI overrides, then validated.

Validation happens here, before any work (or any process group) starts, and a bad value gets one line naming
the option, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from docstring_parser import parse_from_object
from jsonargparse import ArgumentError, ArgumentParser, DefaultHelpFormatter, get_loader

from gpt_novel.data.dataset import Dataset
from gpt_novel.data.vocab import DEFAULT_SPECIALS, PRETRAINED, ROLES, Vocab, given_kind, tokenizer_digest
from gpt_novel.errors import UserError
from gpt_novel.model_folder import check_tokenizer_folder

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(text: str | int, option: str) -> int:
    """'256MB', '64KiB', '1e6'-free plain integers → bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower().removesuffix("b") if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"{option} {text!r} is not a size (examples: 256MB, 64KiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


Step = typing.Literal["all", "plan", "read", "merge", "segment", "vocab", "encode", "finish"]


@dataclass
class PrepareConfig:
    """Options of `gpt-novel prepare`; see the README for what each does."""

    inputs: list[str] = field(default_factory=list)
    """.txt/.json/.jsonl files or directories (searched recursively)"""
    out: str = ""
    """output directory DATA_DIR (published atomically); required"""
    tokenizer: str = "bpe"
    """bpe: byte-pair merges of characters learnt from the corpus (Hugging Face tokenizers; the winner of
    benchmarks/tokenizer_choice.py); word: thulac words + characters; char: one token per character; or the PATH of
    a Hugging Face tokenizer folder (a model folder will do): encode with it, no vocabulary built"""
    special_tokens: str | None = None
    """with --tokenizer PATH: its tokens for NEWLINE,END,START,PAD,UNK (a newline, a chapter's end and start,
    padding, unknown characters); unset: [SEP],[CLS],[MASK],[PAD],[UNK], which a BERT-style vocabulary has"""
    vocab_size: int | None = None
    """vocabulary size including 5 special tokens; unset: 12000 for bpe (more for a corpus of over 8,995 distinct
    characters: 3,000 merges beyond them), 50000 for word and char"""
    seq_len: int = 1024
    """tokens per training sample (samples store seq_len + 1)"""
    val_ratio: float = 0.01
    """share of chapters held out for validation (at least one chapter; 0 for none)"""
    seed: int = 1234
    """seed of the train/val split"""
    shard_size: str = "256MB"
    """target shard size, e.g. 256MB, 64MiB, 100000"""
    partition_size: str = "32MB"
    """input bytes per partition, the unit of restartable work and of packing; part of what makes the output,
    unlike --workers and --tasks"""
    workers: int = 0
    """processes for cleaning and segmentation; 0: all cores"""
    to_simplified: bool = False
    """convert traditional characters to simplified (OpenCC t2s)"""
    cache_dir: str | None = None
    """cache of cleaned files and segmentations; unset: ~/.cache/gpt-novel"""
    no_cache: bool = False
    """do not read or write the cache"""
    force: bool = False
    """replace DATA_DIR if it holds another gpt-novel dataset"""
    work_dir: str | None = None
    """where the steps keep their outputs until DATA_DIR is published; unset: .DATA_DIR.work next to it (on a
    cluster, a shared file system)"""
    keep_work: bool = False
    """keep the work directory after publishing (else it is removed)"""
    step: Step = "all"
    """run one step (what slurm/prepare.sh does): plan, then read, merge, segment, vocab, encode, finish; all: each
    in order"""
    task: int = 0
    """with --tasks N: this task does partitions TASK, TASK+N, …"""
    tasks: int = 1
    """number of tasks sharing a partition step"""

    # Options that change the bytes of the output; the rest (workers, cache, force, work dir, steps) never do.
    OUTPUT_OPTIONS: typing.ClassVar = ("tokenizer", "vocab_size", "seq_len", "val_ratio", "seed", "shard_size",
                                       "partition_size", "to_simplified")
    STEPS: typing.ClassVar = typing.get_args(Step)

    def validate(self) -> PrepareConfig:
        if not self.inputs:
            raise UserError("give at least one input file or directory")
        if not self.out:
            raise UserError("--out DATA_DIR is required")
        if self.pretrained and not Path(self.tokenizer).is_dir():
            raise UserError(f"--tokenizer must be bpe, word, char or a Hugging Face tokenizer folder; {self.tokenizer} "
                            "is none of them")
        if self.pretrained:  # before anything parses its files: a hostile one is one line, not a traceback
            check_tokenizer_folder(Path(self.tokenizer), f"--tokenizer {self.tokenizer}")
        if self.pretrained and given_kind(self.tokenizer) != PRETRAINED:
            ours = Vocab.load(self.tokenizer)
            if ours.to_simplified != self.to_simplified:
                raise UserError(f"--tokenizer {self.tokenizer} was made with --to-simplified "
                                f"{str(ours.to_simplified).lower()}: give the same")
        if self.special_tokens is not None and (not self.pretrained or len(self.specials()) != 5):
            raise UserError("--special-tokens goes with --tokenizer PATH and names five tokens: NEWLINE,END,START,PAD,"
                            f"UNK, not {self.special_tokens!r}")
        if self.vocab_size is not None:
            _in_range("--vocab-size", self.vocab_size, 16, 4_000_000)
        _in_range("--seq-len", self.seq_len, 8, 65536)
        if not 0 <= self.val_ratio <= 0.5:
            raise UserError(f"--val-ratio {self.val_ratio} is out of range (0 to 0.5)")
        if self.workers == 0:
            self.workers = default_workers()
        _in_range("--workers", self.workers, 1, 1024)
        if parse_size(self.shard_size, "--shard-size") < 1000:
            raise UserError(f"--shard-size {self.shard_size} is too small (at least 1KB)")
        if parse_size(self.partition_size, "--partition-size") < 1000:
            raise UserError(f"--partition-size {self.partition_size} is too small (at least 1KB)")
        if self.step not in self.STEPS:
            raise UserError(f"--step must be one of {', '.join(self.STEPS)}, not {self.step!r}")
        _in_range("--tasks", self.tasks, 1, 1_000_000)
        _in_range("--task", self.task, 0, self.tasks - 1)
        return self

    @property
    def pretrained(self) -> bool:
        """--tokenizer names a Hugging Face tokenizer folder (not bpe, word or char)."""
        return self.tokenizer not in ("word", "char", "bpe")

    def specials(self) -> dict[str, str] | None:
        """--special-tokens as role → token (None: the BERT-style names)."""
        if self.special_tokens is None:
            return None
        return dict(zip(ROLES, self.special_tokens.split(","), strict=False))

    def output_options(self) -> dict:
        """What shapes the output. A pretrained tokenizer counts by its files' digest, not its path."""
        options = {k: getattr(self, k) for k in self.OUTPUT_OPTIONS}
        if self.pretrained:
            options.update(tokenizer=given_kind(self.tokenizer), tokenizer_sha256=tokenizer_digest(self.tokenizer),
                           special_tokens=self.specials() or DEFAULT_SPECIALS)
        return options


def _in_range(option: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{option} {value} is out of range ({lo} to {hi})")


def field_parser(cls: type, prog: str, description: str = "", epilog: str = "",
                 positional: str | None = None) -> ArgumentParser:
    """One `--field-name` per field of the dataclass `cls`, its type, default and help taken from the field itself
    (the docstring under it). jsonargparse does the typing (YAML values and flags alike); we only name the flags
    with dashes, as the README does, and let a true/false flag stand alone (`--force` is `--force true`). The field
    named `positional` (a list) is taken from the bare arguments instead."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, exit_on_error=False,
                            formatter_class=_HelpFormatter)
    parser.add_argument("--config", metavar="YAML", help="defaults from a YAML file (keys: the option names, with "
                        "_ or -); flags win over it; may be given more than once")
    docs = {p.arg_name: p.description for p in parse_from_object(cls).params}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = hints[f.name]
        extra = {"nargs": "?", "const": True, "metavar": "true|false"} if kind is bool else {}
        if f.name == positional:
            parser.add_argument(f.name, nargs="*", type=str, metavar=f.name.upper().removesuffix("S"),
                                default=default, help=docs.get(f.name))
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=default,
                            help=docs.get(f.name) or " ", **extra)
    return parser


def parse_config(cls: type, argv: list[str], prog: str, description: str = "", epilog: str = "",
                 positional: str | None = None):
    """Defaults ← each --config YAML in turn ← flags, typed; a bad value or unknown key is one UserError line. The
    files become the parser's defaults, so `--config tiny --help` shows the preset's values."""
    configs, flags = _split_configs(argv)
    _check_flag_values(flags)
    parser = field_parser(cls, prog, description, epilog, positional)
    names = [f.name for f in dataclasses.fields(cls)]
    for path in configs:
        loaded = _parsed(parser.parse_path, path, where=f"--config {path}: ")
        parser.set_defaults(**{name: loaded[name] for name in names})
    namespace = _parsed(parser.parse_args, flags)
    return cls(**{name: namespace[name] for name in names})


def _parsed(parse, args, where: str = ""):
    try:
        return parse(args)
    except ArgumentError as e:
        raise UserError(where + _one_line(str(e))) from None


def _split_configs(argv: list[str]) -> tuple[list[str], list[str]]:
    """The --config values of a command line (checked to exist) and the other arguments."""
    configs, rest, args = [], [], iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            path = arg.removeprefix("--config=") if "=" in arg else next(args, "")
            if not Path(path).is_file():
                raise UserError(f"--config {path}: no such file")
            _check_config_file(path)
            configs.append(path)
        else:
            rest.append(arg)
    return configs, rest


MAX_CONFIG_BYTES = 2**20  # a config holds a few dozen `option: value` lines; a bigger file is not one
MAX_CONFIG_VALUES = 100_000


def _check_config_file(path: str) -> None:
    """Refuse a --config file that is too big, not UTF-8 or expands too far, in one line, before jsonargparse
    reads it (it would give a UnicodeDecodeError traceback, or expand aliases without bound)."""
    size = Path(path).stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"--config {path}: {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,} (is it "
                        f"the right file?)")
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--config {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    _check_yaml_size(text, f"--config {path}")


def _check_yaml_size(text: str, where: str) -> None:
    """Refuse YAML that expands to more than MAX_CONFIG_VALUES values. jsonargparse walks and copies the expanded
    tree, so nested aliases (a "billion laughs": 9 levels of 9) ran for minutes into gigabytes. Loading alone is
    cheap (an alias shares its node), so load as jsonargparse does, then count with a budget. Aliases themselves
    stay allowed (`min_lr: *lr` is harmless): only the expansion costs."""
    try:
        value = get_loader("yaml")(text)
    except (yaml.YAMLError, RecursionError):  # not YAML: jsonargparse says so in its own line (or takes a string)
        return
    if _more_values_than(value, MAX_CONFIG_VALUES):
        raise UserError(f"{where}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases nested too "
                        f"deeply?)")


def _check_flag_values(flags: list[str]) -> None:
    """jsonargparse reads each flag's value as YAML too (`--inputs '[a, b]'`): the same bound as a file's."""
    for before, arg in zip(["", *flags], flags, strict=False):
        option, _, value = arg.partition("=") if arg.startswith("--") else (before, "", arg)
        if value:  # `--flag` alone has none; `--flag=VALUE` and `--flag VALUE` do
            _check_yaml_size(value, option or "an argument")


def _more_values_than(value: object, budget: int) -> bool:
    """Whether `value`, every alias expanded, holds more than `budget` keys, items and scalars; it stops as soon as
    it does, so an expansion of billions (or a recursive alias, which never ends) costs `budget` steps."""
    stack, count = [value], 0
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return count > budget


def prepare_config(argv: list[str]) -> PrepareConfig:
    """Parse `prepare` arguments: INPUT… and any field as --field-name VALUE, checked."""
    return parse_config(PrepareConfig, argv, "gpt-novel prepare", PREPARE_DESCRIPTION, positional="inputs").validate()


PREPARE_DESCRIPTION = ("Read novels in any common Chinese encoding, clean them, split chapters, learn a byte-pair "
                       "vocabulary\n(or segment words with thulac: --tokenizer word), and write WebDataset shards, a "
                       "manifest and a report\ninto DATA_DIR.")


def load_config(cls: type, yaml_path: str | None, overrides: dict):
    """A config from a YAML file (e.g. a checkpoint's config.yaml), then values already typed by the caller."""
    config = parse_config(cls, ["--config", yaml_path] if yaml_path else [], cls.__name__)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _one_line(message: str) -> str:
    """jsonargparse's errors span lines ('Parser key "lr":\\n  Expected a <class 'float'>…'): one line, no class
    reprs, flags spelled as on the command line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    text = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, not \2", text)
    text = re.sub(r"Does not validate against any of the Union subtypes.*?Expected a <class '(\w+)'>.*Given value: "
                  r"(.*)", r"expected \1, not \2", text)
    text = re.sub(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", r"expected one of \1, not \2", text)
    text = re.sub(r"Option '(\w+)' is not accepted", r"unknown option '\1'", text)
    text = text.replace("Problems parsing config: ", "not valid YAML: ")
    text = re.sub(r"^Unexpected config: .*", "must hold a mapping of option: value", text)
    text = re.sub(r'Parser key "(\w+)":', lambda m: "--" + m.group(1).replace("_", "-") + ":", text)
    return text if len(text) <= 300 else text[:300] + "…"  # a value of 60,000 items is not repeated whole


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's line breaks (the preset list) while wrapping the options' help."""


SHAPE_DEFAULTS = {"n_layer": 2, "n_head": 4, "n_embd": 128}  # a model from scratch, unless a preset says otherwise


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; a preset YAML gives the defaults, flags override any field. Frozen once
    parsed: what is derived from it (shape, batch arithmetic, DeepSpeed config, resume point) is `plan.Plan`."""

    # where
    data: str = ""
    """the prepared data directory (made by `gpt-novel prepare`); required"""
    run_dir: str = ""
    """where checkpoints, metrics.jsonl and TensorBoard go; rerunning with the same one resumes; required"""
    # model (GPT-2)
    preset: str = "custom"
    """a name recorded with the run (the presets set it); it selects nothing: --config does"""
    init_from: str = ""
    """a Hugging Face GPT-2 folder to start from (tools/consolidate.py's or a downloaded one, safetensors): its
    architecture and weights; prepare the data with --tokenizer FOLDER"""
    n_layer: int | None = None
    """transformer blocks; unset: the --init-from folder's, else 2"""
    n_head: int | None = None
    """attention heads (must divide n_embd); unset: the --init-from folder's, else 4"""
    n_embd: int | None = None
    """hidden size; unset: the --init-from folder's, else 128"""
    n_positions: int = 0
    """longest context the model accepts; 0: the --init-from folder's, else the data's seq len"""
    data_seq_len: int = 0
    """the seq len (prepare's --seq-len) this config is sized for; the presets set it. Data of another seq len
    trains, with a warning at start saying what it costs; 0: any"""
    dropout: float = 0.1
    """dropout in [0, 1)"""
    activation_checkpointing: bool = False
    """recompute activations in backward: less memory, same gradients"""
    compile: bool = False
    """torch.compile the model (inductor)"""
    deterministic: bool = False
    """deterministic CUDA kernels, so a resumed run repeats an uninterrupted one bit for bit on a GPU (slower)"""
    # optimisation
    max_steps: int = 200
    """optimizer steps to train; raise it and rerun to train longer"""
    micro_batch_size: int = 8
    """sequences per process per forward pass"""
    grad_accum: int = 1
    """micro batches accumulated per optimizer step; derived from --global-batch-size when that is set"""
    global_batch_size: int = 0
    """sequences per optimizer step, kept when the number of processes changes (grad accum = it / (micro batch ×
    processes)); 0: micro batch × grad accum × processes, or the resumed checkpoint's"""
    lr: float = 3e-4
    """peak learning rate (after warmup)"""
    min_lr: float = 3e-5
    """learning rate at the end of the cosine decay"""
    warmup_steps: int = 100
    """linear warmup steps; must be below max steps"""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """gradient norm clipping"""
    deepspeed: str = "ds_configs/zero2.json"
    """a DeepSpeed JSON, or one of ours by name: zero1, zero2, zero3, zero3_offload (ds_configs/NAME.json from any
    directory); under `accelerate launch`: the one its YAML names"""
    seed: int = 1234
    """seed of the weights and of the data order"""
    num_workers: int = 1
    """DataLoader worker processes per rank"""
    # checkpoints
    save_every: int = 100
    """steps between checkpoints"""
    keep_last: int = 3
    """newest checkpoints kept (the best by val loss is kept besides)"""
    resume: str = "auto"
    """auto: the newest complete checkpoint of --run-dir; never: start over; or a checkpoint directory"""
    max_bad_steps: int = 5
    """stop after this many steps in a row with a non-finite loss or gradient"""
    # observability
    eval_every: int = 100
    """steps between validation evaluations"""
    eval_batches: int = 20
    """micro batches per rank in each evaluation"""
    overfit_evals: int = 3
    """warn when the val loss rose this many evaluations in a row while the train loss fell; 0: never"""
    sample_every: int = 500
    """steps between greedy samples written to the log"""
    sample_tokens: int = 48
    """tokens in each logged sample"""
    peak_flops: float = 0.0
    """peak FLOP/s per device for MFU; 0: from the GPU's name where known"""
    tensorboard: bool = True
    """write TensorBoard scalars and text to RUN_DIR/tensorboard"""
    progress: bool = True
    """show a progress bar (rank 0)"""
    log_all_ranks: bool = False
    """let every rank print its messages, not only rank 0"""
    log_samples: bool = False
    """debugging: append the (shard, index) of every sample each rank trains on to RUN_DIR/samples-rank<N>.jsonl"""

    def check(self, dataset: Dataset) -> None:
        """Check a resolved config (`plan.build` fills the shape, positions, global batch and accumulation) against
        itself and the data, without touching the file system; UserError on the first problem."""
        if not self.run_dir:
            raise UserError("--run-dir RUN_DIR is required")
        if self.preset == "finetune" and not self.init_from:
            raise UserError("the finetune preset starts from a trained model: give --init-from HF_DIR")
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_positions < dataset.seq_len:
            raise UserError(f"n_positions {self.n_positions} is shorter than the data's seq_len {dataset.seq_len}")
        if not 0 <= self.min_lr <= self.lr:
            raise UserError(f"min_lr {self.min_lr} must be between 0 and lr {self.lr}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout {self.dropout} must be in [0, 1)")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise UserError(f"--warmup-steps {self.warmup_steps} must be at least 0 and below --max-steps "
                            f"{self.max_steps}: lower it too (e.g. --warmup-steps {self.max_steps // 10})")
        if dataset.train_samples() < self.global_batch_size:
            raise UserError(f"{dataset.root} has {dataset.train_samples()} training samples, fewer than one "
                            f"optimizer step needs ({self.global_batch_size} = world size × micro batch × "
                            "accumulation)")


POSITIVE = ("n_layer", "n_head", "n_embd", "max_steps", "micro_batch_size", "grad_accum", "save_every", "keep_last",
            "eval_every", "max_bad_steps")


def train_config(argv: list[str]) -> TrainConfig:
    """Parse `train` arguments: --config PRESET (a name or a YAML file), then any field as --field-name VALUE."""
    return parse_config(TrainConfig, _with_preset_paths(argv), "gpt-novel train",
                        "Train GPT-2 on prepared shards with DeepSpeed: one process here; for several, run\n"
                        "`-m gpt_novel.train` with the same options under accelerate launch or torchrun.",
                        _presets_help())


# The presets, DeepSpeed and accelerate configs ship inside the package, so that a wheel or `pip install git+…` has
# them; the checkout's launch/ and ds_configs/ link to these files.
CONFIGS = Path(str(importlib.resources.files("gpt_novel") / "configs"))
PRESETS = CONFIGS / "presets"
DEEPSPEED_CONFIGS = CONFIGS / "deepspeed"
ACCELERATE_CONFIGS = CONFIGS / "accelerate"


def deepspeed_json(name: str) -> str:
    """A DeepSpeed JSON by path, else one of ours by name from any directory: `zero2`, `zero2.json` or the
    checkout's spelling `ds_configs/zero2.json`."""
    if Path(name).is_file():
        return name
    ours = DEEPSPEED_CONFIGS / f"{Path(name).stem}.json"
    if Path(name).parent in (Path(), Path("ds_configs")) and ours.is_file():
        return str(ours)
    names = ", ".join(p.stem for p in sorted(DEEPSPEED_CONFIGS.glob("*.json")))
    raise UserError(f"DeepSpeed config not found: {name} (ours, by name: {names})")


def presets() -> dict[str, str]:
    """Preset name → the first sentence of its YAML's leading comment."""
    return {p.stem: p.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").split(". ")[0]
            for p in sorted(PRESETS.glob("*.yaml"))}


def preset_values(name: str) -> dict:
    """The fields a shipped preset sets ({} for another name: a config file of the user's own, or none)."""
    path = PRESETS / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if name in presets() else {}


def _presets_help() -> str:
    accelerate = ", ".join(p.name for p in sorted(ACCELERATE_CONFIGS.glob("*.yaml")))
    return ("presets (--config NAME):\n" + "\n".join(f"  {line}" for line in presets().values()) +
            f"\n\nDeepSpeed configs (--deepspeed NAME): {DEEPSPEED_CONFIGS}/\naccelerate configs (accelerate launch "
            f"--config_file PATH): {ACCELERATE_CONFIGS}/{{{accelerate}}}")


def _with_preset_paths(argv: list[str]) -> list[str]:
    """`--config tiny` → the preset's YAML; a name that is neither a file nor a preset is refused with the list."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    out = []
    for arg, before in zip(argv, [None, *argv[:-1]], strict=True):
        if before == "--config" and not Path(arg).exists():
            if arg not in presets():
                raise UserError(f"--config {arg}: no such file or preset (presets: {', '.join(presets())})")
            arg = str(PRESETS / f"{arg}.yaml")
        out.append(arg)
    return out
