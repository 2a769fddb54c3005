#!/usr/bin/env bash
# Build Voile's CNI plugin (a static Go binary named `voile`, the plugin type) from this folder's
# pinned module (go.mod + go.sum), once per source hash, into
# ${VOILE_CACHE:-$HOME/.cache/voile}/bin/cni-<hash>/voile; print the binary's path.
# The folder holding it is what a runtime's CNI_PATH (cni_plugin_dirs) needs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${VOILE_CACHE:-$HOME/.cache/voile}"
hash="$(cd "$here" && cat go.mod go.sum $(ls ./*.go | sort) | sha256sum | cut -c1-16)"
dir="$cache/bin/cni-$hash"
out="$dir/voile"
if [[ ! -x "$out" ]]; then
  command -v go >/dev/null || { echo "cni: Go (>= 1.24) is needed to build the plugin" >&2; exit 1; }
  echo "cni plugin $hash: building" >&2
  mkdir -p "$dir"
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$out.tmp" \
      -ldflags "-s -w -X main.pluginVersion=$hash" .)
  mv "$out.tmp" "$out"
else
  echo "cni plugin $hash: cached at $out" >&2
fi
echo "$out"
