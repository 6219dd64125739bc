# Two commands for a new user: `make test` and `make bench`. Both set up .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= default
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: test bench lint data venv clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp is rebuilt when pyproject.toml changes.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "== installing profl-bench with the dev extra into $(VENV) (torch comes from pip; first time takes a few minutes)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed-dev

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The tests see what a fresh machine has: no $$PROFL_DATA_DIR and, as root, Debian's
# Fashion-MNIST folder hidden under an empty one (a private mount namespace, DESIGN §6).
PYTEST := env -u PROFL_DATA_DIR $(BIN)/python -m pytest $(PYTEST_ARGS)
test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	@if [ -d $(FMNIST_DEB_DIR) ] && [ "$$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1; then \
	  echo "== pytest with $(FMNIST_DEB_DIR) hidden, as on a fresh machine"; \
	  unshare -m sh -c 'mount -t tmpfs -o size=1m,ro none $(FMNIST_DEB_DIR) && exec $(PYTEST)'; \
	else \
	  $(PYTEST); \
	fi

# Fashion-MNIST: Debian's package when apt is usable as root, else a torchvision download.
data: venv
	@if [ -f $(FMNIST_DEB_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "== Fashion-MNIST found in $(FMNIST_DEB_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)); then \
	  echo "== installed Debian's dataset-fashion-mnist into $(FMNIST_DEB_DIR)"; \
	else \
	  echo "== downloading Fashion-MNIST with torchvision into data/"; \
	  $(BIN)/profl data fetch fashion-mnist --data-dir data; \
	fi

bench: venv data
	$(BIN)/profl bench $(SUITE)

# Every GPU check of the memory probes (no case starts after 270 s; exit 2 without CUDA). Not CI.
# Options go in GPU_CHECK_ARGS, e.g. make gpu-check GPU_CHECK_ARGS='--case resnet18:grow:2'.
gpu-check: venv
	$(BIN)/profl gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
