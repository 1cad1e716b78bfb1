# fuchun — the two commands: `make demo` (set up everything, stylise the bundled example) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT := models/out
MODEL := $(OUT)/vgg16-max
MODEL_AVG := $(OUT)/vgg16-avg
TEST_MODEL := $(OUT)/test-random
EXPORT := cd models && ../$(PY) -m fuchun_export
CARGO ?= cargo

.PHONY: all venv models test-models build demo test test-python test-rust lint soak bench bench-quality peers bench-peers gpu-check clean

all: build models

venv: $(VENV)/.stamp
$(VENV)/.stamp: models/requirements.txt models/requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r models/requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r models/requirements-nodeps.txt
	touch $@

EXPORTER_SRC := $(wildcard models/fuchun_export/*.py)

models: $(MODEL)/manifest.json $(MODEL_AVG)/manifest.json
$(MODEL)/manifest.json: $(VENV)/.stamp $(EXPORTER_SRC)
	$(EXPORT) --weights hed --pooling max --out ../$(MODEL)
$(MODEL_AVG)/manifest.json: $(VENV)/.stamp $(EXPORTER_SRC)
	$(EXPORT) --weights hed --pooling avg --out ../$(MODEL_AVG)

# Small random-weight graph (channels / 8) for fast Rust tests.
test-models: $(TEST_MODEL)/manifest.json
$(TEST_MODEL)/manifest.json: $(VENV)/.stamp $(EXPORTER_SRC)
	$(EXPORT) --weights random --seed 1 --width-divisor 8 --quantiles 64 --out ../$(TEST_MODEL)

build:
	$(CARGO) build --release --locked

demo: models build
	mkdir -p out
	./target/release/fuchun stylize --content examples/tubingen.jpg --style examples/fuchun.jpg \
		--output out/tubingen_fuchun.png
	@echo "wrote out/tubingen_fuchun.png"

# House style: rustfmt (rustfmt.toml) and clippy with no warnings; part of `make test`.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

# Every test; the last line sums up both runners ("N passed, N failed").
test: models test-models lint
	@set -o pipefail; rm -f .test-log; \
	( cd models && ../$(PY) -m pytest -q tests ) 2>&1 | tee -a .test-log && \
	$(CARGO) test --release --locked --no-fail-fast 2>&1 | tee -a .test-log; status=$$?; \
	awk '/^test result:/ || / (passed|failed).* in [0-9.]+s/ { for (i = 2; i <= NF; i++) { \
	     if ($$i ~ /^passed/) p += $$(i-1); if ($$i ~ /^failed/) f += $$(i-1) } } \
	     END { printf "tests: %d passed, %d failed\n", p, f }' .test-log; rm -f .test-log; exit $$status

test-python: $(VENV)/.stamp
	cd models && ../$(PY) -m pytest -q tests

test-rust: models test-models
	$(CARGO) test --release --locked

# Long soak of `fuchun serve` (8 cameras, broker restarts; FUCHUN_SOAK_MINUTES, default 30). Not part of `make test`.
soak: models test-models
	$(CARGO) test --release --locked --test soak -- --ignored --nocapture

bench: models build
	./target/release/fuchun bench

# Quality bench: the 12 content/style pairs of src/lab/pairs.rs at 256 and 512 px with the CLI defaults, measured by
# palette, texture and structure (docs/quality.md); results, contact sheets and quality.json in out/quality.
# ≈ 1 hour on 2 cores; QUALITY_ARGS="--sizes 256 --profile daemon" for the daemon's per-style defaults.
bench-quality: models build
	./target/release/fuchun quality -o out/quality $(QUALITY_ARGS)

# The PyTorch implementation of the same objective (bench/peers/, its own venv with torch, ~5 GB; not needed by
# `make demo` or `make test`): installs it and runs its check of the exported loss and gradient against PyTorch.
# `make bench-peers` then prints the side-by-side table (fuchun, PyTorch, the graph through Python ONNX Runtime).
PEERS_VENV := bench/peers/.venv
peers: $(PEERS_VENV)/.stamp models build
	cd bench/peers && .venv/bin/python -m pytest -q test_check.py
$(PEERS_VENV)/.stamp: bench/peers/requirements.txt models/requirements.txt models/requirements-nodeps.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --disable-pip-version-check --no-cache-dir -q -r bench/peers/requirements.txt
	$(PEERS_VENV)/bin/python -m pip install --disable-pip-version-check --no-cache-dir -q --no-deps \
		-r models/requirements-nodeps.txt
	touch $@

bench-peers: peers
	./target/release/fuchun bench --peers

# On a Linux machine with an NVIDIA GPU and onnxruntime-gpu (not in CI): doctor, bench and stylize on CUDA and
# TensorRT (FP32, FP16) against the CPU. GPU_CHECK_ARGS="--binary PATH --ort-library PATH" skips the build.
gpu-check:
	scripts/gpu-check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(OUT) out target
