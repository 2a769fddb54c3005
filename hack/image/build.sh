#!/usr/bin/env bash
# Build the Voile image (operator and agent in one) with podman and no image registry:
#   1. a Debian bookworm root made with debootstrap from the machine's Debian mirror, imported
#      with `podman import` as localhost/voile-base:bookworm (cached: built once);
#   2. the voile wheel (pip wheel --no-deps);
#   3. the CNI plugin, a static binary (hack/cni/build.sh);
#   4. `podman build -f Containerfile` on top: Open vSwitch tools, iproute2, ethtool, python3, the
#      wheel with its dependencies from PyPI, and the plugin in /opt/voile/cni (the agent's
#      DaemonSet copies it onto each node).
# Installs podman, runc and debootstrap with apt when missing. Prints the image name.
# Environment: VOILE_IMAGE (default localhost/voile:<version>), VOILE_REBUILD_BASE=1.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/hack/image"
export CONTAINERS_CONF="$here/containers.conf"
version="$(awk -F'"' '/^version *=/ { print $2; exit }' "$repo/pyproject.toml")"
image="${VOILE_IMAGE:-localhost/voile:$version}"
base="localhost/voile-base:bookworm"
say() { echo "image: $*" >&2; }

need=()
for cmd in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${cmd%%:*}" >/dev/null || need+=("${cmd#*:}")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

# The Debian mirror this machine's apt uses (deb822 or one-line format).
mirror="$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | awk '{print $2}' | grep -v security | head -1 || true)"
[[ -n "$mirror" ]] || mirror="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' \
                                 /etc/apt/sources.list 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d /tmp/voile-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT

if [[ "${VOILE_REBUILD_BASE:-0}" == 1 ]] || ! podman image exists "$base"; then
  say "debootstrap bookworm from $mirror"
  start=$SECONDS
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/root" "$mirror" >&2
  cat >"$work/root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  tar -C "$work/root" --numeric-owner -cf "$work/base.tar" .
  rm -rf "$work/root"
  podman import --change 'CMD ["/bin/bash"]' "$work/base.tar" "$base" >&2
  say "base $base made in $((SECONDS - start)) s"
fi

say "wheel"
mkdir -p "$work/context"
py="$repo/.venv/bin/python"
[[ -x "$py" ]] || py=python3
"$py" -m pip wheel -q --no-deps --wheel-dir "$work/context" "$repo" >&2

say "CNI plugin"
cp "$("$repo/hack/cni/build.sh")" "$work/context/voile-cni"

# pip inside the build trusts what the host trusts (a TLS-inspecting proxy's CA, if any); the
# bundle is a build secret, so it does not end up in the image.
cacert="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"

say "podman build $image"
previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
start=$SECONDS
podman build --network=host --secret "id=cacert,src=$cacert" \
  --build-arg "BASE=$base" --build-arg "VERSION=$version" \
  -f "$repo/Containerfile" -t "$image" "$work/context" >&2
say "built $image in $((SECONDS - start)) s"
# The image this build replaced (now untagged): ours, so remove it, unless something uses it.
current="$(podman image inspect --format '{{.Id}}' "$image")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || say "kept the previous image ${previous:0:12} (in use)"
fi
echo "$image"
