"""The run's plan: everything the trainer runs that is derived rather than given, decided in one place.

`build` turns the parsed config (frozen), the files it names (`Inputs`: the data, the DeepSpeed JSON, the
--init-from folder), the launcher's world size and the checkpoint to resume into a `Plan`: the model's shape and
positions, the global batch and accumulation, the DeepSpeed config handed to DeepSpeed, the ZeRO stage, the
learning-rate plan, whether the resume is elastic, and the line that ends a run with nothing left to train. Every
start-up check runs here, before any process group: a bad value is one line, exit status 2.

It runs twice at most, the same way both times. Before the process group, on the newest checkpoint whose files
have their recorded sizes. Once the ranks can share the sha256 work (`verified`), again if that checkpoint's digests
fail and an older one is the one to load: the fallback goes through every check the first one did.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from gpt_novel import checkpoint, resume, schedule
from gpt_novel.config import SHAPE_DEFAULTS, TrainConfig, deepspeed_json
from gpt_novel.data.dataset import Dataset
from gpt_novel.errors import UserError
from gpt_novel.pretrained import InitFolder
from gpt_novel.resume import ResumePoint


@dataclass(frozen=True)
class Inputs:
    """What the config names on the file system, read once by every rank before any process group starts."""

    dataset: Dataset
    deepspeed: str
    """the DeepSpeed JSON DeepSpeed is given: --deepspeed, or under `accelerate launch` the one its YAML names"""
    ds_json: dict
    """its contents, as read"""
    init: InitFolder | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What the trainer runs. `config` is the parsed config with the derived values filled in (shape, positions,
    global batch, accumulation, the DeepSpeed JSON used): what checkpoints record in config.yaml."""

    parsed: TrainConfig
    inputs: Inputs
    config: TrainConfig
    world_size: int
    ds_config: dict
    """the DeepSpeed config handed to DeepSpeed, its "auto" batch values filled from `config`"""
    zero_stage: int
    resume: ResumePoint | None
    schedule: dict
    """the learning-rate plan (`schedule.plan`)"""
    elastic: bool
    """the checkpoint resumed was saved with another world size or ZeRO stage: DeepSpeed's universal load"""
    finished: str | None
    """the line that ends a run already at or past --max-steps, else None"""

    @property
    def dataset(self) -> Dataset:
        return self.inputs.dataset


def start(cfg: TrainConfig, world_size: int, warn=lambda line: None) -> Plan:
    """The plan before any process group: the checkpoint chosen by its files' sizes."""
    inputs = read_inputs(cfg)
    return build(cfg, inputs, world_size, resume.candidate(cfg, warn=warn, check=checkpoint.problem))


def verified(plan: Plan, warn) -> Plan:
    """Collective: the checkpoint to load chosen again by every file's sha256 (split among the ranks); when the one
    planned fails and an older one is loaded instead, the plan built again for it. `warn` says what was skipped."""
    point = resume.candidate(plan.parsed, warn=warn, check=checkpoint.verify)
    if (point and point.path) == (plan.resume and plan.resume.path):
        return plan
    return build(plan.parsed, plan.inputs, plan.world_size, point)


def read_inputs(cfg: TrainConfig) -> Inputs:
    """The file-system half of the checks: the data directory (loaded, with its tokenizer), the DeepSpeed JSON, a
    --resume path and an --init-from folder (checked against the data); one line for the first problem."""
    if not cfg.data:
        raise UserError("--data DATA_DIR is required (a directory made by `gpt-novel prepare`)")
    dataset = Dataset.load(cfg.data)
    deepspeed, ds_json, warning = _deepspeed_used(cfg)
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_dir():
        raise UserError(f"--resume must be auto, never or a checkpoint directory; {cfg.resume} does not exist")
    init = InitFolder.load(cfg.init_from) if cfg.init_from else None
    if init is not None:
        init.check_data(dataset)
    warnings = tuple(w for w in (warning, seq_len_warning(cfg, dataset)) if w)
    return Inputs(dataset, deepspeed, ds_json, init, warnings)


def seq_len_warning(cfg: TrainConfig, dataset: Dataset) -> str | None:
    """Data of another seq len than the config is sized for trains, but not in the time the preset promises (a
    step's cost grows at least with the seq len): said at start, with both ways out."""
    want, have = cfg.data_seq_len, dataset.seq_len
    if not want or want == have:
        return None
    cost = f"each step takes about {have / want:.0f}× as long" if have > want else "steps see less context"
    return (f"warning: the {cfg.preset} config is sized for data prepared with --seq-len {want}; {dataset.root} has "
            f"seq len {have}, so {cost}. Prepare it with --seq-len {want}, or pass --data-seq-len {have} if this is "
            "what you want")


