# Voile: `make lab` and `make test` do all set-up on a fresh machine (as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTHON      ?= python3
VOILE_CACHE ?= $(HOME)/.cache/voile
export VOILE_CACHE

# Debian packages the data path, the tests and the lab need.
APT_PACKAGES := openvswitch-switch openvswitch-common iproute2 iputils-ping iperf3 tcpdump \
                ethtool procps psmisc util-linux ca-certificates lua5.1
PYTEST_ARGS ?=

.PHONY: help setup apt venv tools test test-unit test-functional test-e2e lab lab-down \
        lint fmt clean bench

help:
	@echo "make lab    - set up, then start a multi-host Voile on this machine"
	@echo "make test   - set up, then run the whole suite (unit, functional, e2e)"
	@echo "make lint   - ruff, mypy --strict, import-linter"
	@echo "make setup  - only install what is missing (idempotent)"

setup: apt venv tools

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else echo "apt: all packages present"; fi
	@command -v go >/dev/null || { echo "setup: Go (>= 1.24) is needed to build the control plane" >&2; exit 1; }

$(VENV)/.stamp-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp-installed

# Pinned Go builds (etcd, kube-apiserver, helm), cached in $(VOILE_CACHE)/bin by version.
tools:
	@hack/controlplane/build.sh all
	@hack/helm/build.sh >/dev/null

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-functional: setup
	$(PY) -m pytest tests/functional $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lab: setup
	hack/lab-demo.sh

lab-down: venv
	$(VENV)/bin/voile lab down

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# -- Install artefacts (issue 7): the chart renders manifests/, podman builds the image ----------
.PHONY: manifests manifests-check image test-image

manifests:            ## re-render manifests/voile.yaml from charts/voile (and crds/)
	hack/manifests.sh

manifests-check:      ## fail when manifests/ is stale (also checked by tests/e2e/test_install.py)
	hack/manifests.sh --check

image: venv           ## localhost/voile:<version>: debootstrap base + podman build (installs podman)
	hack/image/build.sh

test-image: venv      ## slow: build the image, run both commands inside it
	VOILE_IMAGE_TEST=1 $(PY) -m pytest tests/e2e/test_image.py $(PYTEST_ARGS)
