# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p .demo
	cd .demo && ../$(BIN)/gateway demo

lint: $(STAMP)
	$(BIN)/ruff check gateway registry models tests bench wsgi.py
	$(BIN)/mypy gateway registry

test: lint
	$(BIN)/pytest

# wrk against the floor server and the gateway, interleaved; not part of `make test`.
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)"; exit 2; }
	$(BIN)/python -m bench.run --seconds 10 --rounds 3 --out bench/results/latest.md

clean:
	rm -rf $(VENV) .demo build *.egg-info
