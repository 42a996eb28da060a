"""gpt-novel as a package: its configs inside it, the checkout's copies the same files, the tested versions enforced,
and a wheel that works in a fresh virtualenv from a directory outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_DIR, train_env

from gpt_novel import cli, universal, versions
from gpt_novel.config import ACCELERATE_CONFIGS, DEEPSPEED_CONFIGS, PRESETS, deepspeed_json
from gpt_novel.errors import UserError


@pytest.mark.parametrize(("top", "ours", "pattern"), [("ds_configs", DEEPSPEED_CONFIGS, "*.json"),
                                                      ("launch/presets", PRESETS, "*.yaml"),
                                                      ("launch", ACCELERATE_CONFIGS, "*.yaml")])
def test_the_checkouts_config_folders_hold_the_packages_files(top, ours, pattern):
    names = sorted(p.name for p in (ROOT / top).glob(pattern))
    assert names and names == sorted(p.name for p in ours.glob(pattern))
    assert all((ROOT / top / name).read_bytes() == (ours / name).read_bytes() for name in names)


def test_deepspeed_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("zero3", "zero3.json", "ds_configs/zero3.json"):
        assert deepspeed_json(name) == str(DEEPSPEED_CONFIGS / "zero3.json")
    (tmp_path / "zero3.json").write_text("{}")
    assert deepspeed_json("zero3.json") == "zero3.json"  # a file of the user's wins
    with pytest.raises(UserError, match=r"DeepSpeed config not found: other/zero3.json \(ours, by name: zero1, zero2"):
        deepspeed_json("other/zero3.json")


def test_a_deepspeed_outside_the_tested_range_is_refused_in_one_line(monkeypatch, capsys, sample_data, tmp_path):
    wanted = versions.supported("deepspeed")
    assert wanted.startswith("deepspeed") and "<" in wanted  # an upper bound, from pyproject.toml
    monkeypatch.setattr(versions.metadata, "version", lambda name: "99.0.0" if name == "deepspeed" else "1")
    assert cli.main(["train", "--config", "tiny", "--data", str(sample_data), "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gpt-novel train: error: DeepSpeed 99.0.0 is installed; gpt-novel is tested with {wanted}: install one in "
        f"that range (pip install '{wanted}')"]
    assert not (tmp_path / "r").exists()


def test_the_bridge_refuses_a_universal_checkpoint_laid_out_otherwise(tmp_path):
    (tmp_path / "zero").mkdir()
    with pytest.raises(UserError, match=r"universal checkpoint is not laid out as gpt-novel knows \(it wrote no "
                                        r"zero/optimizer_state.pt\): use a DeepSpeed in the tested range deepspeed"):
        universal.bridge_stages(tmp_path, 3, {})


def test_the_tools_are_thin_executables_and_subcommands_too(capsys):
    for tool in ("consolidate.py", "sample.py"):
        path = ROOT / "tools" / tool
        assert os.access(path, os.X_OK) and len(path.read_text().splitlines()) < 12
        env = {**train_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the venv activated
        result = subprocess.run([str(path), "--help"], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    for command in ("consolidate", "sample"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: gpt-novel {command} ")


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_prepares_trains_and_consolidates_outside_the_checkout(tmp_path, cache_dir):
    """The wheel pip builds from the checkout (what `pip install git+URL` builds too), installed into a new
    virtualenv; the libraries come from the tested set, this test's own environment, through a path entry (never
    the checkout: its editable install is a .pth in there, which a path entry does not run)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gpt_novel", source / "gpt_novel", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gpt_novel-*.whl")
    members = zipfile.ZipFile(wheel).namelist()
    assert {"gpt_novel/configs/presets/tiny.yaml", "gpt_novel/configs/deepspeed/zero2.json",
            "gpt_novel/configs/accelerate/zero2.yaml", "gpt_novel/static/serve.html"} <= set(members)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "tested-set.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    env = {**train_env(), "PYTHONPATH": ""}

    def run(*args: str) -> str:
        result = subprocess.run([str(venv / "bin" / "gpt-novel"), *args], cwd=work, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    where = subprocess.run([str(python), "-c", "import gpt_novel; print(gpt_novel.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))
    run("prepare", str(SAMPLE_DIR), "--out", "data", "--tokenizer", "char", "--seq-len", "32", "--cache-dir",
        str(cache_dir))
    trained = run("train", "--config", "tiny", "--data", "data", "--run-dir", "run", "--max-steps", "2",
                  "--warmup-steps", "1", "--save-every", "2", "--eval-every", "2", "--sample-every", "2",
                  "--progress", "false")
    assert "done: 2 steps" in trained
    run("consolidate", "run", "hf")
    assert (work / "hf" / "model.safetensors").is_file()
    recorded = (work / "run" / "checkpoints" / "step-00000002" / "config.yaml").read_text()
    assert f"deepspeed: {venv}" in recorded and "configs/deepspeed/zero2.json" in recorded
