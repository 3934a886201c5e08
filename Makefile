# velora: `make demo` runs the main job end to end; `make test` runs the test suite. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ORACLE_VENV := .oracle-venv
SHARED ?= ../shared

.PHONY: install oracle demo test bench clean

install: $(STAMP)

# The reference OFA implementation (ModelScope's, transformers 4.57), for parity tests and benchmarks.
oracle: $(ORACLE_VENV)/bin/python

$(ORACLE_VENV)/bin/python:
	ORACLE_VENV=$(abspath $(ORACLE_VENV)) bash $(SHARED)/oracle/oracle_env.sh

# torch is installed first and pinned: any other spec pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]' torch==2.13.0
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
	  || echo "note: Debian chromium not installed; the web-page test needs it"; }
	touch $(STAMP)

demo: install
	$(BIN)/velora demo

test: install oracle
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) $(ORACLE_VENV) demo_output .pytest_cache
