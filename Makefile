# The two commands a new user needs: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lessons]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fbi-ref demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

# The lessons (lessons/*.ipynb) in JupyterLab, installed into .venv on first use.
.PHONY: lessons
lessons: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lessons,jupyter]'
	$(VENV)/bin/jupyter lab lessons/
