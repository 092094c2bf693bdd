# Two commands for a new user: `make run` (install + the tiny suite end to end) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny.yaml
# The machine's pip config lists index folders that may not exist; their warnings are noise.
PIP_FILTER := { grep -v "^WARNING: Location 'file://" || true; }

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | $(PIP_FILTER)
	$(PY) -c "import torch, transformers, ray, prefect, prefect_ray, zarr, s3fs, pyarrow, pydantic"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/scopeflow run $(CONFIG)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs/tiny
