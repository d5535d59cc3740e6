# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv when missing and installs what it needs; reruns skip the install.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

.PHONY: run test lint bench clean rtsp-server

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

# The stream tests run a real RTSP server: GStreamer's gst-rtsp-server, driven by the system Python
# (Debian packages). Installed here when missing and apt-get can run (root); otherwise the tests say so.
RTSP_DEBS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
rtsp-server:
	@/usr/bin/python3 tests/pipeline/rtsp_server.py --check 2>/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(RTSP_DEBS); \
	  else echo "note: install $(RTSP_DEBS) for the RTSP stream tests"; fi; }

test: $(VENV)/.installed-test rtsp-server
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

bench: $(VENV)/.installed-test
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/streams.py

clean:
	rm -rf out .pytest_cache .ruff_cache
