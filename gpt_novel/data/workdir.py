"""The work directory of `prepare`: each step's output per partition, written atomically with a completion marker.

A step's output for partition p is the directory `STEP/pNNNNN/`, built in a hidden sibling named for its writer
and renamed into place once its `DONE.json` is written; reduce steps write `STEP/all/`. The marker records the
step's key (a hash of everything the output depends on: its inputs' keys, the options it reads, the code) and the
sha256 of every file in the output. An output is reused only when its key matches and every file still has its
digest, so a run killed at any point, or a Slurm task that failed, costs only the outputs that are not complete,
and a changed input or option redoes exactly the outputs that depend on it.

Everything here is JSON, JSON lines or numpy arrays loaded with `allow_pickle=False`: nothing read back runs code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from gpt_novel.data.shards import sha256_file

DONE = "DONE.json"
ALL = "all"


def key_of(*parts: object) -> str:
    """A step key: the sha256 of its parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def part_name(part: int | str) -> str:
    return part if isinstance(part, str) else f"p{part:05d}"


class WorkDir:
    """Step outputs under `root`: `output(step, part, key)` builds one, `done(step, part, key)` says whether a
    complete one with that key exists, `info(step, part)` returns the facts its marker holds."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, step: str, part: int | str = ALL) -> Path:
        return self.root / step / part_name(part)

    def done(self, step: str, part: int | str, key: str, files: tuple[str, ...] | None = None) -> bool:
        """Whether a complete output with this key is there and its files (those named, or all) have the digests
        the marker recorded. A reader checks only what it reads: the merge does not hash every chapter text."""
        marker = self._marker(step, part)
        if marker is None or marker.get("key") != key:
            return False
        directory = self.path(step, part)
        try:
            recorded = marker["files"]
            return all(sha256_file(directory / name) == recorded[name] for name in files or recorded)
        except (OSError, AttributeError, TypeError, KeyError):
            return False

    def info(self, step: str, part: int | str = ALL) -> dict:
        marker = self._marker(step, part)
        if marker is None:
            raise FileNotFoundError(f"{self.path(step, part)} is not complete")
        return marker["info"]

    def _marker(self, step: str, part: int | str) -> dict | None:
        try:
            marker = json.loads((self.path(step, part) / DONE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = isinstance(marker, dict) and isinstance(marker.get("files"), dict) and isinstance(marker.get("info"), dict)
        return marker if ok else None

    @contextlib.contextmanager
    def output(self, step: str, part: int | str, key: str, info: dict) -> Iterator[Path]:
        """Yield an empty directory to write the output in; on success fill `info` into its marker and put it in
        place (replacing an older output); on failure remove it."""
        final = self.path(step, part)
        tmp = final.parent / f".{final.name}.tmp-{owner_tag()}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            write_json(tmp / DONE, {"key": key, "files": files, "info": info})
            replace_dir(tmp, final, final.parent / f".{final.name}.old-{owner_tag()}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_unfinished(self, step: str, part: int | str) -> None:
        """Builds of this output left by a writer that died (call only where no other writer can be at work)."""
        final = self.path(step, part)
        pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-.*")
        for path in final.parent.iterdir() if final.parent.is_dir() else []:
            if pattern.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: Path, final: Path, aside: Path) -> None:
    """Put the directory `tmp` in place of `final` by renames only: an old `final` is moved to `aside` first and
    removed once the new one is in place, so a reader sees the old directory or the new one, never a mix."""
    if final.exists():
        final.rename(aside)
        tmp.rename(final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(final)


def owner_tag() -> str:
    """host-pid-random: build directories of two writers never share a name, even across hosts or pid reuse."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}-{secrets.token_hex(8)}"


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_records(path: Path) -> Iterator:
    """One JSON value per line (text with newlines inside stays one record)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
