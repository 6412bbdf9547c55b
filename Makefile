# Two commands do all the set-up: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: lab test conformance fuzz install example bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/00-tour.ipynb

test: $(STAMP)
	$(PY) -m pytest tests --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg -q

# coremltools' own layer suites against the runtime, every case (tests/conformance/README.md);
# `make test` runs a slice of them
conformance: $(STAMP)
	$(PY) -m pytest tests/conformance --conformance=full -q -p no:randomly

# fuzz model files for SECONDS seconds (tests/fuzz/); crashes and report.json go to artifacts/fuzz/;
# `make test` runs a fixed-seed slice (tests/test_fuzz.py)
SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --seconds $(SECONDS)

example: $(STAMP)
	$(PY) -m workbench.examples.build_example

# the runtime against PyTorch eager on four networks (README "Speed"); OPENBLAS_CORETYPE /
# OPENBLAS_L2_SIZE are unset for this command only (where set, they can slow a current numpy)
bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
