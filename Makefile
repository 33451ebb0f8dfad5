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

.PHONY: install quickstart test bench lint format clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/selfee quickstart --config configs/quickstart.yaml $(ARGS)

test: install chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The demo's browser test drives Debian's chromium package through Playwright.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium (browser test)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "could not install chromium: the browser test will fail (apt-get install chromium)"

bench: install
	$(PY) bench/collect_sharegpt.py --rows 200000
	$(PY) bench/html_to_text.py
	$(PY) bench/augment_rate.py
	$(PY) bench/train_throughput.py
	$(PY) bench/revision_speed.py
	$(PY) bench/infer_throughput.py
	$(PY) bench/serve_load.py
	$(PY) bench/serve_abuse.py

lint: install
	$(VENV)/bin/ruff check platform jobs serve_apps tests bench

format: install
	$(VENV)/bin/ruff format platform jobs serve_apps tests bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
