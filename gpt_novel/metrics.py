"""Everything the trainer reports, in one place: metrics.jsonl, TensorBoard, the progress bar, MFU and plots.

The trainer builds one `Metrics` on every rank with `enabled=(rank == 0)`, so the training loop calls the same
methods everywhere and no rank check is scattered through it; on other ranks every method returns at once and
nothing is created (no file, no TensorBoard writer, no bar).

`metrics.jsonl` is the record of a run: one JSON object per line, train lines (`"loss"`) and eval lines
(`"val_loss"`), each with `"step"` and `"tokens"`. Floats are written by `json.dumps`, which writes the shortest
repr that reads back to the same float, so a loss read back compares equal to the value the trainer had.
Non-finite values are written as `NaN` / `Infinity`, which Python's `json` reads back (strict JSON readers do not).
On resume the file is cut back to the resumed checkpoint's step, so it reads as if the run had never stopped.

Heavy imports (torch, TensorBoard, matplotlib) happen inside the functions that need them: `gpt-novel plot`
should not pay for torch, and a disabled `Metrics` should not pay for TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from gpt_novel.errors import UserError
from gpt_novel.progress import STATUS_SECONDS, duration

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Dense (no sparsity) bf16 tensor-core peak FLOP/s per device, from the vendors' datasheets. Matched in order
# against the CUDA device name (case-insensitive, whole words so "L4" does not match "L40S"); the first hit wins,
# which is why "H100 PCIe" comes before "H100".
_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H200", 989e12),  # H200 SXM: same compute as H100 SXM, more and faster memory
    (r"H100\b.*\bPCIe", 756e12),  # H100 PCIe
    (r"H100", 989e12),  # H100 SXM (HBM3); also used for other H100 variants
    (r"A100", 312e12),  # A100 SXM and PCIe
    (r"A10G", 125e12),  # AWS A10G: A10's tensor-core peak; sustained matmul throughput is lower (~70e12)
    (r"L40S", 362e12),
    (r"L4", 121e12),
    (r"RTX 4090", 165e12),  # bf16 with fp32 accumulate (330e12 with fp16 accumulate, unused by training)
    (r"V100", 125e12),  # no bf16: fp16 tensor-core peak, the closest comparable number
)


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: `6*N + 12*n_layer*n_embd*seq_len` (PaLM appendix B; nanoGPT's estimate_mfu).

    6N is the forward (2N) and backward (4N) matmul work of the weights; the second term is attention's
    QK^T and AV products, which grow with the context and hold no parameters. N is *all* parameters, nothing
    excluded: with GPT-2's tied embeddings the token embedding is also the output layer's matmul and must be
    counted; only the small position embedding (and an untied input embedding, a lookup) is counted without
    doing matmul work, which overstates MFU by well under a percent for GPT-2 sizes with tied embeddings.
    Recomputation from activation checkpointing is deliberately not counted (MFU, not hardware utilisation).
    """
    return 6.0 * n_params + 12.0 * n_layer * n_embd * seq_len


