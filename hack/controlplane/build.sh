#!/usr/bin/env bash
# Build the pinned control-plane binaries from the Go module proxy, once per version.
#
#   hack/controlplane/build.sh [kube-apiserver|etcd|all]
#
# Binaries land in ${VOILE_CACHE:-$HOME/.cache/voile}/bin/<name>-<version>; a binary that is already
# there is reused, so only the first build on a machine pays for it. The versions come from the go.mod
# files beside this script (committed with their go.sum), so the cache key follows the pins.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${VOILE_CACHE:-$HOME/.cache/voile}"
mkdir -p "$cache/bin"

pinned() { # module go.mod -> version
  awk -v m="$1" '{ for (i = 1; i < NF; i++) if ($i == m && $(i+1) ~ /^v[0-9]/) { print $(i+1); exit } }' "$2"
}

build_apiserver() {
  local v; v="$(pinned k8s.io/kubernetes "$here/kube-apiserver/go.mod")"
  local out="$cache/bin/kube-apiserver-$v"
  if [[ -x "$out" ]]; then echo "kube-apiserver $v: cached at $out"; return; fi
  local minor="${v#v1.}"; minor="${minor%%.*}"
  echo "kube-apiserver $v: building (several minutes on a cold machine)"
  (cd "$here/kube-apiserver" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$v \
                -X k8s.io/component-base/version.gitMajor=1 \
                -X k8s.io/component-base/version.gitMinor=$minor" \
      k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$out.tmp" "$out"
}

build_etcd() {
  local v; v="$(pinned go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")"
  local out="$cache/bin/etcd-$v"
  if [[ -x "$out" ]]; then echo "etcd $v: cached at $out"; return; fi
  echo "etcd $v: building"
  (cd "$here/etcd" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "-s -w" \
      go.etcd.io/etcd/server/v3)
  mv "$out.tmp" "$out"
}

case "${1:-all}" in
  kube-apiserver) build_apiserver ;;
  etcd) build_etcd ;;
  all) build_etcd; build_apiserver ;;
  *) echo "usage: $0 [kube-apiserver|etcd|all]" >&2; exit 2 ;;
esac
