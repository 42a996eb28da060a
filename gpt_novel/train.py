"""The training loop. Read it top to bottom: set-up, resume, then one optimizer step at a time.

    accelerate launch --config_file launch/zero2.yaml -m gpt_novel.train --config launch/presets/tiny.yaml \\
        --data data/ --run-dir runs/tiny
    torchrun --nproc_per_node 2 -m gpt_novel.train --config tiny --data data/ --run-dir runs/tiny
    gpt-novel train --config tiny --data data/ --run-dir runs/tiny          # one process

Rerunning the same command resumes from the newest complete checkpoint, also with another number of processes or
ZeRO stage (`resume.py`) or another --max-steps (`schedule.py`). Exit status: 0 when max_steps is reached (RUN_DIR/DONE
is written) or was reached before, 75 after SIGTERM/SIGUSR1 or when RUN_DIR/STOP appears (the step in flight finished
and a checkpoint was saved, or while starting nothing had trained yet: run the command again to go on), 1 when
training stopped on non-finite losses (the last good checkpoint is kept), 2 for a bad config. The STOP file is how a
batch script stops the trainer without signalling the launchers (slurm/train.sh); the trainer removes it once it has
stopped.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt_novel import checkpoint, faults, lock, metrics, parallel, schedule, versions
from gpt_novel import plan as planning
from gpt_novel import universal as universal_
from gpt_novel.checkpoint import TrainerState
from gpt_novel.config import TrainConfig, train_config
from gpt_novel.data.stream import ShardSet, StreamSpec, TrainStream, make_loader, val_batches
from gpt_novel.data.vocab import Vocab
from gpt_novel.errors import UserError, os_error_line
from gpt_novel.model import build_model, count_params, heldout_metrics, heldout_sums, param_groups
from gpt_novel.resume import ResumePoint

EXIT_BAD_STEPS = 1
STOP_FILE = "STOP"
STOP_POLL_S = 0.5  # a stat per step is not free on a network file system; twice a second is at once to a person
DONE_FILE = "DONE"
PROGRAM = "gpt-novel train"
SAY_LOAD_BYTES = 2 * 10**9


class _StopRequest:
    """SIGTERM, SIGUSR1 and RUN_DIR/STOP ask the trainer to stop.

    While it trains, a signal sets a flag and the file is looked for at most every STOP_POLL_S seconds (a file system
    call per step costs on a GPU, more so on a network file system); the loop finishes its optimizer step, saves and
    exits once any rank has seen either (the ranks agree in the step's one all-reduce). While it starts (`starting`:
    the digests, a universal conversion, the load) there is nothing new to save, so a request ends the job at once:
    the handler raises StopRequested in the main thread, and a thread that looks for the file delivers it the same
    way (`_thread.interrupt_main`)."""

    def __init__(self, stop_file: Path, poll_s: float = STOP_POLL_S):
        self.signal: int | None = None
        self.stop_file, self.poll_s, self._polled = stop_file, poll_s, -math.inf
        self._starting, self._file_seen = False, False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if self._starting:
            self._starting = False  # said once
            what = f"{STOP_FILE} file" if self._file_seen else signal.Signals(signum).name
            raise faults.StopRequested(f"stop requested ({what}) while starting, before any step: nothing new to "
                                       "save; rerun the same command to resume")

    @contextlib.contextmanager
    def starting(self):
        """Inside the block, a stop request ends the job at once (faults.StopRequested, exit status 75)."""
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_file, args=(done,), name="gpt-novel-stop-file", daemon=True)
        self._starting = True
        watcher.start()
        try:
            yield
        finally:
            self._starting = False
            done.set()
            watcher.join()

    def _watch_file(self, done: threading.Event) -> None:
        while not done.wait(self.poll_s):
            if self.stop_file.exists():
                self._file_seen = True
                _thread.interrupt_main(signal.SIGTERM)
                return

    def requested(self) -> bool:
        if self.signal is not None:
            return True
        now = time.monotonic()
        if now - self._polled < self.poll_s:
            return False
        self._polled = now
        return self.stop_file.exists()


def main(argv: list[str] | None = None, *, leave_after_training: bool = False) -> int:
    """The trainer; `leave_after_training` (a process of its own) ends the process once training has run."""
    argv = sys.argv[1:] if argv is None else argv
    rank, world = parallel.rank_from_env(), parallel.world_size_from_env()
    try:
        plan = start_plan(train_config(argv), world)
    except UserError as e:  # before any process group: every rank stops, rank 0 says why
        if rank == 0:
            print(f"{PROGRAM}: error: {e}", file=sys.stderr, flush=True)
        faults.record_status(2, str(e))
        return 2
    if plan.finished:
        if rank == 0:
            print(plan.finished, file=sys.stderr, flush=True)
        faults.record_status(0, plan.finished)
        return 0
    for warning in plan.inputs.warnings if rank == 0 else ():
        print(warning, file=sys.stderr, flush=True)
    parallel.single_process_env()
    parallel.name_deepspeed_accelerator()
    with faults.fail_fast(PROGRAM, rank, world) as watchdog:
        parallel.init_process_group()
        watchdog.watch()
        # Only rank 0 can find the run directory unwritable or taken: refused here, where the watchdog ends every
        # rank with it, rather than before the group, where the others would wait for it until a timeout.
        release = _claim_run_dir(plan.config) if rank == 0 else lambda: None
        watchdog.on_end(release)
        # only now: until here a launcher's SIGTERM ends the process as by default
        stop = _StopRequest(Path(plan.config.run_dir) / STOP_FILE)
        code, line = _start_and_train(plan, stop, rank)
        if rank == 0:
            faults.record_status(code, line)
        watchdog.stop()
        parallel.shutdown()
    release()
    if leave_after_training:
        # A rank that has trained (status recorded, process group destroyed, lock released) leaves with os._exit,
        # not through the interpreter's teardown: there, destructors of the engine, the gloo group and the
        # DataLoader's workers left a finished ZeRO-3 rank hanging after "done:" twice in CI (never in 20 runs
        # here). A refusal before any process group ends normally: a rank that left at once would let the launcher
        # kill rank 0 before it has said why.
        faults.end_process(code)
    return code


def start_plan(cfg: TrainConfig, world: int) -> planning.Plan:
    """The plan before any process group (`plan.start`), with the DeepSpeed version checked first."""
    versions.check_deepspeed()
    return planning.start(cfg, world)


def _start_and_train(plan: planning.Plan, stop: _StopRequest, rank: int) -> tuple[int, str]:
    """Start (the checkpoint verified, the engine built and loaded: a stop request ends it at once), then train;
    returns the exit status and the line that said why the run ended."""
    say = functools.partial(_say_from_rank_0, rank == 0)
    try:
        with stop.starting():
            plan = planning.verified(plan, warn=say)
            if plan.finished:
                say(plan.finished)
                return 0, plan.finished
            trainer = Trainer(plan)
            state = trainer.resume()
    except faults.StopRequested:
        if rank == 0:
            stop.stop_file.unlink(missing_ok=True)  # asked for and honoured: a rerun must not stop again
        raise
    return trainer.run(state, stop)


def _say_from_rank_0(is_main: bool, text: str) -> None:
    if is_main:
        print(text, flush=True)


def _lock_path(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) / ".lock"


def _claim_run_dir(cfg: TrainConfig):
    """Rank 0, before DeepSpeed starts: the run directory is writable and this run its only writer; returns what
    releases it."""
    run_dir = Path(cfg.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--run-dir {run_dir} is not writable: {os_error_line(e)}") from None
    return functools.partial(lock.release, _lock_path(cfg), lock.acquire(_lock_path(cfg), f"run directory {run_dir}"))


class Trainer:
    """The engine built for a plan, resumed from its checkpoint (`resume`), then trained (`run`)."""

    def __init__(self, plan: planning.Plan):
        self.plan, self.cfg, self.dataset = plan, plan.config, plan.dataset
        cfg = self.cfg
        self.accelerator = parallel.make_accelerator(plan)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.run_dir = Path(cfg.run_dir)
        self.vocab = Vocab.load(self.dataset.tokenizer_dir)
        self.is_main = self.rank == 0
        self.zero_stage = plan.zero_stage
        _quiet_deepspeed()
        # --- the model, the same initial weights on every rank -------------------------------------------------
        _deterministic(cfg.deterministic)
        _seed_everything(cfg.seed)
        model = build_model(cfg, self.vocab)
        self.n_params = count_params(model)
        if self.is_main:
            checkpoint.check_space(self.run_dir, self.n_params)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=True)
        self.scheduler = schedule.make(optimizer, cfg, plan.schedule)
        with parallel.no_compile_at_import():
            self.engine, _ = self.accelerator.prepare(model, optimizer)
        if cfg.compile:
            self.engine.compile()
            self._say("--compile: inductor builds kernels during the first steps (tiny: about 30 s on a CPU)")
        self.flops_per_token = metrics.flops_per_token(self.n_params, cfg.n_layer, cfg.n_embd, self.seq_len)
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        self.peak = metrics.peak_flops(name, cfg.peak_flops or None)

    @functools.cached_property
    def _val(self) -> ShardSet | None:
        """The val shards, opened once (their member offsets are read on first use), or None without a val split."""
        return ShardSet.load(self.dataset, "val") if self.dataset.split("val") is not None else None

    @functools.cached_property
    def _char_lengths(self) -> list[int]:
        """Characters per token for bits per character, computed once (a pretrained vocabulary decodes every
        token for it), not at every evaluation."""
        return self.vocab.char_lengths()

    @property
    def seq_len(self) -> int:
        return self.dataset.seq_len

    # --- resume ------------------------------------------------------------------------------------------------
    def resume(self) -> TrainerState:
        """Load the plan's checkpoint into the engine (through DeepSpeed's universal checkpoint when it was saved with
        another world size or ZeRO stage); returns the state to go on from. Collective."""
        point = self.plan.resume
        if point is None:
            return TrainerState(world_size=self.world, global_batch_size=self.cfg.global_batch_size)
        started = time.time()
        saved_as = (f"{point.world_size} process{'es' if point.world_size > 1 else ''}"
                    f"{f', ZeRO-{point.zero_stage}' if point.zero_stage is not None else ''}")
        if self.plan.elastic:
            universal = self._universal(point, saved_as)
        else:
            universal = None
            size = checkpoint.size(point.path)
            if size > SAY_LOAD_BYTES:  # a load of seconds goes without saying
                self._say(f"loading {point.path} ({size / 1e9:.1f} GB)")
        state = checkpoint.load(self.engine, point.path, universal)
        if universal is not None:
            parallel.wait_for_all()  # every rank has loaded the converted checkpoint before it goes
            if self.is_main:
                universal_.discard(universal)
        self.scheduler.load_state_dict(state.scheduler)
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr  # a universal load does not restore the optimizer's learning rates
        how = (f"; saved on {saved_as}, converted to a DeepSpeed universal checkpoint and loaded in "
               f"{time.time() - started:.1f} s" if universal is not None else "")
        self._say(f"resumed from {point.path} (step {state.step}, {state.tokens:,} tokens{how})")
        if self.plan.schedule["max_steps"] != point.saved_max_steps():
            self._say(f"--max-steps {self.cfg.max_steps} (the checkpoint planned {point.saved_max_steps()}): the "
                      "learning rate decays from its current value to --min-lr at the new last step")
        return state

    def _universal(self, point: ResumePoint, saved_as: str) -> Path:
        """Rank 0 converts the checkpoint in a process of its own (`universal.convert`) while the others wait."""
        folder = point.path.parent / f"{universal_.PREFIX}{point.path.name}"
        if self.is_main:
            self._say(f"converting {point.path} (saved on {saved_as}) into a DeepSpeed universal checkpoint for "
                      f"{self.world} process{'es' if self.world > 1 else ''}, ZeRO-{self.zero_stage}")
            shapes = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in
                      self.engine.module.named_parameters()}
            folder = universal_.convert(point.path, self.zero_stage, shapes)
        parallel.wait_for_all()
        return folder

    # --- the loop ----------------------------------------------------------------------------------------------
    def run(self, state: TrainerState, stop: _StopRequest) -> tuple[int, str]:
        """Train from `state` until max_steps (0), a stop request (75) or too many bad steps in a row (1); returns
        the status and the line that said why it ended."""
        cfg = self.cfg
        train = ShardSet.load(self.dataset, "train")
        spec = StreamSpec(cfg.seed, self.rank, self.world, cfg.micro_batch_size, cfg.grad_accum)
        stream = TrainStream(train, spec, start=state.step * cfg.grad_accum)
        batches = iter(make_loader(stream, cfg.num_workers, pin_memory=self.device.type == "cuda"))
        self._restore_rng(state.step)  # after the DataLoader iterator exists: creating it must not shift the RNG
        if self.is_main and state.step == 0 and cfg.init_from:
            self._say(f"starting from --init-from {cfg.init_from}: GPT-2, {cfg.n_layer} layers, {cfg.n_head} heads, "
                      f"{cfg.n_embd} dims, {cfg.n_positions} positions")
        if self.is_main and state.step == 0:
            self._say(f"{self.n_params / 1e6:.1f}M parameters on {self.device.type}, ZeRO-{self.zero_stage}, world "
                      f"size {self.world}, global batch {cfg.global_batch_size} × {self.seq_len} tokens, "
                      f"{stream.steps_per_epoch} step{'s' if stream.steps_per_epoch != 1 else ''} per epoch")
        with metrics.Metrics(self.run_dir, enabled=self.is_main, total_steps=cfg.max_steps, start_step=state.step,
                             tensorboard=cfg.tensorboard, progress=cfg.progress) as log, \
                _sample_record(cfg.log_samples, self.run_dir, self.rank, stream) as record:
            code, state, line = self._train(log, state, batches, record, stop)
        if code == 0:
            line = (f"done: {state.step} steps; run directory {self.run_dir} (tensorboard --logdir "
                    f"{self.run_dir / 'tensorboard'})")
        if code == 0 and self.is_main:
            (self.run_dir / DONE_FILE).write_text(f"{state.step}\n", encoding="utf-8")
            metrics.plot_run(self.run_dir)
            self._say(line)
        return code, line

    def _restore_rng(self, step: int) -> None:
        """The RNG states the checkpoint saved for this rank; on another layout (no such states) a seed drawn from
        the step and rank, so dropout never repeats the masks of the run's start."""
        point = self.plan.resume
        if point is None:
            return
        if self.plan.elastic:
            _seed_everything(int(np.random.SeedSequence([self.cfg.seed, step, self.rank]).generate_state(1)[0]))
        else:
            checkpoint.restore_rng(point.path, self.rank)

    def _train(self, log: metrics.Metrics, state: TrainerState, batches, record,
               stop: _StopRequest) -> tuple[int, TrainerState, str]:
        """Optimizer steps until max_steps (0), a stop request (EXIT_PREEMPTED) or too many bad steps in a row;
        `record(step)` is called after each step (see --log-samples). Returns the status, the state reached and the
        line said when it stopped early."""
        cfg = self.cfg
        bad_in_a_row, started = 0, time.time() - state.elapsed
        if self.is_main and state.step < cfg.max_steps:
            (self.run_dir / DONE_FILE).unlink(missing_ok=True)  # a run resumed with a larger max_steps
        while state.step < cfg.max_steps:
            t0 = time.time()
            loss_sum, lr, waited = self._optimizer_step(batches)
            loss_sum, stop_votes = parallel.all_reduce_sum([loss_sum, stop.requested()], self.device)
            loss, preempted = loss_sum / (cfg.grad_accum * self.world), stop_votes > 0
            step = state.step + 1
            record(step)
            bad_in_a_row = 0 if self.engine.was_step_applied() else bad_in_a_row + 1
            state = dataclasses.replace(state, step=step, tokens=state.tokens + cfg.global_batch_size * self.seq_len,
                                        skipped_steps=state.skipped_steps + (bad_in_a_row > 0),
                                        elapsed=time.time() - started)
            self._log_step(log, loss, lr, state, time.time() - t0, waited)
            if bad_in_a_row:
                self._say(f"step {step}: non-finite loss or gradient norm, update skipped ({bad_in_a_row} in a row)",
                          log)
            if bad_in_a_row >= cfg.max_bad_steps:
                line = (f"stopping: {bad_in_a_row} bad steps in a row (max_bad_steps); the last good checkpoint is "
                        "kept")
                self._say(line, log)
                return EXIT_BAD_STEPS, state, line
            evaluating = step % cfg.eval_every == 0 or step == cfg.max_steps
            val_loss = self._evaluate(log, step, state.tokens) if evaluating else None
            if step % cfg.sample_every == 0 or step == cfg.max_steps:
                self._sample(log, step)
            periodic = step % cfg.save_every == 0 and bad_in_a_row == 0  # never a checkpoint after a bad step
            if periodic or step == cfg.max_steps or preempted:
                self._save(log, dataclasses.replace(state, elapsed=time.time() - started), val_loss)
            if preempted:
                if self.is_main:
                    stop.stop_file.unlink(missing_ok=True)
                line = (f"stop requested (signal or {STOP_FILE} file) after step {step}; checkpoint saved; rerun the "
                        "same command to resume")
                self._say(line, log)
                return faults.EXIT_PREEMPTED, state, line
        return 0, state, ""

    def _optimizer_step(self, batches) -> tuple[torch.Tensor, float, float]:
        """grad_accum micro-batches forward/backward, one optimizer update (DeepSpeed clips and steps at the
        accumulation boundary); returns this rank's summed loss, still on the device (no host sync per micro-batch:
        it is read once per step, with the stop vote), the learning rate the update used and the seconds spent
        waiting for data."""
        self.engine.train()
        total, waited = torch.zeros((), dtype=torch.float64, device=self.device), 0.0
        lr = self.scheduler.get_last_lr()[0]
        for _ in range(self.cfg.grad_accum):
            t = time.time()
            batch = next(batches).to(self.device, non_blocking=True)
            waited += time.time() - t
            logits = self.engine(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach()
        self.scheduler.step()
        return total, lr, waited

    def _log_step(self, log: metrics.Metrics, loss: float, lr: float, state: TrainerState, seconds: float,
                  waited: float) -> None:
        tokens_per_s = self.cfg.global_batch_size * self.seq_len / max(seconds, 1e-9)
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else None
        log.log_train(state.step, loss=loss, lr=lr, grad_norm=norm, tokens=state.tokens, elapsed=state.elapsed,
                      tokens_per_s=tokens_per_s, mfu=metrics.mfu(tokens_per_s / self.world, self.flops_per_token,
                                                                 self.peak),
                      memory_gb=metrics.memory_gb(), skipped_steps=state.skipped_steps, data_wait_s=waited)

    def _evaluate(self, log: metrics.Metrics, step: int, tokens: int) -> float | None:
        """Validation loss, perplexity and bits per character (tokenizer-independent) on the val shards; returns
        the loss (None without a val split) and warns, once per rise, when the model is overfitting."""
        if self._val is None:
            return None
        batches = val_batches(self._val, self.rank, self.world, self.cfg.micro_batch_size, self.cfg.eval_batches)
        self.engine.eval()
        with torch.no_grad():
            sums = heldout_sums(self.engine, batches, self._char_lengths, self.device)
        self.engine.train()
        result = heldout_metrics(*parallel.all_reduce_sum(sums, self.device))
        log.log_eval(step, **result, tokens=tokens)
        overfitting = log.overfitting(self.cfg.overfit_evals) if self.is_main else None
        if overfitting:
            best = checkpoint.find_best(self.run_dir, warn=lambda text: None)
            where = (f"; the best checkpoint so far is {best.name} (val loss {checkpoint.val_loss(best):.4f}), kept "
                     f"whatever --keep-last: tools/consolidate.py {self.run_dir} OUT_DIR --best") if best else ""
            self._say(f"warning: {overfitting}{where}", log)
        return result["val_loss"]

    def _sample(self, log: metrics.Metrics, step: int) -> None:
        """Greedy continuation of a fixed prompt (the start of the first val sample): greedy decoding draws no
        random numbers, so sampling never changes the run. All ranks take part (ZeRO-3 gathers weights)."""
        room = self.cfg.n_positions
        n_prompt = min(32, room // 2)
        shards = self._val if self._val is not None else ShardSet.load(self.dataset, "train")
        prompt = torch.from_numpy(shards.read(0, 0)[:n_prompt].astype(np.int64))[None]
        self.engine.eval()
        # eager under --compile too: each new length generate() feeds the model would recompile it
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            out = self.engine.module.generate(prompt.to(self.device),
                                              max_new_tokens=min(self.cfg.sample_tokens, room - n_prompt),
                                              do_sample=False, pad_token_id=self.vocab.pad,
                                              synced_gpus=self.zero_stage == 3 and self.world > 1)
        self.engine.train()
        text = self.vocab.decode(prompt[0].tolist()) + " ▶ " + self.vocab.decode(out[0, prompt.size(1):].tolist())
        log.log_text(step, "sample", text)

    def _save(self, log: metrics.Metrics, state: TrainerState, val_loss: float | None) -> None:
        """A checkpoint of this step; `val_loss`, evaluated at this step or None, lets pruning keep the best one."""
        state = dataclasses.replace(state, scheduler=self.scheduler.state_dict(), val_loss=val_loss,
                                    schedule=self.plan.schedule, zero_stage=self.zero_stage, world_size=self.world,
                                    global_batch_size=self.cfg.global_batch_size,
                                    data_fingerprint=self.dataset.fingerprint, n_params=self.n_params)
        path = checkpoint.save(self.engine, self.run_dir, state, self.cfg, self.dataset.tokenizer_dir,
                               self.cfg.keep_last)
        self._say(f"saved {path}", log)

    def _say(self, text: str, log: metrics.Metrics | None = None) -> None:
        """A message from rank 0 (every rank with --log-all-ranks); through the progress display when there is one."""
        if log is not None and self.is_main:
            log.message(text)
        elif self.is_main or self.cfg.log_all_ranks:
            print(text if self.is_main else f"[rank {self.rank}] {text}", flush=True)


@contextlib.contextmanager
def _sample_record(enabled: bool, run_dir: Path, rank: int, stream: TrainStream):
    """`record(step)`: with --log-samples, appends the (shard, index) of every sample this rank trained on at that
    step to RUN_DIR/samples-rank<N>.jsonl (a debugging aid: which samples a run consumed, whatever its layout)."""
    if not enabled:
        yield lambda step: None
        return
    accum = stream.spec.grad_accum
    with open(run_dir / f"samples-rank{rank:05d}.jsonl", "a", encoding="utf-8") as out:
        def record(step: int) -> None:
            ids = [pair for g in range((step - 1) * accum, step * accum) for pair in stream.sample_ids(g)]
            out.write(json.dumps({"step": step, "samples": ids}) + "\n")

        yield record


def _deterministic(on: bool) -> None:
    """--deterministic: CUDA kernels that give the same bits every run (cuBLAS with a fixed workspace, no cuDNN
    autotuning, torch's deterministic algorithms; an op without one warns instead of failing), so that a resumed run
    repeats an uninterrupted one exactly on a GPU too, at some cost in speed. The CPU is deterministic already."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the first matmul
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    # The mode also fills every new tensor with NaN, a debugging aid for code that reads memory it never wrote; none
    # here does, so the bits are the same without it, and DeepSpeed's fresh buffers each step made steps 10× slower.
    torch.utils.deterministic.fill_uninitialized_memory = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_deepspeed() -> None:
    """DeepSpeed logs every checkpoint file at INFO on every rank, and its ZeRO-3 gathers warn about a deprecated
    torch call at every step; keep real warnings only (GPT_NOVEL_DS_VERBOSE=1 shows everything)."""
    import logging
    import warnings

    from deepspeed.utils import logger

    if os.environ.get("GPT_NOVEL_DS_VERBOSE"):
        return
    logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)


if __name__ == "__main__":
    raise SystemExit(faults.exit_status(main(leave_after_training=True)))
