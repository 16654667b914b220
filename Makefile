# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench bench-quick bench-workers bench-peers bench-peers-setup soak clean

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

# wrk against the floor servers and the gateway, interleaved; not part of `make test`.
# The full matrix takes about an hour (bench.run prints its estimate first); see bench/README.md.
# Extra options: make bench BENCH_ARGS='--batching 32:2000 --gateway-env GATEWAY_THREADS=16'
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: sudo apt-get install wrk"; exit 2; }
	$(BIN)/python -m bench.run --seconds 10 --rounds 3 --out bench/results/latest.md $(BENCH_ARGS)
	$(BIN)/python -m bench.outcome_pipeline --out bench/results/outcomes.md

# The must-show cases only, 3 s runs: a few minutes, for development.
bench-quick: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: sudo apt-get install wrk"; exit 2; }
	$(BIN)/python -m bench.run --seconds 3 --rounds 3 --out bench/results/quick.md \
	    --cases 'digits b1 predict-json c1,digits b1 predict-json c8,mlp b1 predict-json c32,mlp b32 v2-binary c1' \
	    $(BENCH_ARGS)

# gunicorn worker class and threads per worker, compared in one interleaved run (about 12 min).
# The gateway beside the floor, MLServer and KServe (bench/versus.py); the peers run from their
# own virtualenvs under .bench-peers/ (their pins clash with ours), made by bench-peers-setup.
bench-peers-setup:
	test -x .bench-peers/mlserver/bin/python || python3 -m venv .bench-peers/mlserver
	.bench-peers/mlserver/bin/pip install --quiet 'mlserver==1.7.*' 'onnxruntime>=1.17' 'uvloop<0.21'
	test -x .bench-peers/kserve/bin/python || python3 -m venv .bench-peers/kserve
	.bench-peers/kserve/bin/pip install --quiet 'kserve==0.21.*' 'onnxruntime>=1.17'

bench-peers: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: sudo apt-get install wrk"; exit 2; }
	$(BIN)/python -m bench.versus --seconds 5 --rounds 3 --out bench/results/versus.md $(BENCH_ARGS)

bench-workers: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: sudo apt-get install wrk"; exit 2; }
	$(BIN)/python -m bench.worker_config --out bench/results/workers.md $(BENCH_ARGS)

# A 10-minute soak of one `gateway serve` under mixed load (bench/soak.py); not part of `make test`.
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; exits non-zero on a failed check.
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10 --out bench/results/soak.md

clean:
	rm -rf $(VENV) .demo build *.egg-info
