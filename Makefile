# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv when missing and installs what it needs; reruns skip the install.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

.PHONY: run test lint bench clean

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

run: $(VENV)/.installed-run
	$(VENV)/bin/streetwatch detect pipeline/samples/photos --out out/detect

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

bench: $(VENV)/.installed-test
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/audit.py

clean:
	rm -rf out .pytest_cache .ruff_cache