def build(cfg: TrainConfig, inputs: Inputs, world_size: int, point: ResumePoint | None) -> Plan:
    """Every derived value, every check, for this checkpoint (None: a fresh start)."""
    global_batch = resume.kept_global_batch(point, cfg, world_size) if point is not None else cfg.global_batch_size
    config = dataclasses.replace(cfg, **_shape(cfg, inputs), **_batch(cfg, global_batch, world_size),
                                 deepspeed=inputs.deepspeed, init_from=str(inputs.init.path) if inputs.init else "")
    config.check(inputs.dataset)
    if point is not None:
        resume.check_compatible(point, config, inputs.dataset)
    ds_config = _filled(inputs.ds_json, config)
    zero_stage = stage_of(ds_config)
    elastic = point is not None and point.elastic(world_size, zero_stage)
    if elastic:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return Plan(cfg, inputs, config, world_size, ds_config, zero_stage, point, _schedule(config, point), elastic,
                resume.nothing_to_train(point, config) if point is not None else None)


def _shape(cfg: TrainConfig, inputs: Inputs) -> dict[str, int]:
    """The --init-from folder's architecture, else the flags' (or the preset's), else SHAPE_DEFAULTS; positions
    default to the data's seq len."""
    if inputs.init is not None:
        return inputs.init.shape(cfg)
    shape = {name: default if getattr(cfg, name) is None else getattr(cfg, name)
             for name, default in SHAPE_DEFAULTS.items()}
    return {**shape, "n_positions": cfg.n_positions or inputs.dataset.seq_len}


def _batch(cfg: TrainConfig, global_batch: int, world_size: int) -> dict[str, int]:
    """The global batch is the contract (it decides which samples each step trains on): a set one fixes the
    accumulation for this world size, refused when it does not divide; an unset one is micro batch × grad accum ×
    processes."""
    per_pass = cfg.micro_batch_size * world_size
    if not global_batch:
        return {"global_batch_size": per_pass * cfg.grad_accum, "grad_accum": cfg.grad_accum}
    if per_pass < 1 or global_batch % per_pass:
        raise UserError(f"--global-batch-size {global_batch} is not divisible by --micro-batch-size "
                        f"{cfg.micro_batch_size} × {world_size} process{'es' if world_size > 1 else ''} = "
                        f"{per_pass}: choose a micro batch size that divides it")
    return {"global_batch_size": global_batch, "grad_accum": global_batch // per_pass}


def _schedule(cfg: TrainConfig, point: ResumePoint | None) -> dict:
    """The learning-rate plan: the checkpoint's, re-planned from its step when --max-steps changed."""
    if point is None:
        return schedule.plan(cfg, None, 0, 1.0)
    saved = point.state.schedule or {"max_steps": point.saved_max_steps(), "decay_from": None}
    lrs = point.state.scheduler
    return schedule.plan(cfg, saved, point.step, lrs["_last_lr"][0] / lrs["base_lrs"][0])


# --- the DeepSpeed config -----------------------------------------------------------------------------------------

def _deepspeed_used(cfg: TrainConfig) -> tuple[str, dict, str | None]:
    """The DeepSpeed JSON this run gives DeepSpeed, so that checkpoints record it: --deepspeed, or under `accelerate
    launch` with DeepSpeed the JSON its YAML names (accelerate hands that one to DeepSpeed whatever --deepspeed
    says). Returns (path, contents, a warning when --deepspeed, the flag or the preset, named another config)."""
    asked = deepspeed_json(cfg.deepspeed)
    asked_config = read_ds_config(asked)
    if not accelerate_runs_deepspeed():
        return asked, asked_config, None
    used = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not used:
        raise UserError("the accelerate config sets DeepSpeed options inline: name a JSON in it with "
                        "deepspeed_config_file (as launch/zero*.yaml do), so that the run records what it uses")
    path = os.path.abspath(deepspeed_json(used))
    actual = read_ds_config(path)
    if actual == asked_config:
        return path, actual, None
    return path, actual, (
        f"warning: accelerate's config names the DeepSpeed config {used} (ZeRO-{stage_of(actual)}), which this run "
        f"uses and records; --deepspeed {cfg.deepspeed} (ZeRO-{stage_of(asked_config)}, from the flag or the preset) "
        f"is not used. Pass --deepspeed {used}, or launch with the accelerate config of the stage you want")


def accelerate_runs_deepspeed() -> bool:
    """Whether `accelerate launch` started this process with DeepSpeed (then it names the DeepSpeed JSON)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def read_ds_config(path: str) -> dict:
    """A DeepSpeed JSON config; one line when it is not one."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"DeepSpeed config {path} is unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"DeepSpeed config {path} must hold a JSON object")
    return config


def _filled(ds_json: dict, cfg: TrainConfig) -> dict:
    """The DeepSpeed JSON with its "auto" batch values taken from the run's config; an explicit value that disagrees
    is refused (accelerate and DeepSpeed would otherwise disagree about accumulation)."""
    ds = copy.deepcopy(ds_json)
    for key, value in (("train_micro_batch_size_per_gpu", cfg.micro_batch_size),
                       ("gradient_accumulation_steps", cfg.grad_accum), ("gradient_clipping", cfg.grad_clip),
                       ("train_batch_size", cfg.global_batch_size)):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise UserError(f"the DeepSpeed config sets {key} = {ds[key]}, the run's config {value}; "
                            "use \"auto\" in the DeepSpeed JSON")
    return ds


def stage_of(ds_config: dict) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 without zero_optimization)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))
