"""`gpt-novel prepare` when things go wrong: a planted cache, a second writer, odd inputs, mixed encodings, early
errors, a full disk. Each ends in a good output or one line on stderr, never a traceback or a half-written output."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pickle
import pickletools
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import opencc
import pytest
import webdataset as wds
from conftest import ROOT, SAMPLE_DIR, run_prepare

from gpt_novel import prepare
from gpt_novel.data import clean, novels
from gpt_novel.data.vocab import Vocab

FAST = ("--tokenizer", "char", "--seq-len", "64", "--workers", "1")


def _novel(tmp_path: Path, sample_text: str, name: str = "in") -> Path:
    inputs = tmp_path / name
    inputs.mkdir()
    (inputs / "novel.txt").write_text(sample_text, encoding="utf-8")
    return inputs


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _one_line(err: str, *parts: str) -> None:
    """One line besides the warnings, which say what was read before the error."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert all(p in err for p in parts), err


def _intact(out: Path) -> None:
    """A complete output: every shard the manifest lists, with its sha256, and a tokenizer that loads."""
    manifest = json.loads((out / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    assert len(Vocab.load(out / "tokenizer")) == manifest["tokenizer"]["vocab_size"]


# --- the per-file cache holds JSON, never pickles ------------------------------------------------------------------


class _Evil:
    """Unpickling this creates the marker file: what a planted cache entry could do to a pickle-reading prepare."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_a_planted_pickle_in_the_cache_is_never_executed(tmp_path, sample_text):
    inputs, cache = _novel(tmp_path, sample_text), tmp_path / "cache"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]  # read, never run
    assert ("SHORT_BINUNICODE", "open") in ops and ("REDUCE", None) in ops  # a call of open() when unpickled
    sha = hashlib.sha256((inputs / "novel.txt").read_bytes()).hexdigest()
    entry = novels.read_cache_path(sha, False, str(cache))
    entry.parent.mkdir(parents=True)
    for path in (entry, entry.with_suffix(".pkl")):  # where prepare reads, and the name it used to read
        path.write_bytes(payload)
    assert run_prepare([inputs], tmp_path / "d", cache, *FAST) == 0
    assert not marker.exists()
    assert _report(tmp_path / "d")["files"][0]["chapters"] == 6
    assert novels.FileResult.from_json(entry.read_text(encoding="utf-8")).chapters  # recomputed and rewritten


@pytest.mark.parametrize("entry", [b"{", b"[]", b'{"path": 1}', b"[" * 100_000, b"\xff\xfe",
                                   json.dumps({**json.loads(novels.FileResult("x").to_json()),
                                               "chapters": [1, 2]}).encode()],
                         ids=["truncated", "list", "foreign", "deep", "binary", "wrong-types"])
def test_a_damaged_or_foreign_cache_entry_is_recomputed(tmp_path, sample_text, entry):
    inputs, cache = _novel(tmp_path, sample_text), tmp_path / "cache"
    sha = hashlib.sha256((inputs / "novel.txt").read_bytes()).hexdigest()
    path = novels.read_cache_path(sha, False, str(cache))
    path.parent.mkdir(parents=True)
    path.write_bytes(entry)
    assert run_prepare([inputs], tmp_path / "d", cache, *FAST) == 0
    assert _report(tmp_path / "d")["files"][0]["chapters"] == 6


def test_file_result_round_trips_through_json():
    result = novels.FileResult("a.txt", encoding="gbk", plausibility=0.97, chars_in=9, lines_recoded=2,
                                chapters=["第一章"], warnings=["w"], repeated=[["0123456789abcdef", True]],
                                distinct_chars="一章第")
    result.removed.update(ads=3, toc=4)
    back = novels.FileResult.from_json(result.to_json())
    assert back == result and isinstance(back.removed, type(result.removed))


# --- one writer per output ------------------------------------------------------------------------------------------

def _gated(gate: Path) -> dict:
    """The environment of a prepare that holds its output's lock and waits at its first file until `gate` exists,
    in its pool workers too (tests/gate/sitecustomize.py)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests" / "gate"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, GPT_NOVEL_TEST_GATE=str(gate))


def _prepare_command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(inputs), "--out", str(out), "--no-cache", *FAST, *extra]


def test_a_second_prepare_into_the_same_out_is_refused_naming_the_holder(tmp_path, sample_text):
    inputs, out, gate = _novel(tmp_path, sample_text), tmp_path / "d", tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-m", "gpt_novel", *_prepare_command(inputs, out)], cwd=ROOT,
                             env=_gated(gate), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / ".d.lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / ".d.lock").exists(), first.communicate()
        second = subprocess.run([sys.executable, "-m", "gpt_novel", *_prepare_command(inputs, out, "--seed", "9")],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        _one_line(second.stderr, f"--out {out} is in use by pid {first.pid} on {socket.gethostname()}")
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    _intact(out)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1234  # the first one's, not the second's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "gate", "gate.waiting", "in"]  # no lock or partial


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_prepares_lock_and_leftovers_are_cleaned_and_others_left_alone(tmp_path, sample_text, capsys):
    inputs, dead = _novel(tmp_path, sample_text), _dead_pid()
    host = socket.gethostname()
    (tmp_path / ".d.lock").write_text(json.dumps({"host": host, "pid": dead, "start": None, "token": "t"}))
    ours = [f".d.partial-{host}-{dead}-0123456789abcdef", ".d.partial-4242", f".d.old-{host}-{dead}-0123456789abcdef"]
    others = [".other.partial-4242", ".d.x.partial-4242", ".d.partial-notes"]
    (tmp_path / "d").mkdir()  # an existing output, so the set-aside old copy is not the only one
    (tmp_path / "d" / "manifest.json").write_text("{}")
    for name in ours + others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "junk.txt").write_text("x")
    assert run_prepare([inputs], tmp_path / "d", tmp_path / "cache", *FAST, "--force") == 0
    err = capsys.readouterr().err
    assert "taking over the stale lock" in err and err.count("left by a prepare that was interrupted") == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(others)
    _intact(tmp_path / "d")


def test_a_dataset_set_aside_by_an_interrupted_publish_is_put_back(tmp_path, sample_text, capsys):
    inputs, out, cache = _novel(tmp_path, sample_text), tmp_path / "d", tmp_path / "cache"
    assert run_prepare([inputs], out, cache, *FAST) == 0
    out.rename(tmp_path / f".d.old-{socket.gethostname()}-{_dead_pid()}-0123456789abcdef")
    assert run_prepare([inputs], out, cache, *FAST) == 0
    captured = capsys.readouterr()
    assert "putting back" in captured.err and "nothing to do" in captured.out
    _intact(out)


# --- inputs: the output itself, unreadable files and directories, pipes, symbolic links -------------------------------


def test_an_output_inside_an_input_directory_is_never_read(tmp_path, sample_text, capsys):
    inside, cache = _novel(tmp_path, sample_text, "inside"), tmp_path / "cache"
    out = inside / "data"
    assert run_prepare([inside], out, cache, *FAST) == 0
    assert run_prepare([inside], out, cache, *FAST) == 0
    assert "nothing to do" in capsys.readouterr().out  # tokenizer/vocab.txt did not become a new input
    assert run_prepare([inside], out, cache, *FAST, "--force") == 0
    assert [Path(f["path"]).name for f in _report(out)["files"]] == ["novel.txt"]


def _refuse_to_open(monkeypatch, name: str) -> None:
    """Root opens a chmod 000 file anyway, so the refusal of open() is simulated for that one file."""
    real = io.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)


