# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv when missing and installs what it needs; reruns skip the install.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

.PHONY: run test lint bench clean system-deps

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

# the case queue, API and review page on 127.0.0.1:8000 with the default model, a SQLite store in data/
# and the demo cameras (pipeline/samples/cameras-demo.yaml) feeding it
run: $(VENV)/.installed-run
	$(VENV)/bin/streetwatch serve --demo --data-dir data

# Debian packages the tests drive for real: chromium (the review page's browser test, via Playwright,
# never its own browser download) and GStreamer's gst-rtsp-server with the system Python (the RTSP
# stream tests). Installed when missing and apt-get can run as root; otherwise the tests say what is missing.
SYSTEM_DEBS := chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
system-deps:
	@{ test -x /usr/bin/chromium && /usr/bin/python3 tests/pipeline/rtsp_server.py --check 2>/dev/null; } || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_DEBS) >/dev/null; \
	  else echo "note: install $(SYSTEM_DEBS) for the browser and RTSP tests"; fi; }

test: $(VENV)/.installed-test system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

bench: $(VENV)/.installed-test
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/serve_batching.py
	$(PY) benchmarks/streams.py
	$(PY) benchmarks/audit.py

clean:
	rm -rf out .pytest_cache .ruff_cache
