# Two commands do all the set-up: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: lab test install example clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/00-tour.ipynb

test: $(STAMP)
	$(PY) -m pytest tests --nbval notebooks -q

example: $(STAMP)
	$(PY) -m workbench.examples.build_example

clean:
	rm -rf $(VENV) .pytest_cache