def test_an_unreadable_file_is_refused_with_its_reason(tmp_path, sample_text, capsys, monkeypatch):
    inputs = _novel(tmp_path, sample_text)
    (inputs / "secret.txt").write_text(sample_text, encoding="utf-8")
    _refuse_to_open(monkeypatch, "secret.txt")
    assert run_prepare([inputs], tmp_path / "d", tmp_path / "cache", *FAST) == 0
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"warning: skipping {inputs / 'secret.txt'}: cannot read: Permission denied\n" in err
    files = {Path(f["path"]).name: f for f in _report(tmp_path / "d")["files"]}
    assert files["secret.txt"] == {"path": str(inputs / "secret.txt"), "status": "refused",
                                   "reason": "cannot read: Permission denied"}
    assert files["novel.txt"]["chapters"] == 6


def test_unreadable_directories_and_pipes_are_listed_as_refused(tmp_path, sample_text, capsys, monkeypatch):
    inputs = _novel(tmp_path, sample_text)
    (inputs / "locked").mkdir()
    os.mkfifo(inputs / "pipe.txt")
    real_scandir = os.scandir

    def scandir(path="."):
        # root lists a chmod 000 directory anyway: the refusal is simulated (rmtree scans by file descriptor)
        if isinstance(path, (str, os.PathLike)) and Path(path) == inputs / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert run_prepare([inputs], tmp_path / "d", tmp_path / "cache", *FAST) == 0
    monkeypatch.undo()
    captured = capsys.readouterr()
    report = _report(tmp_path / "d")
    assert report["paths_refused"] == [
        {"path": str(inputs / "locked"), "reason": "cannot list the directory: Permission denied"},
        {"path": str(inputs / "pipe.txt"), "reason": "not a regular file (a pipe, socket or device)"},
    ]
    assert report["totals"]["paths_refused"] == 2 and "Traceback" not in captured.err
    assert f"warning: skipping {inputs / 'locked'}: cannot list the directory" in captured.err
    assert f"REFUSED {inputs / 'pipe.txt'}: not a regular file" in captured.out


