#!/usr/bin/env bash
# Build the pinned control-plane binaries from the Go module proxy, once per version.
#
#   hack/controlplane/build.sh [kube-apiserver|kubelet|etcd|crictl|all]
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

# k8s.io/kubernetes commands (kube-apiserver, kubelet) from their wrapper modules, all pinned to one
# version: a kubelet newer or older than the API server is not what the tests mean to run. Same
# flags for all, so Go's build cache shares the packages they have in common.
build_k8s() { # command
  local cmd="$1"
  local v; v="$(pinned k8s.io/kubernetes "$here/$cmd/go.mod")"
  local api; api="$(pinned k8s.io/kubernetes "$here/kube-apiserver/go.mod")"
  if [[ "$v" != "$api" ]]; then
    echo "$cmd: $here/$cmd/go.mod pins k8s.io/kubernetes $v, kube-apiserver $api" >&2; exit 1
  fi
  local out="$cache/bin/$cmd-$v"
  if [[ -x "$out" ]]; then echo "$cmd $v: cached at $out"; return; fi
  local minor="${v#v1.}"; minor="${minor%%.*}"
  echo "$cmd $v: building (several minutes on a cold machine)"
  local start=$SECONDS
  (cd "$here/$cmd" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$v \
                -X k8s.io/component-base/version.gitMajor=1 \
                -X k8s.io/component-base/version.gitMinor=$minor" \
      "k8s.io/kubernetes/cmd/$cmd")
  mv "$out.tmp" "$out"
  echo "$cmd $v: built in $((SECONDS - start)) s"
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

# crictl, to look at a kubelet node's containerd the way kubelet does (pods, containers, logs, exec,
# `crictl rmp -fa` to stop and remove every sandbox through CNI DEL). Small: 28 MB, about 50 s.
build_crictl() {
  local v; v="$(pinned sigs.k8s.io/cri-tools "$here/crictl/go.mod")"
  local out="$cache/bin/crictl-$v"
  if [[ -x "$out" ]]; then echo "crictl $v: cached at $out"; return; fi
  echo "crictl $v: building"
  (cd "$here/crictl" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" \
      -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$v" sigs.k8s.io/cri-tools/cmd/crictl)
  mv "$out.tmp" "$out"
}

case "${1:-all}" in
  kube-apiserver|kubelet) build_k8s "$1" ;;
  etcd) build_etcd ;;
  crictl) build_crictl ;;
  all) build_etcd; build_k8s kube-apiserver; build_k8s kubelet; build_crictl ;;
  *) echo "usage: $0 [kube-apiserver|kubelet|etcd|crictl|all]" >&2; exit 2 ;;
esac
