"""Checks of a Hugging Face GPT-2 folder (sample, serve, eval, `--init-from`) and of a tokenizer folder (`prepare
--tokenizer`) before anything loads them.

A folder may come from anywhere, and the libraries that read it answer a hostile one with a traceback (a config of
strings, a JSON nested 100,000 deep, a truncated safetensors file) or an allocation sized by the file (10^9
positions, a header length of 2^62). Here every file is read with a size cap, parsed, bounded in depth and checked
for what gpt-novel needs; the first problem is one line (`UserError`) naming the folder, the file and what is wrong.
Weights are safetensors only: a `pytorch_model.bin` is a pickle, which could run code when loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gpt_novel.data.vocab import TOKENIZER_FILES
from gpt_novel.errors import UserError

SHAPE = ("n_layer", "n_head", "n_embd", "n_positions")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
SIZES = {"n_layer": 1024, "n_head": 1024, "n_embd": 2**16, "n_positions": 2**20, "vocab_size": 2**24}
"""config.json's sizes and their upper bounds (each at least 1): far above any GPT-2, far below an allocation that
takes the machine down"""
CONFIG_BYTES = 2**20  # a GPT-2 config.json is about 1 KB: a file of megabytes is not one
FILE_BYTES = 256 * 2**20  # any other file read whole: the largest (tokenizer.json) in use are tens of MB
MAX_DEPTH = 64  # real configs and tokenizers nest under 10 levels; the tokenizers library stops at 128
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound on a header


def check_model_folder(path: Path, name: str) -> dict:
    """config.json (a GPT-2 of sane sizes), the safetensors weights and the tokenizer files of the model folder
    `path`, named `name` in messages; its config."""
    config = read_json(path / "config.json", name, CONFIG_BYTES)
    check_config(config, name)
    if (path / "generation_config.json").is_file():
        read_json(path / "generation_config.json", name, CONFIG_BYTES)
    check_weights(path, config, name)
    check_tokenizer_folder(path, name)
    return config


def check_tokenizer_folder(path: Path, name: str) -> None:
    """The tokenizer files of `path` (and its config.json, which transformers reads to pick a tokenizer class):
    bounded JSON objects, vocab.txt and merges.txt UTF-8 text."""
    for file in (*TOKENIZER_FILES, "config.json"):
        if not (path / file).is_file():
            continue
        if file.endswith(".json"):
            read_json(path / file, name, CONFIG_BYTES if file == "config.json" else FILE_BYTES)
        elif file.endswith(".txt"):
            read_text(path / file, name, FILE_BYTES)
        else:  # a sentencepiece model: binary, only its size is ours to bound
            _check_size(path / file, name, FILE_BYTES)


def read_json(path: Path, name: str, max_bytes: int) -> dict:
    """The JSON object in `path`: at most `max_bytes`, nested at most MAX_DEPTH deep, or one line saying why not."""
    text = read_text(path, name, max_bytes)
    try:
        value = json.loads(text)
        deep = _deeper_than(value, MAX_DEPTH)
    except RecursionError:  # the json module recurses once per level: a file deep enough stops it
        deep = True
    except ValueError as e:
        raise UserError(f"{name}: {path.name} is unreadable ({str(e).splitlines()[0]})") from None
    if deep:
        raise UserError(f"{name}: {path.name} is unreadable (nested more than {MAX_DEPTH} levels deep)")
    if not isinstance(value, dict):
        raise UserError(f"{name}: {path.name} holds a JSON {type(value).__name__}, not an object")
    return value


def read_text(path: Path, name: str, max_bytes: int) -> str:
    """`path` as UTF-8 text of at most `max_bytes`, or one line saying why not."""
    _check_size(path, name, max_bytes)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: {path.name} is unreadable (not UTF-8 at byte {e.start:,})") from None
    except OSError as e:
        raise UserError(f"{name}: {path.name} is unreadable ({e.strerror or e})") from None


def _check_size(path: Path, name: str, max_bytes: int) -> None:
    """Refuse a file by its size before any of it is read."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"{name}: {path.name} is unreadable ({e.strerror or e})") from None
    if size > max_bytes:
        raise UserError(f"{name}: {path.name} is {size:,} bytes, more than the {max_bytes:,} it may have")