def peak_flops(device_name: str | None, override: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None when unknown (MFU is then reported as n/a).

    `override` (from the config) wins so an unlisted GPU or a clock-limited part can still get an MFU. The table
    is small on purpose: a wrong peak gives a wrong MFU that looks right, so an unknown GPU gets None, not a guess.
    `device_name` is `torch.cuda.get_device_name()`, or None on CPU.
    """
    if override is not None:
        if not override > 0:
            raise ValueError(f"peak FLOP/s override must be positive, got {override!r}")
        return float(override)
    if not device_name:
        return None
    for pattern, peak in _PEAK_FLOPS:
        if re.search(rf"\b{pattern}\b", device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s of one device over its peak; None without a peak."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s_per_device * flops_per_token / peak


def memory_gb() -> float | None:
    """Peak memory of this process in GiB: CUDA allocator peak on GPU, else peak RSS (the CPU run's real limit).

    None only where neither can be measured (no CUDA and no `resource` module, i.e. Windows).
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return maxrss / 2**30 if sys.platform == "darwin" else maxrss / 2**20


def _record(line: str) -> dict | None:
    """One metrics.jsonl line as a dict, or None for a torn or foreign line (readers skip it)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _step_in(record: dict) -> float | None:
    """The "step" of one record, or None for a record without a numeric one (readers drop it)."""
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int | float):
        return None
    return step


def _step_of(line: str) -> float | None:
    """The "step" of one metrics.jsonl line, or None for a line without one (to be dropped)."""
    return _step_in(_record(line) or {})


def _truncate_after(path: Path, start_step: int) -> None:
    """Keep only lines with step <= start_step (and valid JSON); atomic, so a kill here loses nothing."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = [line for line in text.splitlines() if (s := _step_of(line)) is not None and s <= start_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _to_float(x: Any) -> float | None:
    """Plain Python float (numpy / 0-d tensor values included, exactly) or None."""
    return None if x is None else float(x)


def _markdown_text(text: str) -> str:
    """Text as a fenced code block, so TensorBoard's markdown keeps line breaks and interprets nothing.

    The fence is longer than any backtick run in the text, so the text cannot close the block early.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


class Metrics:
    """Rank 0's reporter: metrics.jsonl, TensorBoard scalars/text and the tqdm bar; a no-op when not enabled.

    Usable as a context manager; `close()` is idempotent so a `finally:` and an `__exit__` can both call it.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._bar: tqdm | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if start_step > 0:
            # A killed run may have logged steps after its last checkpoint; those steps are trained again now.
            _truncate_after(path, start_step)
        elif path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # end a torn last line so the next line is not glued to it (readers skip the torn one)
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")
        self._file = path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote after the checkpoint we resume from.
            self._writer = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None
            )
        # A bar in a terminal; in a log (a Slurm job, `make demo | tee`) every redraw of a bar would stay in the
        # file, so there a plain status line every STATUS_SECONDS and one at the last step instead.
        self._total = total_steps
        self._status_at = time.monotonic() if progress and not sys.stderr.isatty() else None
        if progress and self._status_at is None:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=0.1)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_json(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a killed run keeps every line it logged

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if self._writer is not None and value is not None:
            self._writer.add_scalar(tag, value, global_step=step)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)  # clears and redraws the bar around the line
        else:
            print(text, flush=True)

    def log_train(
        self,
        step: int,
        *,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens: int,
        elapsed: float,
        tokens_per_s: float,
        mfu: float | None,
        memory_gb: float | None,
        skipped_steps: int,
        data_wait_s: float | None = None,
    ) -> None:
        """One train line, its TensorBoard scalars and a bar update; None values are null and not plotted.

        `data_wait_s` is the time the step spent waiting for its micro-batches (a slow input pipeline shows here)."""
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "loss": _to_float(loss),
            "lr": _to_float(lr),
            "grad_norm": _to_float(grad_norm),
            "tokens": int(tokens),
            "elapsed": _to_float(elapsed),
            "tokens_per_s": _to_float(tokens_per_s),
            "mfu": _to_float(mfu),
            "memory_gb": _to_float(memory_gb),
            "skipped_steps": int(skipped_steps),
            "data_wait_s": _to_float(data_wait_s),
        }
        self._write_json(record)
        step = record["step"]
        for tag, key in (
            ("train/loss", "loss"),
            ("train/lr", "lr"),
            ("train/grad_norm", "grad_norm"),
            ("perf/tokens_per_s", "tokens_per_s"),
            ("perf/mfu", "mfu"),
            ("perf/memory_gb", "memory_gb"),
            ("train/skipped_steps", "skipped_steps"),
            ("train/tokens", "tokens"),
            ("perf/elapsed_s", "elapsed"),
            ("perf/data_wait_s", "data_wait_s"),
        ):
            self._scalar(tag, record[key], step)
        if self._status_at is not None:
            self._status_line(record)
        if self._bar is not None:
            self._bar.set_postfix({"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:,.0f}"},
                                  refresh=False)
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            else:
                self._bar.refresh()

    def _status_line(self, record: dict[str, Any]) -> None:
        """The bar's facts as one line, at most every STATUS_SECONDS, and at the last step."""
        if record["step"] < self._total and time.monotonic() - self._status_at < STATUS_SECONDS:
            return
        self._status_at = time.monotonic()
        step, elapsed = record["step"], record["elapsed"]
        # the run's mean step time so far, evaluations and saves included (the bar in a terminal has its own ETA)
        left = f", about {duration((self._total - step) * elapsed / step)} left" if 0 < step < self._total else ""
        self._print(f"step {step}/{self._total}: loss {record['loss']:.4f}, "
                    f"{record['tokens_per_s']:,.0f} tokens/s, {elapsed:.0f} s{left}")

    def log_eval(self, step: int, *, val_loss: float, val_ppl: float, val_bpc: float, tokens: int) -> None:
        """One eval line, its TensorBoard scalars and a short printed summary (evals are rare and worth seeing)."""
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "val_loss": _to_float(val_loss),
            "val_ppl": _to_float(val_ppl),
            "val_bpc": _to_float(val_bpc),
            "tokens": int(tokens),
        }
        self._write_json(record)
        self._scalar("val/loss", record["val_loss"], record["step"])
        self._scalar("val/ppl", record["val_ppl"], record["step"])
        self._scalar("val/bpc", record["val_bpc"], record["step"])
        self._print(f"step {step}: val_loss {val_loss:.4f} ppl {val_ppl:.2f} bpc {val_bpc:.3f}")

    def log_text(self, step: int, tag: str, text: str) -> None:
        """A text sample to TensorBoard (verbatim, line breaks kept) and a one-line preview on the console."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.add_text(tag, _markdown_text(text), global_step=step)
        preview = text[:60].replace("\n", "⏎")
        more = "…" if len(text) > 60 else ""
        self._print(f"step {step} {tag}: {preview}{more}")

    def overfitting(self, evals: int) -> str | None:
        """`overfitting` of this run's records so far (rank 0; None when not enabled)."""
        return overfitting(read_metrics(self.run_dir), evals) if self.enabled and evals > 0 else None

    def message(self, text: str) -> None:
        """A log line from rank 0 that does not break the progress bar."""
        if self.enabled:
            self._print(text)

    def close(self) -> None:
        """Flush and close the writer, the file and the bar; safe to call more than once."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of RUN_DIR/metrics.jsonl in file order; torn or non-object lines are skipped."""
    text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8", errors="replace")
    return [r for r in map(_record, text.splitlines()) if r is not None]


