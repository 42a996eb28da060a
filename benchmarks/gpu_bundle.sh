#!/usr/bin/env bash
# Everything the GPU check (benchmarks/gpu.py) needs on a GPU machine without network, built here: wheels of what
# its Python (3.12 with torch+CUDA, transformers, accelerate, tensorboard, safetensors) lacks, and a character-
# vocabulary dataset at seq len 1024 (nothing in the check needs thulac). Into gpu-bundle/ (git-ignored, < 64 MiB):
#
#   bash benchmarks/gpu_bundle.sh            # here, with network to PyPI (make gpu-bundle)
#   pip install --no-index --no-deps gpu-bundle/wheels/*.whl && python benchmarks/gpu.py --data gpu-bundle/data
#
# The corpus is ../shared/corpus when present (a few MB of text: enough samples of 1024 characters), else the
# shipped sample, which is too short for seq len 1024 and gets 256.
set -euo pipefail
OUT=${1:-gpu-bundle}
PY=${PYTHON:-.venv/bin/python}
rm -rf "$OUT"
mkdir -p "$OUT/wheels"
# DeepSpeed publishes a source distribution only: build its (pure Python, ops compiled at first use) wheel here.
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT/wheels" \
  "deepspeed==$("$PY" -c 'from importlib.metadata import version; print(version("deepspeed"))')"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" hjson msgpack ninja py-cpuinfo einops pydantic pydantic-core annotated-types typing-inspection \
  jsonargparse docstring-parser matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
if [ -d ../shared/corpus ]; then corpus=../shared/corpus; seq=1024; else corpus=sample/corpus; seq=256; fi
"$PY" -m gpt_novel prepare "$corpus" --out "$OUT/data" --tokenizer char --seq-len "$seq" --force
du -sh "$OUT" "$OUT/wheels" "$OUT/data"
