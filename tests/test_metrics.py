"""gpt_novel.metrics: FLOPs/MFU arithmetic, metrics.jsonl (exact floats, resume truncation), TensorBoard, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt_novel import metrics
from gpt_novel.cli import main
from gpt_novel.errors import UserError
from gpt_novel.metrics import Metrics, flops_per_token, mfu, peak_flops, plot_run, read_metrics
from gpt_novel.progress import duration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(m: Metrics, step: int, loss: float = 3.0, **kw) -> None:
    args = dict(loss=loss, lr=1e-4, grad_norm=1.5, tokens=step * 4096, elapsed=step * 0.5, tokens_per_s=8192.0,
                mfu=0.4, memory_gb=1.25, skipped_steps=0)
    args.update(kw)
    m.log_train(step, **args)


def _lines(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()


# --- arithmetic ---------------------------------------------------------------------------------------------------


def test_flops_per_token_gpt2_small():
    # 6 * 124e6 = 744e6; attention 12 * 12 layers * 768 * 1024 = 113_246_208
    assert flops_per_token(124_000_000, 12, 768, 1024) == 744_000_000 + 113_246_208


@pytest.mark.parametrize(
    "name, peak",
    [  # how a device name finds its row (the figures themselves are the table's, not restated here)
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM and PCIe H100s differ: the longer name decides
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA L40", None),  # not in the table, and must not match "L4"
        ("NVIDIA GeForce GTX 1080", None),
        (None, None),  # CPU
        ("", None),
    ],
)
def test_peak_flops_table(name, peak):
    assert peak_flops(name) == peak


def test_peak_flops_override_wins():
    assert peak_flops("NVIDIA H100 80GB HBM3", override=500e12) == 500e12
    assert peak_flops(None, override=1e12) == 1e12
    with pytest.raises(ValueError):
        peak_flops(None, override=0.0)


def test_mfu():
    assert mfu(1000.0, 6e9, None) is None
    assert mfu(1000.0, 6e9, 12e12) == pytest.approx(0.5)


def test_memory_gb_is_positive_on_cpu():
    value = metrics.memory_gb()
    assert value is not None and value > 0


# --- metrics.jsonl ------------------------------------------------------------------------------------------------


def test_jsonl_round_trips_floats_exactly(tmp_path):
    with Metrics(tmp_path, enabled=True, total_steps=10, tensorboard=False, progress=False) as m:
        _train(m, 1, loss=3.14159265358979, grad_norm=None, mfu=None, memory_gb=None)
        _train(m, 2, loss=0.1 + 0.2, lr=2.5e-7)
        m.log_eval(2, val_loss=0.1 + 0.2, val_ppl=1.3498588075760032, val_bpc=0.43280851226668897, tokens=8192)
    recs = [json.loads(line) for line in _lines(tmp_path)]
    assert recs[0] == {"step": 1, "loss": 3.14159265358979, "lr": 1e-4, "grad_norm": None, "tokens": 4096,
                       "elapsed": 0.5, "tokens_per_s": 8192.0, "mfu": None, "memory_gb": None, "skipped_steps": 0,
                       "data_wait_s": None}
    assert recs[1]["loss"] == 0.1 + 0.2 and recs[1]["lr"] == 2.5e-7
    assert recs[2] == {"step": 2, "val_loss": 0.1 + 0.2, "val_ppl": 1.3498588075760032,
                       "val_bpc": 0.43280851226668897, "tokens": 8192}
    assert read_metrics(tmp_path) == recs


def test_numpy_and_tensor_values_are_written_as_plain_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    with Metrics(tmp_path, enabled=True, total_steps=10, tensorboard=False, progress=False) as m:
        _train(m, 1, loss=np.float32(2.5), grad_norm=torch.tensor(0.75), tokens=np.int64(4096))
    rec = json.loads(_lines(tmp_path)[0])
    assert rec["loss"] == 2.5 and rec["grad_norm"] == 0.75 and rec["tokens"] == 4096


def test_disabled_metrics_creates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    m = Metrics(run_dir, enabled=False, total_steps=10, start_step=3)
    _train(m, 4)
    m.log_eval(4, val_loss=1.0, val_ppl=2.7, val_bpc=1.4, tokens=1)
    m.log_text(4, "sample", "text")
    m.message("hello")
    m.close()
    m.close()
    assert not run_dir.exists()


def test_resume_truncates_later_steps_and_torn_line(tmp_path):
    with Metrics(tmp_path, enabled=True, total_steps=20, tensorboard=False, progress=False) as m:
        for step in range(1, 11):
            _train(m, step, loss=float(step))
            if step % 5 == 0:
                m.log_eval(step, val_loss=float(step), val_ppl=1.0, val_bpc=1.0, tokens=step)
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 11, "loss": 1.2')  # killed mid-write
    with Metrics(tmp_path, enabled=True, total_steps=20, start_step=6, tensorboard=False, progress=False) as m:
        _train(m, 7, loss=7.5)
    recs = read_metrics(tmp_path)
    assert [(r["step"], "val_loss" in r) for r in recs] == [
        (1, False), (2, False), (3, False), (4, False), (5, False), (5, True), (6, False), (7, False)
    ]
    assert recs[-1]["loss"] == 7.5
    assert all(json.loads(line) for line in _lines(tmp_path))  # every line is valid JSON again
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_torn_line_without_resume_is_not_glued_to_next(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo', encoding="utf-8")
    with Metrics(tmp_path, enabled=True, total_steps=5, tensorboard=False, progress=False) as m:
        _train(m, 1, loss=4.0)
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 4.0]


def test_close_is_idempotent(tmp_path):
    m = Metrics(tmp_path, enabled=True, total_steps=5, tensorboard=True, progress=True)
    _train(m, 1)
    m.close()
    m.close()


# --- console ------------------------------------------------------------------------------------------------------


def test_console_lines(tmp_path, capsys):
    with Metrics(tmp_path, enabled=True, total_steps=5, tensorboard=False, progress=True) as m:
        _train(m, 1, loss=2.0)
        m.log_eval(1, val_loss=2.345678, val_ppl=10.44, val_bpc=3.3841, tokens=4096)
        m.log_text(1, "sample", "第一回\n话说" + "天" * 100)
        m.message("saved checkpoint")
    out = capsys.readouterr().out.splitlines()
    assert "step 1: val_loss 2.3457 ppl 10.44 bpc 3.384" in out
    preview = next(line for line in out if "sample" in line)
    assert "第一回⏎话说" in preview and "\n" not in preview
    assert "saved checkpoint" in out


# --- TensorBoard --------------------------------------------------------------------------------------------------


def test_tensorboard_scalars_and_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Metrics(tmp_path, enabled=True, total_steps=5, progress=False) as m:
        _train(m, 1, loss=3.5, data_wait_s=0.01)
        _train(m, 2, loss=3.25, mfu=None)
        m.log_eval(2, val_loss=3.0, val_ppl=20.08, val_bpc=4.3, tokens=8192)
        m.log_text(2, "sample/continuation", "第一行\n第二行 ``` 反引号")
    tb_dir = tmp_path / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "perf/memory_gb",
            "train/skipped_steps", "val/loss", "val/ppl", "val/bpc", "train/tokens", "perf/elapsed_s",
            "perf/data_wait_s"} <= scalars
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 3.5), (2, 3.25)]
    assert [e.step for e in acc.Scalars("perf/mfu")] == [1]  # None is not logged
    assert "sample/continuation/text_summary" in acc.Tags()["tensors"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_markdown_text_keeps_line_breaks_and_backticks():
    from tensorboard.plugin_util import markdown_to_safe_html

    text = "第一行 *不是强调*\n第二行 ``` 反引号\n# 不是标题"
    html = markdown_to_safe_html(metrics._markdown_text(text))
    assert html.startswith("<pre><code>")
    assert "第一行 *不是强调*\n第二行 ``` 反引号\n# 不是标题" in html


def test_evals_until_are_the_evals_at_or_before_the_step(tmp_path):
    assert metrics.evals_until(tmp_path, 10) == []  # no metrics.jsonl: a checkpoint copied without its run
    _write_run(tmp_path, steps=12)  # evals at steps 5 and 10
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": "x", "val_loss": 9.0}\n{"step": 11, "val_lo')  # foreign and torn lines are skipped
    assert metrics.evals_until(tmp_path, 10)[-1]["val_loss"] == 5.5 / 10
    assert metrics.evals_until(tmp_path, 9)[-1]["step"] == 5
    assert metrics.evals_until(tmp_path, 4) == []
    assert [r["step"] for r in metrics.evals_until(tmp_path, 12)] == [5, 10]


# --- plot ---------------------------------------------------------------------------------------------------------


def _write_run(run_dir: Path, steps: int = 20) -> None:
    with Metrics(run_dir, enabled=True, total_steps=steps, tensorboard=False, progress=False) as m:
        for step in range(1, steps + 1):
            _train(m, step, loss=5.0 / step, tokens=step * 200_000)
            if step % 5 == 0:
                m.log_eval(step, val_loss=5.5 / step, val_ppl=1.0, val_bpc=1.0, tokens=step * 200_000)


def test_plot_run_writes_png(tmp_path):
    run_dir = tmp_path / "运行"
    _write_run(run_dir)
    out = plot_run(run_dir)
    assert out == run_dir / "loss.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    custom = plot_run(run_dir, tmp_path / "plots" / "x.png")
    assert custom.read_bytes().startswith(PNG_MAGIC)


def test_plot_run_errors(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "val_loss": 1.0, "tokens": 5}\n{"ste', encoding="utf-8")
    with pytest.raises(UserError, match="no train loss"):
        plot_run(tmp_path)


def test_cli_plot(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write_run(run_dir)
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "loss.png")
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_MAGIC)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpt-novel plot: error:") and "metrics.jsonl" in err[0]


def test_outside_a_terminal_progress_is_plain_lines_and_the_last_one_once(tmp_path, capsys, monkeypatch):
    """In a log file every tqdm redraw stays (the final bar appeared twice): there, plain status lines instead."""
    with Metrics(tmp_path, enabled=True, total_steps=3, tensorboard=False, progress=True) as m:
        for step in (1, 2, 3):
            _train(m, step, loss=2.0)
        m.message("saved checkpoint")
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err and "step/s" not in captured.err
    assert [line for line in captured.out.splitlines() if line.startswith("step ")] == \
        ["step 3/3: loss 2.0000, 8,192 tokens/s, 2 s"]
    monkeypatch.setattr("gpt_novel.metrics.STATUS_SECONDS", 0.0)
    with Metrics(tmp_path, enabled=True, total_steps=3, tensorboard=False, progress=True, start_step=3) as m:
        _train(m, 4, loss=1.0)
    assert capsys.readouterr().out.startswith("step 4/3: loss 1.0000")
    with Metrics(tmp_path / "eta", enabled=True, total_steps=200, tensorboard=False, progress=True) as m:
        for step in (2, 150, 199, 200):
            _train(m, step, loss=1.0)  # 0.5 s a step
    assert [line.split(" s, ")[-1] for line in capsys.readouterr().out.splitlines()] == \
        ["about 2 min left", "about 25 s left", "about 0 s left", "step 200/200: loss 1.0000, 8,192 tokens/s, 100 s"]


def test_durations_are_rounded_for_people():
    assert [duration(s) for s in (0, 89, 90, 5399, 5400, 12_600)] == ["0 s", "89 s", "2 min", "90 min", "1.5 h",
                                                                      "3.5 h"]


# --- overfitting ----------------------------------------------------------------------------------------------------


def _history(points: list[tuple[float, float]]) -> list[dict]:
    """metrics.jsonl records: per evaluation, two train lines with the given train loss, then the eval line."""
    records, step = [], 0
    for val, train in points:
        for _ in range(2):
            step += 1
            records.append({"step": step, "loss": train})
        records.append({"step": step, "val_loss": val})
    return records


def test_overfitting_is_said_when_the_val_loss_rose_n_times_while_the_train_loss_fell():
    from gpt_novel.metrics import overfitting

    falling = [(5.0, 6.0), (4.0, 5.0), (4.5, 4.0), (4.8, 3.0)]
    said = overfitting(_history(falling), 2)
    assert said and "rose at 2 evaluations in a row (4.000 → 4.500 → 4.800)" in said and "(5.000 → 3.000)" in said
    assert overfitting(_history(falling[:3]), 2) is None  # one rise only
    assert overfitting(_history(falling + [(4.9, 2.0)]), 2) is None  # the same rise goes on: said once
    assert overfitting(_history(falling + [(4.1, 2.0), (4.2, 1.5), (4.3, 1.0)]), 2)  # a new rise after a dip
    assert overfitting(_history([(4.0, 5.0), (4.5, 5.5), (4.8, 6.0)]), 2) is None  # train loss rose too: diverging
    assert overfitting(_history(falling), 0) is None  # --overfit-evals 0: never
