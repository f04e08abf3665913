# The two set-up commands of the README, plus helpers. Everything installs into .venv from pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OPS_STAMP := $(VENV)/.deepspeed-ops

# DeepSpeed compiles its CPU ops once; a stable cache keeps later runs (and the test suite) from rebuilding.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions/electra-ray
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast install benchmarks clean

demo: $(STAMP)
	$(BIN)/electra run --config configs/demo.yaml

test: $(OPS_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

install: $(STAMP)

# torch first and pinned: the CPU wheel on these machines. An unpinned torch pulled in by another package
# would be a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Multi-worker CPU runs (the slow tests) use DeepSpeed's shared-memory all-reduce op, which compiles in about
# 3 minutes on 2 cores, once per environment. It is built here, as part of setting up the test environment,
# rather than by whichever test first starts two workers. `make demo` (one worker) never needs it.
$(OPS_STAMP): $(STAMP)
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b is None or b.load()"
	touch $@

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/model_step.py

clean:
	rm -rf outputs .pytest_cache
