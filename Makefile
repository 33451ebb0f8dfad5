# `make quickstart` and `make test` work on a fresh machine: they create .venv and install
# torch (CPU build, first, so nothing pulls CUDA wheels) and then this project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install quickstart test bench lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/selfee quickstart --config configs/quickstart.yaml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/collect_sharegpt.py --rows 200000
	$(PY) bench/augment_rate.py
	$(PY) bench/train_throughput.py
	$(PY) bench/revision_speed.py
	$(PY) bench/infer_throughput.py

lint: install
	$(VENV)/bin/ruff check platform jobs serve_apps tests bench

format: install
	$(VENV)/bin/ruff format platform jobs serve_apps tests bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