def test_a_symlinked_directory_is_read_and_a_loop_reported(tmp_path, sample_text, capsys):
    books, inputs = _novel(tmp_path, sample_text, "books"), tmp_path / "in"
    inputs.mkdir()
    (inputs / "books").symlink_to(books, target_is_directory=True)
    (books / "loop").symlink_to(inputs, target_is_directory=True)
    assert run_prepare([inputs], tmp_path / "d", tmp_path / "cache", *FAST) == 0
    report = _report(tmp_path / "d")
    assert [f["path"] for f in report["files"]] == [str(inputs / "books" / "novel.txt")]
    assert report["input_warnings"] == [f"{inputs}/books/loop: symbolic link loop back to {inputs}; not followed"]
    assert "symbolic link loop" in capsys.readouterr().err


# --- mixed encodings reach the shards without mojibake -------------------------------------------------------------


def _decoded_stream(out: Path) -> str:
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["path"]) for s in manifest["splits"]["train"]["shards"]]
    samples = [x["tokens.npy"] for x in wds.WebDataset(urls, shardshuffle=False).decode()]
    return Vocab.load(out / "tokenizer").decode(np.concatenate([samples[0]] + [s[1:] for s in samples[1:]]))


@pytest.mark.parametrize(("major", "minor"), [("gbk", "utf-8"), ("big5", "utf-8"), ("utf-8", "gbk")])
def test_mixed_encoding_lines_reach_the_shards_as_written(tmp_path, sample_text, major, minor):
    text = opencc.OpenCC("s2t").convert(sample_text) if "big5" in (major, minor) else sample_text
    text = "".join(ch for ch in text if ch.encode(major, errors="ignore") and ch.encode(minor, errors="ignore"))
    lines = text.split("\n")
    body = text.index("第一章")  # front matter is cleaned away; the end of the last chapter is the dropped tail
    chosen = [i for i, line in enumerate(lines) if len(line) > 30 and text.index(line) > body][:-2:8]
    data = b"\n".join(line.encode(minor if i in chosen else major) for i, line in enumerate(lines))
    legacy = major if minor == "utf-8" else minor
    mojibake = [lines[i].encode(minor).decode(legacy if minor == "utf-8" else "utf-8", errors="replace")
                for i in chosen]
    if minor == "utf-8":  # guard: decoding the whole file as its main encoding really gives this mojibake
        assert mojibake[0].strip() in data.decode(major, errors="replace")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mixed.txt").write_bytes(data)
    out = tmp_path / "d"
    assert run_prepare([tmp_path / "in"], out, tmp_path / "cache", *FAST, "--seq-len", "8", "--val-ratio", "0") == 0
    stream = _decoded_stream(out)
    assert len(chosen) >= 10 and set(stream) <= set(text) | {"\n"}  # not one character that the text lacks
    for i, wrong in zip(chosen, mojibake, strict=True):
        assert clean.normalize(lines[i]) in stream and clean.normalize(wrong) not in stream
    (f,) = _report(out)["files"]
    assert (f["encoding"], f["lines_recoded"]) == (major, len(chosen))
    assert f"{len(chosen)} line(s) decoded as {minor}: the file mixes encodings" in f["warnings"]


# --- errors that can be known before segmentation come before it; a full disk -----------------------------------


@pytest.fixture
def no_segmentation(monkeypatch):
    def segment_step(*args, **kwargs):
        pytest.fail("segmentation ran although the error was known before it")

    monkeypatch.setattr(prepare.stages, "segment_step", segment_step)


