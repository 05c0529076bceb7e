# Two entry points: `make demo` and `make test`. Both bootstrap .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test check lint typecheck bench services fixtures clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime dependencies at the exact versions the images install (constraints.txt): the suite tests what ships.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/python fixtures/demo.py

# System services the tests start for themselves (on free ports): redis-server,
# promtool and Node's s3rver; the distribution's ffmpeg, which tests/test_distro_ffmpeg.py
# points RENDER_FFMPEG_PATH at; and the players tests/players.py plays renders with (GStreamer,
# headless Chromium). Installed here when missing so CI is self-sufficient.
GST_PKGS := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav
services:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq redis-server) >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { echo "installing promtool (Debian prometheus)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null; }
	@command -v ffmpeg >/dev/null 2>&1 || { echo "installing the distribution's ffmpeg (refused by the worker: too old)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg) >/dev/null; }
	@command -v gst-launch-1.0 >/dev/null 2>&1 && gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 || { \
	  echo "installing GStreamer (qtdemux, avdec_h264) to play renders in tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GST_PKGS)) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GST_PKGS)) >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium to play renders in tests (headless)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null; }
	@test -x tests/node_modules/.bin/s3rver || (cd tests && npm install --no-audit --no-fund --silent)

lint: $(TEST_STAMP)
	$(BIN)/ruff check worker tests fixtures bench
	$(BIN)/ruff format --check worker tests fixtures bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

check: lint typecheck

test: $(TEST_STAMP) services check
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) out .fixtures-cache build dist *.egg-info
