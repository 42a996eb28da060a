"""DeepSpeed's start-up as rank 0 tells it, in-process: the once-per-machine compile of its CPU op is announced
before it happens, and its "built successfully" line is dropped on every start; the op is checked with this
environment's own ninja, however the trainer was started."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from gpt_novel import parallel

FIRST_START = "first start on this machine: DeepSpeed is compiling its CPU communication op"


@pytest.fixture(autouse=True)
def _path(monkeypatch):
    """deepspeed_start may put this environment's directory first on PATH: undone after each test."""
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))


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


def _ninja(folder) -> Path:
    folder.mkdir(parents=True)
    (folder / "ninja").write_text("#!/bin/sh\n")
    (folder / "ninja").chmod(0o755)
    return folder / "ninja"


def test_the_op_is_checked_with_the_installed_ninja_from_any_shell(tmp_path, monkeypatch):
    """A shell without the venv activated finds the system's ninja first; another ninja version discards the
    build log and rebuilds the op (15 s here) each time the two alternate."""
    installed = parallel.installed_ninja()
    assert installed is not None and installed.is_file()  # DeepSpeed requires the ninja package
    system = _ninja(tmp_path / "usr" / "bin").parent
    monkeypatch.setenv("PATH", f"{system}{os.pathsep}/bin")
    parallel.ninja_of_this_environment()
    assert Path(shutil.which("ninja")).resolve() == installed
    path = os.environ["PATH"]
    parallel.ninja_of_this_environment()  # already first: PATH unchanged
    assert os.environ["PATH"] == path and path.endswith(f"{system}{os.pathsep}/bin")


def test_without_an_installed_ninja_the_path_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_ninja(tmp_path / 'bin').parent}:/bin")

    def not_installed(name: str):
        raise parallel.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(parallel.metadata, "distribution", not_installed)
    assert parallel.installed_ninja() is None
    parallel.ninja_of_this_environment()
    assert os.environ["PATH"] == f"{tmp_path / 'bin'}:/bin"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's first imports
@pytest.mark.parametrize("before", [None, "0"])
def test_nothing_compiles_while_deepspeed_imports_and_compiling_works_after(monkeypatch, before):
    def step(x):
        return x + 1

    if before is None:
        monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TORCHDYNAMO_DISABLE", before)
    with parallel.no_compile_at_import():
        assert torch.compile(step) is step  # a module-level torch.compile, as DeepSpeed's Muon has, does nothing
    assert os.environ.get("TORCHDYNAMO_DISABLE") == before
    assert torch.compile(step) is not step  # --compile, which comes after, compiles
