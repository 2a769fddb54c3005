# Voile: `make lab` and `make test` do all set-up on a fresh machine (as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTHON      ?= python3
VOILE_CACHE ?= $(HOME)/.cache/voile
export VOILE_CACHE

# Debian packages the data path, the tests and the lab need: OVS and network tools; the container
# runtimes the CNI plugin, the Docker driver and kubelet nodes are tested with (podman + runc + the
# reference CNI plugins, docker.io, containerd; docker.io pulls in iptables, which nothing of ours
# runs); busybox-static for the lab images; clang/llvm/libbpf/bpftool for eBPF programs;
# nftables and conntrack to inspect a host namespace's netfilter state.
APT_PACKAGES := openvswitch-switch openvswitch-common iproute2 iputils-ping iperf3 tcpdump \
                ethtool procps psmisc util-linux ca-certificates lua5.1 \
                podman runc containernetworking-plugins docker.io containerd busybox-static \
                clang llvm libbpf-dev bpftool nftables conntrack
PYTEST_ARGS ?=

.PHONY: help setup apt venv tools images bpf test test-unit test-functional test-e2e lab lab-down \
        lint fmt clean bench

help:
	@echo "make lab    - set up, then start a multi-host Voile on this machine"
	@echo "make test   - set up, then run the whole suite (unit, functional, e2e)"
	@echo "make lint   - ruff, mypy --strict, import-linter, gofmt + go vet (hack/cni)"
	@echo "make setup  - only install what is missing (idempotent)"

setup: apt venv tools images bpf

# The packages' services never start here: a policy-rc.d answering 101 ("action forbidden") keeps
# invoke-rc.d and deb-systemd-invoke from starting dockerd (which rewrites iptables unless run with
# --iptables=false) or containerd during the install (added for the install only when the machine
# has none), and on a systemd machine the units are disabled too. Voile runs private daemons only.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  if [ -d /run/systemd/system ]; then \
	    systemctl disable --now docker.socket docker.service containerd.service 2>/dev/null || true; \
	  fi; \
	else echo "apt: all packages present"; fi
	@if pgrep -a -x dockerd | grep -v -e '--iptables=false'; then \
	  echo "apt: warning: a dockerd without --iptables=false runs (above); it rewrites iptables" >&2; fi
	@command -v go >/dev/null || { echo "setup: Go (>= 1.24) is needed to build the control plane" >&2; exit 1; }

$(VENV)/.stamp-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp-installed

# Pinned Go builds (etcd, kube-apiserver, kubelet, helm, the CNI plugin), cached in $(VOILE_CACHE)/bin by version.
tools:
	@hack/controlplane/build.sh all
	@hack/helm/build.sh >/dev/null
	@hack/cni/build.sh >/dev/null

# Lab images without a registry (voile/lab/images.py): a busybox rootfs tar for podman/docker import
# and docker-archive tars of localhost/busybox:lab and localhost/pause:lab for `ctr images import`,
# cached in $(VOILE_CACHE)/images by busybox-static version.
images: apt venv
	@$(PY) -m voile.lab.images

# The eBPF datapath's programs (node-agent/voile_agent/datapath/ebpf/bpf/voile.c), compiled with
# clang -target bpf and cached in $(VOILE_CACHE)/bpf by source hash (the agent finds them there).
bpf: apt venv
	@$(PY) -m voile_agent.datapath.ebpf.build | sed 's/^/bpf: /'

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
	@if command -v go >/dev/null; then \
	  out="$$(gofmt -l hack/cni)"; [ -z "$$out" ] || { echo "gofmt: $$out" >&2; exit 1; }; \
	  (cd hack/cni && go vet ./...) && echo "go vet hack/cni: ok"; \
	fi

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