def _deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep; iterative, so depth costs no recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        nested = [child for child in children if isinstance(child, (dict, list))]
        if nested and depth >= limit:
            return True
        stack += [(child, depth + 1) for child in nested]
    return False


def check_config(config: dict, name: str) -> None:
    """A GPT-2 whose sizes are whole numbers in range, its heads dividing its width: what transformers would
    otherwise answer with a traceback or a huge allocation."""
    if config.get("model_type") != "gpt2":
        raise UserError(f"{name} holds a {config.get('model_type')} model; gpt-novel trains GPT-2 (model_type gpt2)")
    for key, most in SIZES.items():
        value = config.get(key)
        if type(value) is not int or not 1 <= value <= most:  # bool, float and str are not sizes
            raise UserError(f"{name}: config.json's {key} is {json.dumps(value)}; it must be a whole number from 1 "
                            f"to {most:,}")
    if config["n_embd"] % config["n_head"]:
        raise UserError(f"{name}: config.json's n_embd {config['n_embd']} is not a multiple of its n_head "
                        f"{config['n_head']}")


def check_weights(path: Path, config: dict, name: str) -> None:
    """The weights are safetensors whose headers the library accepts, their embeddings of the config's sizes."""
    files = _weight_files(path, name)
    shapes = {tensor: shape for file in files for tensor, shape in check_safetensors(file, name).items()}
    expected = {"wte.weight": (config["vocab_size"], "vocab_size"), "wpe.weight": (config["n_positions"],
                                                                                   "n_positions")}
    for tensor, shape in shapes.items():
        rows, key = expected.get(tensor.removeprefix("transformer."), (None, None))
        if key is not None and list(shape) != [rows, config["n_embd"]]:
            raise UserError(f"{name}: config.json's {key} {rows} and n_embd {config['n_embd']} do not match the "
                            f"weights' {tensor} of shape {list(shape)}")


def _weight_files(path: Path, name: str) -> list[Path]:
    """model.safetensors, or the shards its index names (plain file names in the folder)."""
    if (path / WEIGHTS[0]).is_file():
        return [path / WEIGHTS[0]]
    if not (path / WEIGHTS[1]).is_file():
        pickled = (path / "pytorch_model.bin").exists()
        why = (" (its pytorch_model.bin is a pickle, which could run code: convert it to safetensors where you "
               "trust it, e.g. with transformers' save_pretrained)") if pickled else ""
        raise UserError(f"{name} has no model.safetensors{why}")
    shards = read_json(path / WEIGHTS[1], name, FILE_BYTES).get("weight_map")
    if not isinstance(shards, dict) or not shards:
        raise UserError(f"{name}: {WEIGHTS[1]} has no weight_map of tensors to files")
    for shard in shards.values():
        if not isinstance(shard, str) or Path(shard).name != shard or not (path / shard).is_file():
            raise UserError(f"{name}: {WEIGHTS[1]} names {json.dumps(shard)}, not a file of the folder")
    return [path / shard for shard in sorted(set(shards.values()))]


def check_safetensors(path: Path, name: str) -> dict[str, list[int]]:
    """Tensor name → shape of a safetensors file whose header length fits the file and MAX_HEADER_BYTES, and
    whose header (offsets, dtypes, shapes) the safetensors library accepts."""
    from safetensors import SafetensorError, safe_open

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{name}: {path.name} is unreadable ({e.strerror or e})") from None
    header = struct.unpack("<Q", head)[0] if len(head) == 8 else None  # the header's length, little-endian u64
    if header is not None and header > MAX_HEADER_BYTES:
        raise UserError(f"{name}: {path.name} has a header of {header:,} bytes, more than {MAX_HEADER_BYTES:,}")
    if header is None or header > size - 8:
        raise UserError(f"{name}: {path.name} is truncated ({size:,} bytes, less than its header"
                        f"{f' of {header:,} bytes' if header is not None else ''})")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {tensor: f.get_slice(tensor).get_shape() for tensor in f.keys()}
    except SafetensorError as e:
        raise UserError(f"{name}: {path.name} is truncated or damaged (safetensors: {str(e).splitlines()[0]})") \
            from None
