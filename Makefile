# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv when missing and installs what it needs; reruns skip the install.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

.PHONY: run test lint bench clean chromium

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip wheel

# runtime only: onnxruntime + OpenCV + numpy + FastAPI; no torch
$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# everything: runtime, training (ultralytics, torch) and test tools
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[train,dev]'
	touch $@ $(VENV)/.installed-run

# the case queue, API and review page on 127.0.0.1:8000 with the default model and a SQLite store in data/
run: $(VENV)/.installed-run
	$(VENV)/bin/streetwatch serve --demo --data-dir data

# the review page's browser test drives Debian's chromium (Playwright, never its own browser download)
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install it (apt-get install chromium) for the review page test"; fi; }

test: $(VENV)/.installed-test chromium
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

bench: $(VENV)/.installed-test
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/serve_batching.py

clean:
	rm -rf out .pytest_cache .ruff_cache
