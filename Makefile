# The two commands a new user needs: `make demo` and `make test`. Each creates .venv and installs what it needs.
#   make demo       explain a few generated images with the embedded model -> demo.png
#   make test       the layering contracts (lint-imports), then every test, the slow ones and the lessons too;
#                   it also installs what the cross-checks need (torch, onnx, onnxruntime, safetensors, dask),
#                   so that they run rather than skip
#   make test-fast  the tests not marked slow
#   make lessons    open the lesson notebooks (lessons/) in JupyterLab, installed into .venv on first use
#   make finetune-fixtures  rewrite tests/fixtures/finetunes with Keras, tf2onnx and torch.onnx (their own venv)
#   make finetune-fullsize  the 224 x 224 VGG16 fine-tune through Keras, tf2onnx and fbi_ref (same venv)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: demo test test-fast lint lessons clean finetune-fixtures finetune-fullsize

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lessons]'
	touch $(STAMP)

# The cross-checks' packages: optional extras of fbi_ref, needed by the tests only (torch 2.13.0 is a CPU wheel).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dask,crosscheck]'
	$(PY) -m pip install --quiet torch==2.13.0 || echo "make: torch is not installable here; its cross-checks will skip"
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/fbi-ref demo

lint: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

test: lint $(TEST_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lessons: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lessons,jupyter]'
	$(VENV)/bin/jupyter lab lessons/

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info .import_linter_cache

# Generator only: the tools that write the fine-tune fixtures live in a venv of their own, never in .venv.
FIXTURE_VENV := .venv-fixtures
FIXTURE_STAMP := $(FIXTURE_VENV)/.installed
$(FIXTURE_STAMP): tests/fixtures/finetunes/requirements.txt
	$(PYTHON) -m venv $(FIXTURE_VENV)
	$(FIXTURE_VENV)/bin/python -m pip install --quiet -r tests/fixtures/finetunes/requirements.txt
	touch $(FIXTURE_STAMP)

finetune-fixtures: $(FIXTURE_STAMP)
	$(FIXTURE_VENV)/bin/python tests/fixtures/finetunes/generate.py

# The full-size check (benchmarks/finetune_fullsize.py): a 224 x 224 VGG16 fine-tune built by Keras, exported by
# tf2onnx, read and explained by fbi_ref; FULLSIZE_DIR holds its files (about 250 MB) and report.md.
FULLSIZE_DIR ?= /tmp/fbi_ref_finetune_fullsize
finetune-fullsize: $(FIXTURE_STAMP) $(STAMP)
	$(FIXTURE_VENV)/bin/python benchmarks/finetune_fullsize.py build $(FULLSIZE_DIR)
	$(PY) benchmarks/finetune_fullsize.py check $(FULLSIZE_DIR)
