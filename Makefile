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

UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
# uv installs the packages in ~2 minutes where pip took 4.5-6; pip installs uv and torch (its config may
# point at a local torch wheel, which uv would not read), bytecode is compiled at install, certificates come
# from the platform's store: why each, docs/architecture.md "Pitfalls of this stack". compileall skips, as
# pip does, the few torch test files that use newer syntax.
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
SITE_PACKAGES = $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
UV_INSTALL := $(UV) pip install --quiet --python $(PY) --compile-bytecode --system-certs

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile uv==$(UV_VERSION) '$(TORCH_PIN)' 2>&1 | $(PIP_FILTER)
	$(PY) -m compileall -q -j 0 $(SITE_PACKAGES)/torch >/dev/null || true
	$(UV_INSTALL) -e '.[test]'
	$(PY) -c "import torch, transformers, ray, prefect, prefect_ray, zarr, s3fs, pyarrow, pydantic"
	touch $@

# The interop extra (SAELens and its ~40 dependencies) only for the tests that open our SAEs in SAELens.
$(VENV)/.interop: $(VENV)/.installed
	$(UV_INSTALL) -e '.[test,interop]'
	$(PY) -c "import sae_lens"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/scopeflow run $(CONFIG)

# The latent browser's test drives Debian's chromium (tests/browser.py): installed here, never assumed.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_CHROMIUM := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

$(CHROMIUM):
	$(APT_CHROMIUM) >/dev/null || { $(SUDO) apt-get update -qq && $(APT_CHROMIUM) >/dev/null; }

# Several workers on 2 cores: the integration scenarios wait more than they compute (tests/conftest.py).
test: $(VENV)/.interop $(CHROMIUM)
	$(PY) -m pytest -q -n 3 --dist loadscope --no-loadscope-reorder

clean:
	rm -rf runs/tiny
