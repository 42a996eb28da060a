"""DeepSpeed's start-up as rank 0 tells it, in-process: the once-per-machine compile of its CPU op is announced
before it happens, and its "built successfully" line is dropped on every start."""

from __future__ import annotations

import pytest
import torch

from gpt_novel import parallel

FIRST_START = "first start on this machine: DeepSpeed is compiling its CPU communication op"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU op is built on hosts without GPUs only")
@pytest.mark.parametrize("is_main", [True, False])
def test_the_cpu_ops_first_build_is_said_once_by_rank_0(tmp_path, monkeypatch, capsys, is_main):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "empty"))  # a machine where it was never built
    with parallel.deepspeed_start(is_main):
        print("Loading extension module deepspeed_shm_comm...\nTime to load: 0.1 s; built successfully")
        print("DeepSpeed's other line")
    out = capsys.readouterr().out
    assert out.count(FIRST_START) == (1 if is_main else 0)
    assert "built successfully" not in out and "Loading extension module deepspeed_shm_comm...\n" in out
    assert out.endswith("DeepSpeed's other line\n")


def test_a_built_op_is_not_announced(tmp_path, monkeypatch, capsys):
    built = tmp_path / "ext" / parallel.SHM_OP
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    built.mkdir(parents=True)
    (built / f"{parallel.SHM_OP}.so").write_bytes(b"")
    with parallel.deepspeed_start(True):
        pass
    assert capsys.readouterr().out == ""
