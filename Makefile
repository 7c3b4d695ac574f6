# Set-up and everyday commands. `make demo` trains on the bundled corpus and samples;
# `make test` runs the test suite. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without an NVIDIA GPU the CPU build of torch is installed first, so the `torch>=2.3`
# range in setup.cfg is already satisfied and pip does not pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
TIME ?= 10m

.PHONY: install demo test test-fast bench clean

$(BIN)/charrnn: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing torch with CUDA from the package index"; \
	else \
	  $(BIN)/pip install -q --disable-pip-version-check "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	@touch $@

install: $(BIN)/charrnn
	@# The playground's browser test needs Chromium: on CI, as root, install it quietly (else the test skips).
	@if [ -n "$$CI" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then \
	  echo "Installing chromium and chromium-driver for tests/test_playground.py"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
	    || echo "Could not install chromium; the browser test will be skipped"; \
	fi

demo: install
	$(BIN)/charrnn train corpora/tinyshakespeare.txt --max-time $(TIME) --overwrite
	$(BIN)/charrnn sample -c checkpoints/tinyshakespeare --temp 0.8 --length 1000

# -n auto: one pytest worker per CPU (the tests run torch on one thread each).
test: install
	$(BIN)/python -m pytest -q -n auto

test-fast: install
	$(BIN)/python -m pytest -q -n auto -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
