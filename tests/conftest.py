"""Shared fixtures: the shipped sample corpus, the optional ../shared corpus, and one prepared data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_novel.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample" / "corpus"
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def sample_text() -> str:
    return next(SAMPLE_DIR.glob("*.txt")).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One segmentation cache for the session: thulac runs once per chapter text across tests."""
    return tmp_path_factory.mktemp("cache")


def run_prepare(inputs: list[Path], out: Path, cache: Path, *extra: str) -> int:
    return main(["prepare", *map(str, inputs), "--out", str(out), "--cache-dir", str(cache), *extra])


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory, cache_dir) -> Path:
    """The sample corpus prepared with small samples and shards, so every split has several shards."""
    out = tmp_path_factory.mktemp("data") / "sample"
    assert run_prepare([SAMPLE_DIR], out, cache_dir, "--seq-len", "64", "--shard-size", "8KB", "--workers", "1") == 0
    return out
