# make demo   fresh machine: venv, install (CPU torch when there is no GPU), run recipes/demo.yaml end to end
# make test   fresh machine: venv, install with dev extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The CPU build of torch comes from pip's configured sources when they carry it, else from this index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
export HF_HUB_DISABLE_TELEMETRY := 1
export DS_BUILD_OPS := 0

.PHONY: install install-dev demo test test-all lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch goes in first: installed later as a dependency, pip would pick the multi-GB CUDA build.
$(VENV)/.torch: | $(BIN)/python
ifeq ($(HAS_GPU),yes)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
else
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.torch
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/aya-train recipe=demo

# The suite CI runs (~10 min on 2 cores); the multi-process chain and DeepSpeed tests add ~3 min.
test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --timeout=900 -m "not multiprocess" $(PYTEST_ARGS)

test-all: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --timeout=900 $(PYTEST_ARGS)

lock: install-dev
	(echo "# Exact versions CI and 'make' install (pip -c constraints.txt); ranges in pyproject.toml. Regenerate with 'make lock'."; \
	 $(BIN)/pip freeze --exclude-editable | grep -viE "^(aya-train|torch==)"; echo "torch==$(TORCH_VERSION)") > constraints.txt

clean:
	rm -rf $(VENV) runs
