"""`gpt-novel prepare`: novel files → tokenizer + WebDataset shards + manifest + report, written atomically.

The work runs as the steps of `data/stages.py` over partitions of the input, in a work directory next to the
output (`.NAME.work`, or --work-dir): on one machine all of them in order here (`--step all`, with --workers
processes), on a cluster one step at a time as Slurm jobs (`slurm/prepare.sh` runs `--step STEP --task I --tasks N`).
Each step's output is kept when complete, so a run that was killed, or a Slurm task that failed, is finished by
running the same command again. The output appears under its final name only once complete: it is built in a
hidden sibling directory and renamed. One prepare at a time publishes an output: the local run holds a lock file
next to it from before reading the inputs until the output is published; on a cluster the plan and finish steps
take it (the steps between write only their own partitions' outputs, atomically).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt_novel import __version__, lock
from gpt_novel.config import PrepareConfig
from gpt_novel.data import ingest, segment, shards, stages
from gpt_novel.data.dataset import FORMAT, MANIFEST, REPORT, Manifest, TokenizerInfo
from gpt_novel.data.stages import Plan
from gpt_novel.data.workdir import WorkDir, owner_tag, replace_dir, write_json
from gpt_novel.data.workers import LazyPool
from gpt_novel.errors import UserError, free_bytes

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run(cfg: PrepareConfig) -> dict | None:
    """`--step all` (the whole pipeline here; returns the report) or one step of it. Raises UserError before any
    work on bad input, and when another prepare is publishing the same output."""
    out = Path(cfg.out)
    with _disk_full_is_a_user_error(out):
        if cfg.step == "all":
            with lock.exclusive(_sibling(out, "lock"), f"--out {out}"):
                _remove_leftovers(out)
                return _run_all(cfg, out)
        return _run_step(cfg, out)


def _run_all(cfg: PrepareConfig, out: Path) -> dict | None:
    start = time.time()
    work = WorkDir(_work_dir(cfg, out))
    with LazyPool(cfg.workers) as pool:
        plan = _plan(cfg, out, work, pool)
        if plan is None:
            return json.loads((out / REPORT).read_text(encoding="utf-8"))
        parts, cache = list(range(len(plan.partitions))), _cache_root(cfg)
        stages.read(plan, work, parts, pool, cache)
        stages.check_before_segmenting(plan, work, stages.merge(plan, work))
        stages.segment_step(plan, work, parts, pool, cache)
        stages.vocab_step(plan, work, cfg.tokenizer if cfg.pretrained else None)
        stages.encode(plan, work, parts, pool)
    report = _finish(plan, work, out, start)
    if not cfg.keep_work:
        shutil.rmtree(work.root, ignore_errors=True)
    return report


def _run_step(cfg: PrepareConfig, out: Path) -> None:
    """One step, as a Slurm job runs it: partition steps do every tasks-th partition from --task."""
    work = WorkDir(_work_dir(cfg, out))
    with LazyPool(cfg.workers) as pool:
        if cfg.step == "plan":
            with lock.exclusive(_sibling(out, "lock"), f"--out {out}"):
                plan = _plan(cfg, out, work, pool)
            if plan is not None:
                print(plan_line(plan, cfg.partition_size, work.root))
                if warning := idle_tasks_warning(plan, cfg.tasks):
                    print(f"warning: {warning}", file=sys.stderr)
            return
        plan = _planned(cfg, work)
        parts = stages.task_partitions(len(plan.partitions), cfg.task, cfg.tasks)
        if cfg.step in stages.PARTITION_STEPS:
            print(task_line(cfg, plan, parts))
        if cfg.step == "read":
            stages.read(plan, work, parts, pool, _cache_root(cfg))
        elif cfg.step == "merge":
            stages.check_before_segmenting(plan, work, stages.merge(plan, work))
        elif cfg.step == "segment":
            stages.segment_step(plan, work, parts, pool, _cache_root(cfg))
        elif cfg.step == "vocab":
            stages.vocab_step(plan, work, cfg.tokenizer if cfg.pretrained else None)
        elif cfg.step == "encode":
            stages.encode(plan, work, parts, pool)
    if cfg.step == "finish":
        with lock.exclusive(_sibling(out, "lock"), f"--out {out}"):
            _remove_leftovers(out)
            _finish(plan, work, out, None)
        if not cfg.keep_work:
            shutil.rmtree(work.root, ignore_errors=True)


def _plan(cfg: PrepareConfig, out: Path, work: WorkDir, pool: LazyPool) -> Plan | None:
    """List and hash the inputs and save the plan; None when `out` already holds this very dataset."""
    found = ingest.find_inputs(cfg.inputs, exclude=_is_ours(out, work.root))
    _warn_found(found)
    plan = stages.make_plan(cfg, found, pool)
    if _check_out_dir(out, plan.fingerprint, cfg.force) == "same":
        print(f"{out} already holds this dataset (same inputs and options); nothing to do (--force rebuilds it)")
        return None
    plan.save(work)
    return plan


def plan_line(plan: Plan, partition_size: str, root: Path) -> str:
    parts = len(plan.partitions)
    return (f"plan: {plan.input_files()} file(s), {plan.input_bytes() / 1e6:.1f} MB, in {parts} "
            f"partition(s) of up to --partition-size {partition_size}; work directory {root}")


def idle_tasks_warning(plan: Plan, tasks: int) -> str | None:
    """More Slurm tasks (the plan step's --tasks) than partitions leave some with nothing to do: said with the
    partition size that would give each one work (files are never split, so a large file may still stand alone)."""
    parts = len(plan.partitions)
    if tasks <= parts:
        return None
    size = plan.input_bytes()
    return (f"{parts} partition(s) for {tasks} tasks: {tasks - parts} task(s) of each array will have nothing to "
            f"do; --partition-size {math.ceil(size / tasks / 1e5) / 10}MB would give each task work (in "
            "PREPARE_ARGS; a file is never split)")


def task_line(cfg: PrepareConfig, plan: Plan, parts: list[int]) -> str:
    """What a Slurm array task will do: its files, or that it has none and why (more tasks than partitions)."""
    step, total = f"{cfg.step}: task {cfg.task} of {cfg.tasks}", len(plan.partitions)
    if not parts:
        return (f"{step} has nothing to do: the plan has {total} partition(s) for {cfg.tasks} tasks (a partition "
                f"is up to --partition-size {cfg.partition_size} of input; a smaller one gives every task work)")
    return (f"{step}: {stages.files_in(plan, parts)} of {plan.input_files()} file(s), "
            f"partition(s) {stages.ranges(parts)} of {total}")


def _planned(cfg: PrepareConfig, work: WorkDir) -> Plan:
    """The saved plan, which must have been made with these options."""
    plan = Plan.load(work)
    if plan.options != cfg.output_options():
        changed = sorted(k for k in plan.options if plan.options[k] != cfg.output_options().get(k))
        raise UserError(f"{work.root} was planned with other options ({', '.join(changed)}): give the same "
                        "options to every step, or run the plan step again")
    return plan


def _work_dir(cfg: PrepareConfig, out: Path) -> Path:
    return Path(cfg.work_dir) if cfg.work_dir else _sibling(out, "work")


def _cache_root(cfg: PrepareConfig) -> Path | None:
    return None if cfg.no_cache else Path(cfg.cache_dir) if cfg.cache_dir else segment.default_cache_dir()


def _finish(plan: Plan, work: WorkDir, out: Path, start: float | None) -> dict:
    """The last step: build the data directory from the work directory and publish it."""
    tmp = _partial_dir(out, owner_tag())
    try:
        splits, report = stages.finish(plan, work, tmp)
        vocab_info = work.info("vocab")
        manifest = Manifest(
            format=FORMAT, created_by=f"gpt-novel {__version__}", fingerprint=plan.fingerprint,
            seq_len=plan.options["seq_len"], sample_len=plan.options["seq_len"] + 1,
            dtype=str(shards.dtype_for(vocab_info["vocab_size"])), sample_field=shards.SAMPLE_FIELD,
            seed=plan.options["seed"], packing=shards.PACKING_RULE,
            tokenizer=TokenizerInfo("tokenizer", plan.options["tokenizer"], vocab_info["vocab_size"],
                                    plan.options["to_simplified"]),
            partitions=len(plan.partitions), args={"inputs": [d["path"] for p in plan.partitions for d in p],
                                                   **plan.options},
            inputs=[d for p in plan.partitions for d in p], splits=splits)
        report["totals"].update(tokens=sum(s.tokens for s in splits.values()),
                                samples={k: v.samples for k, v in splits.items()})
        if start is not None:
            report["totals"]["seconds"] = round(time.time() - start, 1)
        write_json(tmp / REPORT, report)
        manifest.write(tmp)  # last: a directory with a manifest is complete
        replace_dir(tmp, out, _sibling(out, f"old-{owner_tag()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_summary(report, manifest, out)
    return report


def _warn_found(found: ingest.Found) -> None:
    for path, reason in found.refused:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    for line in found.warnings:
        print(f"warning: {line}", file=sys.stderr)


def print_summary(report: dict, manifest: Manifest, out: Path) -> None:
    rows = [("file", "encoding", "script", "chapters", "chars in", "kept", "removed (top reasons)", "[UNK]")]
    refused = []
    for f in report["files"]:
        name = Path(f["path"]).name
        if f["status"] != "ok":
            refused.append(f"REFUSED {name}: {f['reason']}")
            continue
        top = sorted(f["chars_removed"].items(), key=lambda kv: -kv[1])[:3]
        rows.append((name, f["encoding"], f["script"], str(f["chapters"]), f"{f['chars_in']:,}", f"{f['chars_kept']:,}",
                     ", ".join(f"{k} {v:,}" for k, v in top), f"{f['unk']:,}"))
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths, strict=True)).rstrip())
    refused += [f"REFUSED {p['path']}: {p['reason']}" for p in report["paths_refused"]]
    for line in refused:
        print(line)
    t = report["totals"]
    splits = "; ".join(f"{k}: {v.chapters} chapters, {v.samples:,} samples, {len(v.shards)} shard(s)"
                       for k, v in manifest.splits.items())
    print(f"\n{t['files_ok']} file(s) used, {t['files_refused'] + t['paths_refused']} refused; "
          f"{t['chapters']} chapters, {t['chars_kept']:,} of {t['chars_in']:,} characters kept; {t['tokens']:,} tokens "
          f"({t['tokenizer']} vocabulary of {t['vocab_size']:,}, {t['unk']:,} [UNK]); seq len {manifest.seq_len}")
    took = f" in {t['seconds']} s" if "seconds" in t else ""
    print(f"{splits}\nwrote {out}/ (manifest.json, report.json, tokenizer/, train/, val/){took}")
    if warning := unk_warning(t):
        print(f"warning: {warning}", file=sys.stderr)


UNK_SHARE = 0.01  # more [UNK] than this, and the tokenizer does not fit the corpus: said after the summary


def unk_warning(totals: dict) -> str | None:
    """A line when more than UNK_SHARE of the tokens are [UNK] (a --tokenizer DIR that lacks the corpus's
    characters), naming the characters it lacks most."""
    if not totals["tokens"] or totals["unk"] <= UNK_SHARE * totals["tokens"]:
        return None
    top = "、".join(f"{ch} ({n:,})" for ch, n in totals.get("unknown_chars", []))
    return (f"{totals['unk']:,} of {totals['tokens']:,} tokens ({totals['unk'] / totals['tokens']:.1%}) are [UNK]: the "
            f"{totals['tokenizer']} tokenizer lacks characters of this corpus, most often {top}. The model can "
            "neither learn nor write them; the default tokenizer, built from the corpus, has every character")


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# --- the output directory ---------------------------------------------------------------------------------------

def _check_out_dir(out: Path, fingerprint: str, force: bool) -> str:
    """'new' (absent or empty), 'replace' (ours, --force) or 'same'; anything else is refused before any work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    manifest = out / MANIFEST
    if not manifest.exists():
        raise UserError(f"--out {out} is not empty and holds no gpt-novel dataset; choose a new or empty directory")
    try:
        old = Manifest.from_json(json.loads(manifest.read_text(encoding="utf-8"))).fingerprint
    except ValueError:  # damaged, or of another format: never "the same"
        old = None
    if force:
        return "replace"
    if old == fingerprint:
        return "same"
    raise UserError(f"--out {out} already holds a different dataset (other inputs or options); "
                    "pass --force to replace it or choose another directory")


def _sibling(out: Path, suffix: str) -> Path:
    """A hidden name next to the output, owned by it: `.NAME.lock`, `.NAME.partial-OWNER`, `.NAME.old-OWNER`."""
    out = _absolute(out)
    return out.parent / f".{out.name}.{suffix}"


def _absolute(out: Path) -> Path:
    """Absolute, links not resolved: `--out data/` and `--out ./data` name the same lock and build directories."""
    return Path(os.path.abspath(out))


def _leftover_names(out: Path) -> re.Pattern:
    """Names of this output's build directories (no dot inside the owner: `.a.b.partial-…` belongs to `a.b`)."""
    return re.compile(rf"\.{re.escape(_absolute(out).name)}\.(partial|old)-[\w-]*\d+(-[0-9a-f]{{16}})?")


def _is_ours(out: Path, work: Path) -> Callable[[Path], bool]:
    """Whether a path is the output, its lock, its work directory or one of its build directories: never read as
    input."""
    name, parent, leftovers = _absolute(out).name, os.path.realpath(_absolute(out).parent), _leftover_names(out)
    work_dir = os.path.realpath(work)

    def ours(path: Path) -> bool:
        named = path.name in (name, f".{name}.lock") or leftovers.fullmatch(path.name) is not None
        in_place = named and os.path.realpath(path.absolute().parent) == parent
        return in_place or os.path.realpath(path) == work_dir

    return ours


def _remove_leftovers(out: Path) -> None:
    """Build directories of earlier runs into this output, which died: with the lock held, none is still in use.
    An old copy set aside just before a publish that never happened is the dataset itself: it is put back."""
    parent, pattern = _absolute(out).parent, _leftover_names(out)
    for path in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and match.group(1) == "old" and not os.path.lexists(out):
            print(f"warning: putting back {out}, set aside by a prepare that was interrupted", file=sys.stderr)
            path.rename(out)
        elif match:
            print(f"warning: removing {path}, left by a prepare that was interrupted", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)


def _partial_dir(out: Path, tag: str) -> Path:
    """A fresh hidden sibling to build in, named for this run alone."""
    tmp = _sibling(out, f"partial-{tag}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def _disk_full_is_a_user_error(out: Path) -> Iterator[None]:
    """A full disk or quota is for the user to fix: one line naming the path and the space left, no traceback."""
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        path = Path(e.filename or out)
        raise UserError(f"disk full while writing {path}: {free_bytes(path):,} bytes free") from None
