# ctxpatch: set-up, tests and the demo. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; any other
	# version would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,hf]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ctxpatch demo

test: $(STAMP)
	$(BIN)/ruff check symbolic numeric tests proofs
	$(BIN)/ctxpatch codegen --check
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check symbolic numeric tests proofs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