def overfitting(records: list[dict], evals: int) -> str | None:
    """Why the model looks overfitted, or None: the val loss rose at each of the last `evals` evaluations while the
    mean train loss between evaluations fell. Said once per rise: not again while the same rise goes on."""
    points, losses = [], []  # (val loss, mean train loss since the previous evaluation)
    for record in records:
        if _finite(record.get("loss")):
            losses.append(record["loss"])
        elif _finite(record.get("val_loss")):
            points.append((record["val_loss"], sum(losses) / len(losses) if losses else math.nan))
            losses = []
    if evals < 1 or len(points) < evals + 1:
        return None
    window = points[-evals - 1:]
    vals, trains = [v for v, _ in window], [t for _, t in window]
    rising = all(b > a for a, b in zip(vals, vals[1:], strict=False))
    started_now = len(points) == evals + 1 or points[-evals - 2][0] >= vals[0]
    if not (rising and started_now and trains[-1] < trains[0]):
        return None
    return (f"the val loss rose at {evals} evaluations in a row ({' → '.join(f'{v:.3f}' for v in vals)}) while the "
            f"train loss fell ({trains[0]:.3f} → {trains[-1]:.3f}): the model is overfitting (more data, fewer steps "
            "or more dropout)")


def evals_until(run_dir: Path, step: int) -> list[dict]:
    """The eval records (`"val_loss"`) at or before `step`, in order; none without a metrics.jsonl.

    For describing a checkpoint: a killed run may have logged evals after it that the checkpoint's weights never saw.
    """
    if not (Path(run_dir) / METRICS_FILE).is_file():
        return []
    return [r for r in read_metrics(run_dir) if "val_loss" in r and (s := _step_in(r)) is not None and s <= step]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


LOSS_PLOT = "loss.png"  # plot_run's default, in the run directory; consolidation copies it into the model folder


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """PNG of train and validation loss against tokens seen (default RUN_DIR/loss.png); returns its path.

    Tokens, not steps, on the x axis so runs with different batch sizes compare directly.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_FILE} (not a training run directory?)")
    records = read_metrics(run_dir)
    train = [r for r in records if _finite(r.get("loss")) and _finite(r.get("tokens"))]
    val = [r for r in records if _finite(r.get("val_loss")) and _finite(r.get("tokens"))]
    if not train:
        raise UserError(f"{path}: no train loss logged yet")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    max_tokens = max(r["tokens"] for r in train + val)
    scale, unit = (1e6, "tokens seen (millions)") if max_tokens >= 1e6 else (1.0, "tokens seen")
    out = Path(out) if out is not None else run_dir / LOSS_PLOT
    fig, ax = plt.subplots(figsize=(9, 5))
    try:
        with warnings.catch_warnings():
            # A Chinese run-dir name in the title lacks glyphs in the default font: a cosmetic gap, not an error.
            warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
            ax.plot([r["tokens"] / scale for r in train], [r["loss"] for r in train], linewidth=0.8,
                    label="train loss")
            if val:
                ax.plot([r["tokens"] / scale for r in val], [r["val_loss"] for r in val], marker="o", markersize=4,
                        linewidth=1.5, label="val loss")
            ax.set_xlabel(unit)
            ax.set_ylabel("loss (nats/token)")
            ax.set_title(run_dir.resolve().name)
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out
