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

# Every benchmark at a small size (about 20 minutes of CPU on an idle 2-core machine; bench/RESULTS.md, "make
# bench"); each prints its rows as they are measured and appends them to bench/.cache/results/<bench>.jsonl. Left
# out here: the ONNX rows of export.py and quantize.py (exporting OFA-base size takes ~10 minutes on 2 cores) and
# bulk.py (minutes of its own): run them by name, e.g. `python bench/quantize.py --rows 'onnx-*'`.
bench: install oracle
	$(BIN)/python bench/convert.py --csv_rows 5000
	$(BIN)/python bench/coldstart.py --repeats 1
	$(BIN)/python bench/inference.py --examples 4 --repeats 2
	$(BIN)/python bench/quantize.py --calibration 2 --eval_images 2 --rounds 1 \
		--rows 'torch-fp32,torch-int8-default,torch-int8-plan'
	$(BIN)/python bench/train.py --steps 1
	$(BIN)/python bench/export.py --rounds 1 --repeats 1 --rows 'torch-fp32-*'
	$(BIN)/python bench/serve.py --preset small --requests 32 --concurrency 1 16
	$(BIN)/python bench/attack.py --rounds 3 --loris 100 --window 20 --guard 30

clean:
	rm -rf $(VENV) $(ORACLE_VENV) demo_output .pytest_cache
