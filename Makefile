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
# tiny preset with DeepSpeed ZeRO-2 + bf16 on $(NPROC) processes, consolidate the checkpoint with the lowest
# validation loss (the tiny model overfits a small corpus) into a Hugging Face folder and continue a prompt with it.
# The download is tried once per $(DEMO) directory: its outcome is remembered ($(DEMO)/.fetched or .fetch-failed).
# Run again, it goes on: a stopped run resumes, a finished one trains $(DEMO_STEPS) steps more, with any NPROC.
DEMO ?= demo
demo: install
	@mkdir -p $(DEMO); \
	if [ ! -e $(DEMO)/.fetched ] && [ ! -e $(DEMO)/.fetch-failed ]; then \
		echo "demo: downloading six public-domain classics into $(DEMO)/corpus (log: $(DEMO)/fetch.log)"; \
		if $(BIN)/python tools/fetch_corpus.py $(DEMO)/corpus --timeout 15 --retries 0 > $(DEMO)/fetch.log 2>&1; \
		then touch $(DEMO)/.fetched; else touch $(DEMO)/.fetch-failed; fi; \
	fi; \
	if [ -e $(DEMO)/.fetched ]; then corpus=$(DEMO)/corpus; else corpus=sample/corpus; \
		echo "demo: no download (no network, or it failed: $(DEMO)/fetch.log; rm $(DEMO)/.fetch-failed to try" \
			"again): using the shipped sample corpus"; fi; \
	$(BIN)/gpt-novel prepare $$corpus --out $(DEMO)/data --seq-len 256 --shard-size 1MB --force
	@done=$$(cat $(DEMO)/run/DONE 2>/dev/null || echo 0); steps=$$((done + $(DEMO_STEPS))); \
	[ "$$done" = 0 ] || echo "demo: $(DEMO)/run finished $$done steps: training on to step $$steps"; \
	$(BIN)/gpt-novel launch $(BIN)/accelerate launch --config_file launch/zero2.yaml --num_processes $(NPROC) \
		-m gpt_novel.train --config tiny --data $(DEMO)/data --run-dir $(DEMO)/run --max-steps $$steps
	$(BIN)/python tools/consolidate.py $(DEMO)/run $(DEMO)/hf --best
	@echo "demo: a continuation of the start of chapter 2 of the sample:"
	$(BIN)/python tools/sample.py $(DEMO)/hf --prompt "青石桥在镇子南面一里开外，" --max-new-tokens 80 --seed 1
	@echo "demo: run directory $(DEMO)/run (metrics.jsonl, loss.png, checkpoints/); model folder $(DEMO)/hf"
	@echo "demo: TensorBoard: $(BIN)/tensorboard --logdir $(DEMO)/run/tensorboard"
	@echo "demo: a web page to continue a novel with it: $(BIN)/gpt-novel serve $(DEMO)/hf (then open http://127.0.0.1:7860)"

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
