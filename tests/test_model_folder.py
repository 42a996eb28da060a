"""Hostile model folders, tokenizer folders and --device values: `gpt-novel sample`, `gpt-novel serve`, `train
--init-from` and `prepare --tokenizer` refuse each in one line (exit status 2, or a UserError before any process
group), never a traceback, before anything loads the folder. All in-process, on a 1-layer GPT-2 made here."""

from __future__ import annotations

import json
import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_DIR

from gpt_novel import generate, serve
from gpt_novel.cli import main
from gpt_novel.data.vocab import META_FILE, SPECIAL_TOKENS, Vocab
from gpt_novel.errors import UserError
from gpt_novel.model_folder import check_model_folder
from gpt_novel.pretrained import InitFolder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A sound model folder as tools/consolidate.py leaves it: a character vocabulary, a 1-layer GPT-2 of 32
    positions, safetensors."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Writing model shards" bar
    folder = tmp_path_factory.mktemp("folders") / "base"
    vocab = Vocab(list(SPECIAL_TOKENS) + list("青石镇的雨话说"), "char")
    vocab.save(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=vocab.mask, eos_token_id=vocab.cls)).save_pretrained(folder)
    return folder


def _config(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        (folder / "config.json").write_text(json.dumps({**config, **changes}), encoding="utf-8")
    return edit


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _huge_header(folder: Path) -> None:
    """A header length (the file's first 8 bytes, little-endian) of 2^62: refused before anything is allocated."""
    weights = folder / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", 2**62) + weights.read_bytes()[8:])


NESTED = b"[" * 100_000 + b"]" * 100_000  # json.loads recurses once per level: a RecursionError, unchecked
CASES = {  # case → (how the folder is spoiled, what the line says)
    "n_positions 10^9": (_config(n_positions=10**9), "config.json's n_positions is 1000000000; it must be a whole "
                                                     "number from 1 to 1,048,576"),
    "n_positions null": (_config(n_positions=None), "config.json's n_positions is null"),
    "n_positions 64.5": (_config(n_positions=64.5), "config.json's n_positions is 64.5"),
    "negative n_embd": (_config(n_embd=-16), "config.json's n_embd is -16"),
    "negative n_layer": (_config(n_layer=-1), "config.json's n_layer is -1"),
    "n_head 0": (_config(n_head=0), "config.json's n_head is 0"),
    "n_head not dividing n_embd": (_config(n_head=3), "config.json's n_embd 16 is not a multiple of its n_head 3"),
    "sizes as strings": (_config(n_embd="16", n_layer="1"), "config.json's n_layer is \"1\""),
    "vocab_size 10^10": (_config(vocab_size=10**10), "config.json's vocab_size is 10000000000"),
    "positions the weights lack": (_config(n_positions=1024), "config.json's n_positions 1024 and n_embd 16 do not "
                                                              "match the weights' transformer.wpe.weight of shape "
                                                              "[32, 16]"),
    "a list": (_write("config.json", b"[1, 2]"), "config.json holds a JSON list, not an object"),
    "another architecture": (_config(model_type="bert"), "holds a bert model; gpt-novel trains GPT-2"),
    "deeply nested config": (_write("config.json", NESTED), "config.json is unreadable (nested more than 64 "
                                                            "levels deep)"),
    "a config of megabytes": (_write("config.json", b" " * 5_000_000 + b"{}"), "config.json is 5,000,002 bytes, "
                                                                              "more than the 1,048,576"),
    "truncated safetensors": (_truncate, "model.safetensors is truncated or damaged (safetensors: "),
    "huge safetensors header": (_huge_header, "model.safetensors has a header of 4,611,686,018,427,387,904 bytes, "
                                              "more than 100,000,000"),
    "non-UTF-8 vocab.txt": (_write("vocab.txt", b"\xff\xfe[SEP]\n"), "vocab.txt is unreadable (not UTF-8 at byte 0)"),
    "deeply nested tokenizer.json": (_write("tokenizer.json", NESTED), "tokenizer.json is unreadable (nested"),
}


def _spoiled(base: Path, tmp_path: Path, case: str) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(base, folder)
    CASES[case][0](folder)
    return folder


def _one_line(capsys, start: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(start), err
    return err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("case", CASES)
def test_sample_and_serve_refuse_a_hostile_folder_in_one_line(base, tmp_path, capsys, case):
    folder = _spoiled(base, tmp_path, case)
    assert generate.main([str(folder), "--prompt", "青石", "--device", "cpu"], prog="gpt-novel sample") == 2
    assert CASES[case][1] in _one_line(capsys, f"gpt-novel sample: error: {folder}")
    assert serve.main([str(folder), "--port", str(_free_port()), "--device", "cpu"]) == 2  # no server starts
    assert CASES[case][1] in _one_line(capsys, f"gpt-novel serve: error: {folder}")


@pytest.mark.parametrize("case", CASES)
def test_init_from_refuses_a_hostile_folder_before_any_process_group(base, tmp_path, case):
    folder = _spoiled(base, tmp_path, case)
    with pytest.raises(UserError) as refused:
        InitFolder.load(folder)  # what the trainer's plan reads first of the folder, before any process group
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"--init-from {folder}") and CASES[case][1] in line


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_prepare_refuses_a_deeply_nested_tokenizer_file(base, tmp_path, capsys, name):
    folder = tmp_path / "tok"
    shutil.copytree(base, folder)
    (folder / name).write_bytes(NESTED)
    assert main(["prepare", str(SAMPLE_DIR), "--out", str(tmp_path / "d"), "--tokenizer", str(folder)]) == 2
    assert _one_line(capsys, "gpt-novel prepare: error: ").endswith(
        f"--tokenizer {folder}: {name} is unreadable (nested more than 64 levels deep)\n")
    assert not (tmp_path / "d").exists()


def test_prepare_refuses_tokenizer_metadata_without_a_kind(base, tmp_path, capsys):
    folder = tmp_path / "tok"
    shutil.copytree(base, folder)
    (folder / META_FILE).write_text("{}", encoding="utf-8")
    assert main(["prepare", str(SAMPLE_DIR), "--out", str(tmp_path / "d"), "--tokenizer", str(folder)]) == 2
    assert f"{META_FILE} and vocab.txt do not make a vocabulary (KeyError: 'kind')" in _one_line(capsys, "gpt-novel "
                                                                                                 "prepare: error: ")


@pytest.mark.parametrize(("device", "line"), [
    ("banana", "--device banana is not a device (cpu, cuda, cuda:1 …)"),
    ("meta", "--device meta is not a device (cpu, cuda, cuda:1 …)"),
    ("cuda", "--device cuda: CUDA is not available on this machine"),
    ("cuda:1", "--device cuda:1: CUDA is not available on this machine"),
])
def test_a_device_the_machine_lacks_is_one_line(base, capsys, monkeypatch, device, line):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    assert generate.main([str(base), "--prompt", "青石", "--device", device], prog="gpt-novel sample") == 2
    assert _one_line(capsys, "gpt-novel sample: error: ") == f"gpt-novel sample: error: {line}\n"
    assert serve.main([str(base), "--port", str(_free_port()), "--device", device]) == 2
    assert _one_line(capsys, "gpt-novel serve: error: ") == f"gpt-novel serve: error: {line}\n"


def test_a_sound_folder_passes_and_samples(base, capsys):
    assert check_model_folder(base, str(base))["n_positions"] == 32
    assert generate.main([str(base), "--prompt", "青石", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("青石")


def test_sharded_weights_are_checked_shard_by_shard(base, tmp_path):
    """A folder saved in shards passes; an index that names a file outside the folder is refused."""
    from transformers import GPT2LMHeadModel

    folder = tmp_path / "sharded"
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    GPT2LMHeadModel.from_pretrained(base).save_pretrained(folder, max_shard_size="2KB")
    assert not (folder / "model.safetensors").exists() and len(list(folder.glob("model-*.safetensors"))) > 1
    assert check_model_folder(folder, str(folder))["n_layer"] == 1
    index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../model.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(UserError, match=r'names "\.\./model\.safetensors", not a file of the folder'):
        check_model_folder(folder, str(folder))
