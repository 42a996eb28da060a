"""The benchmark scripts still run end to end and print the JSON they document (their numbers are not judged here:
speed targets belong to the benchmarks, not to timed tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT, SAMPLE_DIR, split_corpus, train_env


@pytest.mark.slow
def test_train_benchmark_prints_its_report(train_data):
    cmd = [sys.executable, "benchmarks/train.py", "--data", str(train_data), "--steps", "3", "--warmup", "1",
           "--repeats", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--micro-batch", "2",
           "--grad-accum", "2", "--deepspeed", "ds_configs/zero2.json"]
    done = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["deepspeed"] == "ds_configs/zero2.json" and report["model"]["seq_len"] == 32
    assert len(report["trainer_tokens_per_s"]) == 1 and len(report["bare_tokens_per_s"]) == 2
    bare = sum(report["bare_tokens_per_s"]) / 2
    assert report["ratio"] == pytest.approx(report["trainer_tokens_per_s"][0] / bare, abs=2e-3)
    assert 0 <= report["data_wait_fraction"] < 1
    assert report["shard_check"]["reader_tokens_per_s"] > 0 < report["shard_check"]["check_us_per_sample"]


def _bench_prepare(*args: str) -> dict:
    done = subprocess.run([sys.executable, "benchmarks/prepare.py", str(SAMPLE_DIR), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_prepare_benchmark_prints_scaling_warm_and_stage_throughput():
    report = _bench_prepare("--workers", "2")
    assert report["workers"] == 2 and report["chapters"] == 6
    for run in ("cold_1_worker", "cold_n_workers"):
        rates = report[run]["stage_chars_per_cpu_s"]
        assert set(rates) == {"read_clean", "segment", "encode_write"}
        assert rates["segment"] > 0  # thulac ran: the default mode measures the word tokenizer
    assert report["scaling_target"] == 1.7 and isinstance(report["scaling_ok"], bool)
    assert report["warm_rerun"]["segmented_chapters"] == 0
    assert report["warm_speedup"] > 0 and isinstance(report["warm_ok"], bool)


def test_prepare_benchmark_scale_reports_peak_memory_of_distinct_copies():
    report = _bench_prepare("--scale", "--copies", "1,2", "--word-copies", "1,2", "--bpe-copies", "1,2",
                            "--seq-len", "256")
    keys = {"copies", "tokenizer", "bytes_in", "chars", "chars_kept", "chapters", "seconds", "chars_per_s",
            "peak_rss_mb", "removed"}
    for kind in ("char", "word", "bpe"):
        one, two = report[kind]
        assert set(one) == set(two) == keys and (one["copies"], two["copies"]) == (1, 2)
        assert one["tokenizer"] == kind and one["peak_rss_mb"] > 10
        # the copies are distinct: prepare keeps them all, drops nothing as duplicate or boilerplate
        assert two["bytes_in"] == 2 * one["bytes_in"] and two["chapters"] == 2 * one["chapters"] == 12
        assert two["chars_kept"] == pytest.approx(2 * one["chars_kept"], rel=0.01)
        assert two["removed"] == {"duplicate_chapter": 0, "boilerplate": 0}
    ratio = report["char"][1]["peak_rss_mb"] / report["char"][0]["peak_rss_mb"]
    assert report["char_ratio"] == pytest.approx(ratio, abs=2e-3) and report["char_ratio_of"] == "2x/1x"
    assert report["ratio_target"] == 1.1 and isinstance(report["scale_ok"], bool)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_prepare", ROOT / "benchmarks" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_benchmark_copies_keep_characters_and_headings_and_differ():
    variant = _bench_module().variant
    line = "\u3000\u3000林晚秋扶着一瘸一拐的阿福，绕了一大圈野路。\r"
    versions = [variant(line, k) for k in range(2 * len(line.strip()))]
    assert versions[0] == line and len(set(versions)) == len(versions)  # 2 × length copies, all different
    for v in versions:
        assert v[:2] == "\u3000\u3000" and v[-1] == "\r" and Counter(v) == Counter(line)  # blanks stay in place
    for kept in ("第二章 桥下浮尸", "“是。”", "短短的一句话"):
        assert variant(kept, 5) == kept  # headings, and lines too short to be taken for boilerplate


@pytest.mark.slow
def test_resume_benchmark_prints_its_report(tmp_path):
    """Run with the tiny preset in place of small, which takes minutes, and one layout (their code path is one)."""
    spec = importlib.util.spec_from_file_location("bench_resume", ROOT / "benchmarks" / "resume.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    layout = "1 process, ZeRO-2"
    args = {"corpus": SAMPLE_DIR, "steps": 2, "preset": "tiny", "layouts": [layout]}
    report = bench.run(type("Args", (), args)(), tmp_path)
    assert report["preset"] == "tiny" and report["checkpoint_mb"] > 0 and report["resumed_at_step"] == 2
    assert [name for name in bench.LAYOUTS if name in report] == [layout]
    assert report[layout]["convert_and_load_seconds"] > 0
    assert 0 <= report[layout]["max_loss_difference"] < 1e-2


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_without_thulac(tmp_path):
    """benchmarks/gpu.py --smoke in its CPU form, where thulac cannot be imported (as on the GPU machine, which lacks
    it): every function of the check runs, so that a GPU session never finds it broken."""
    shim = tmp_path / "no-thulac"
    shim.mkdir()
    (shim / "thulac.py").write_text('raise ImportError("the GPU check must not need thulac")\n', encoding="utf-8")
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", "--json", str(out), "--work",
                           str(tmp_path / "work")],
                          cwd=ROOT, env={**train_env(), "PYTHONPATH": str(shim)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report == json.loads(done.stdout)
    assert report["device"] == "cpu" and report["thulac_imported"] is False and report["smoke"] is True
    for run in (report["trainer"], report["bare"]):
        assert run["tokens_per_s"] > 0 and 0 <= run["data_wait_fraction"] < 1
    assert any("scaled_dot_product" in op for op in report["sdpa_kernels"])
    # a CPU is deterministic, --deterministic or not: the default resume is bitwise
    assert report["resume"]["default"] == {"bitwise_equal": True, "max_loss_difference": 0.0}
    assert report["sample"]["batch_1"]["sample_py_tokens_per_s"] > 0
    left_out = (report["compiled"]["trainer"], report["compiled"]["sdpa_kernels"], report["resume"]["deterministic"],
                report["sample"]["batch_8"])
    assert set(left_out) == {"left out by --smoke"}


@pytest.mark.slow
def test_serve_benchmark_accounts_for_every_client():
    cmd = [sys.executable, "benchmarks/serve.py", "--clients", "4", "--max-new-tokens", "32", "--queue", "1",
           "--timeout", "120"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["completed"] + report["refused"] == 4 and report["failed"] == [], report
    assert report["completed"] >= 2  # one generating, one waiting: never refused
    assert 0 < report["ttft_p50_s"] <= report["ttft_p95_s"] and report["tokens"] >= 32 * report["completed"] * 0.5
    assert report["tokens_per_s"] > 0 and report["sample_py"]["num_samples"] == 4
    assert report["ratio_to_sample_py"] == round(report["tokens_per_s"] / report["sample_py"]["tokens_per_s"], 3)


@pytest.mark.slow
def test_tokenizer_benchmark_compares_at_equal_flops_on_a_held_out_novel(tmp_path, sample_text):
    """--smoke: a one-layer model, 3 char-model steps of FLOPs, characters against BPE on the sample split into
    novels (c.txt held out); the JSON the README's table is made from, and a verdict by its rule."""
    corpus = split_corpus(sample_text, tmp_path / "novels")
    cmd = [sys.executable, "benchmarks/tokenizer_choice.py", "--corpus", str(corpus), "--held-out", "c.txt",
           "--tokenizers", "char,bpe-12000", "--budgets", "3", "--smoke", "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    char, bpe = report["tokenizers"]["char"], report["tokenizers"]["bpe-12000"]
    assert char["chars_per_token"] == 1.0 and bpe["chars_per_token"] > 1.1 and bpe["vocab_size"] > char["vocab_size"]
    assert char["budgets"]["3"]["steps"] == 3 and bpe["flops_per_step"] > char["flops_per_step"]
    assert bpe["budgets"]["3"]["steps"] == round(3 * char["flops_per_step"] / bpe["flops_per_step"]) or \
        bpe["budgets"]["3"]["steps"] == 2  # equal FLOPs, at least 2 steps
    assert all(0 < r["budgets"]["3"]["held_out_bpc"] < 20 and r["prepare_cpu_s_per_mb"] > 0 for r in (char, bpe))
    bpcs = {name: r["budgets"]["3"]["held_out_bpc"] for name, r in report["tokenizers"].items()}
    best = min(bpcs.values())
    fast = min((n for n, b in bpcs.items() if b <= best + 0.05),
               key=lambda n: report["tokenizers"][n]["prepare_cpu_s_per_mb"])
    assert report["winner"] == {"3": fast}


def test_bpe_over_words_benchmark_compares_compression_on_a_held_out_novel(tmp_path, sample_text):
    """The sample split into novels (c.txt held out): both vocabularies learnt from the same cleaned text, the
    held-out text counted in tokens by each, and thulac's cost."""
    corpus = split_corpus(sample_text, tmp_path / "novels")
    cmd = [sys.executable, "benchmarks/bpe_over_words.py", "--corpus", str(corpus), "--held-out", "c.txt",
           "--vocab-size", "3000", "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["held_out_chars"] > 1000 and report["train_chars"] > report["held_out_chars"]
    for kind in ("bpe_over_runs", "bpe_over_words"):
        assert 1000 < report[kind]["vocab_size"] <= 3000 and report[kind]["chars_per_token"] > 1.0
    assert report["thulac_cpu_s_per_mb"] > 0
