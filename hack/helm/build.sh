#!/usr/bin/env bash
# Build the pinned helm CLI from the Go module proxy, once per version, into
# ${VOILE_CACHE:-$HOME/.cache/voile}/bin/helm-<version>; print the path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${VOILE_CACHE:-$HOME/.cache/voile}"
v="$(awk '{ for (i = 1; i < NF; i++) if ($i == "helm.sh/helm/v3" && $(i+1) ~ /^v[0-9]/) { print $(i+1); exit } }' "$here/go.mod")"
out="$cache/bin/helm-$v"
mkdir -p "$cache/bin"
if [[ ! -x "$out" ]]; then
  echo "helm $v: building" >&2
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" helm.sh/helm/v3/cmd/helm)
  mv "$out.tmp" "$out"
else
  echo "helm $v: cached at $out" >&2
fi
echo "$out"
