# One entry point for people and CI: `make test` and `make demo` both install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned and installed first: its CPU wheel is what this pin resolves to on machines without CUDA. The rest
# is the exact set CI tests (constraints.txt); pyproject.toml gives the ranges a pip install accepts.
TORCH  := torch==2.13.0

.PHONY: install constraints test test-fast coverage lint demo bench gpu-check gpu-bundle clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Record the set a fresh install resolves today as the tested one (then run `make test` before committing it).
constraints:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH) && .venv-lock/bin/pip install -q '.[dev]'
	( echo "# The exact set CI tests (make constraints writes it; make install installs with it)."; \
	  .venv-lock/bin/pip freeze --all --exclude pip --exclude gpt-novel | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' ) > constraints.txt
	rm -rf .venv-lock

lint: install
	$(BIN)/ruff check gpt_novel tools tests benchmarks

# The whole suite, slow multi-process and whole-corpus tests included (they skip when ../shared is absent).
test: lint
	$(BIN)/pytest -q --durations=25

# Everything but the tests marked slow, for a quick local loop.
test-fast: lint
	$(BIN)/pytest -q -m 'not slow'

# Line coverage of gpt_novel/ over the whole suite, the processes it starts included (pyproject.toml's
# [tool.coverage.run]). COVERAGE_FILE is absolute: tests start processes in other directories.
coverage: lint
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/pytest -q --cov --cov-report=term

# GPUs when present (one process each), else 2 CPU processes.
NPROC  ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 2)
DEMO_STEPS ?= 400

# Prepare a corpus (the Project Gutenberg classics when the network is there, else the shipped sample), train the
# tiny preset with DeepSpeed ZeRO-2 + bf16 on $(NPROC) processes (running it again resumes the run), consolidate the
# newest checkpoint into a Hugging Face folder and continue a prompt with it.
demo: install
	@mkdir -p demo; echo "demo: downloading six public-domain classics into demo/corpus (log: demo/fetch.log)"; \
	if $(BIN)/python tools/fetch_corpus.py demo/corpus --timeout 15 --retries 0 > demo/fetch.log 2>&1; then \
		corpus=demo/corpus; \
	else \
		echo "demo: no network (or a download failed, see demo/fetch.log): using the shipped sample corpus"; \
		corpus=sample/corpus; \
	fi; \
	$(BIN)/gpt-novel prepare $$corpus --out demo/data --seq-len 256 --shard-size 1MB --force
	$(BIN)/gpt-novel launch $(BIN)/accelerate launch --config_file launch/zero2.yaml --num_processes $(NPROC) \
		-m gpt_novel.train \
		--config tiny --data demo/data --run-dir demo/run --max-steps $(DEMO_STEPS)
	$(BIN)/python tools/consolidate.py demo/run demo/hf
	@echo "demo: a continuation of the start of chapter 2 of the sample:"
	$(BIN)/python tools/sample.py demo/hf --prompt "青石桥在镇子南面一里开外，" --max-new-tokens 80 --seed 1
	@echo "demo: run directory demo/run (metrics.jsonl, loss.png, checkpoints/); model folder demo/hf"
	@echo "demo: TensorBoard: $(BIN)/tensorboard --logdir demo/run/tensorboard"
	@echo "demo: a web page to continue a novel with it: $(BIN)/gpt-novel serve demo/hf (then open http://127.0.0.1:7860)"

bench: install
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/sample.py

# The GPU check (issue 14): on a GPU the small preset at seq len 1024 against a bare loop, resume, sampling; without
# one the same code on the CPU with a tiny model. JSON on stdout and in gpu-check.json.
gpu-check: install
	$(BIN)/python benchmarks/gpu.py --json gpu-check.json

# What a GPU machine without network needs for the check (wheels, a character-vocabulary dataset): gpu-bundle/
gpu-bundle: install
	bash benchmarks/gpu_bundle.sh gpu-bundle

clean:
	rm -rf demo .pytest_cache