def test_one_chapter_with_a_val_split_fails_before_segmentation(tmp_path, sample_text, capsys, no_segmentation):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "short.txt").write_text("青石镇下了七天的雨。\n阿福撑着伞走过石桥。\n" * 20, encoding="utf-8")
    assert run_prepare([tmp_path / "in"], tmp_path / "d", tmp_path / "cache", "--seq-len", "8") == 2
    _one_line(capsys.readouterr().err, "only one chapter in the corpus", "(use --val-ratio 0)")
    assert not (tmp_path / "d").exists()


def test_a_vocabulary_too_small_for_the_characters_fails_before_segmentation(tmp_path, sample_text, capsys,
                                                                              no_segmentation):
    inputs = _novel(tmp_path, sample_text)
    distinct = len(set(clean.normalize(sample_text[sample_text.index("第一章"):])) - {"\n"})
    assert run_prepare([inputs], tmp_path / "d", tmp_path / "cache", "--vocab-size", "100") == 2
    err = capsys.readouterr().err
    _one_line(err, "--vocab-size 100 is too small: the corpus has ", "distinct characters, so it must be at least")
    got = int(err.split("the corpus has ")[1].split()[0])
    assert abs(got - distinct) < 50  # the corpus's characters after cleaning (the front matter is cut)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_and_leaves_no_partial_output(tmp_path, capsys, monkeypatch, code):
    def add(writer, samples):
        (writer.out_dir / "half.tar").parent.mkdir(parents=True, exist_ok=True)
        (writer.out_dir / "half.tar").write_bytes(b"x" * 100)
        raise OSError(code, os.strerror(code), str(writer.out_dir / "half.tar"))

    monkeypatch.setattr(prepare.shards.ShardWriter, "add", add)
    (tmp_path / "work").mkdir()
    out = tmp_path / "work" / "d"
    assert run_prepare([SAMPLE_DIR], out, tmp_path / "cache", *FAST) == 2
    err = capsys.readouterr().err
    _one_line(err, "gpt-novel prepare: error: disk full while writing ", "/half.tar: ", " bytes free")
    # no output, no partial build, no lock; the steps done so far are kept for the run after space is freed
    assert [p.name for p in (tmp_path / "work").iterdir()] == [".d.work"]
    assert not [p for p in (tmp_path / "work" / ".d.work").rglob("*") if ".tmp-" in p.name]
    assert (tmp_path / "work" / ".d.work" / "segment" / "p00000" / "DONE.json").exists()


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(proc.name))
    return found


def test_a_sigkilled_prepare_takes_its_pool_workers_with_it(tmp_path, sample_text):
    """The workers block in the read step (the gate never opens) when their parent is killed: they end with it,
    where they used to wait on their call queue forever, and so does multiprocessing's resource tracker. They were
    spawned, not forked (their command line is multiprocessing's spawn_main)."""
    inputs, gate = _novel(tmp_path, sample_text), tmp_path / "gate"
    (inputs / "second.txt").write_text(sample_text, encoding="utf-8")
    cmd = [sys.executable, "-m", "gpt_novel", *_prepare_command(inputs, tmp_path / "d", "--workers", "2")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_gated(gate), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "gate.waiting").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len([pid for pid in children if b"spawn_main" in _cmdline(pid)]) == 2 and proc.poll() is None
        proc.kill()
        assert proc.wait() == -9
    finally:  # a failed check must not leave a prepare waiting at its gate for good
        gate.touch()
        proc.wait(timeout=60)
    deadline = time.time() + 10
    while [pid for pid in children if _alive(pid)] and time.time() < deadline:
        time.sleep(0.05)
    assert [pid for pid in children if _alive(pid)] == []


def test_the_pool_is_spawned_so_a_lock_held_here_is_free_in_its_workers():
    """prepare may run threads when it starts its pool (tqdm's monitor, the tokenizers pool after a BPE training):
    a forked worker would get a copy of any lock they hold, held for good. Spawned workers import afresh, and are
    children of this process (what `die_with_parent` checks)."""
    import held_lock

    from gpt_novel.data.workers import LazyPool, ordered_map

    with held_lock.LOCK, LazyPool(2) as pool:
        assert list(ordered_map(pool, held_lock.take, range(2))) == [(True, os.getpid())] * 2


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
