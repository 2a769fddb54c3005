#!/usr/bin/env bash
# A private Docker Engine 20.10 daemon for one simulated host, as verified in docs/runtimes.md
# (this script is that recipe, runnable; no test uses it).
#
#   N=1 docker-host.sh up               namespace vrt-dN, dockerd, localhost/busybox:lab imported
#   N=1 docker-host.sh docker ARGS...   the docker CLI of that host, e.g. run --rm --network none ...
#   N=1 docker-host.sh down             containers, dockerd, namespaces, cgroups and files gone
#
# dockerd runs inside the host's network namespace and a mount namespace of its own with a private
# /run (so its own /run/docker/plugins for plugin discovery, /run/containerd/s for shim sockets, and
# netns files), never touches the firewall (--iptables=false --ip-masq=false --bridge=none) and
# reads only its own daemon.json (which also moves the trust key out of /etc/docker).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
VRT_DIR="${VRT_DIR:-/tmp/voile-$(id -u)/runtimes}"
N="${N:-1}"
D="$VRT_DIR/d$N"
H="vrt-d$N"
CGROOT="vrt-d$N"

holder() { cat "$D/holder.pid"; }
docker_() { DOCKER_CONFIG="$D/cli" docker -H "unix://$D/docker.sock" "$@"; }

up() {
  mkdir -p "$D"/{data,exec,cli}
  ip netns add "$H"; ip -n "$H" link set lo up
  nsenter --net="/run/netns/$H" unshare --mount --propagation slave sleep infinity \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$D/holder.pid"
  until [[ "$(readlink "/proc/$(holder)/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]]; do sleep 0.01; done
  nsenter --mount="/proc/$(holder)/ns/mnt" sh -euc \
    'mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/docker/plugins'
  printf '{"deprecated-key-path": "%s"}\n' "$D/key.json" >"$D/daemon.json"
  local t; t="$(date +%s.%N)"
  ( exec nsenter --mount="/proc/$(holder)/ns/mnt" --net="/run/netns/$H" \
      dockerd --config-file "$D/daemon.json" --host "unix://$D/docker.sock" \
        --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/docker.pid" \
        --iptables=false --ip-masq=false --bridge=none --storage-driver=vfs \
        --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$CGROOT" \
        --default-ulimit nofile=20000:20000 ) </dev/null >"$D/dockerd.log" 2>&1 &
  echo $! >"$D/dockerd.pid"
  until docker_ version >/dev/null 2>&1; do
    kill -0 "$(cat "$D/dockerd.pid")" 2>/dev/null || { tail -5 "$D/dockerd.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "d$N: dockerd answering after $(echo "$(date +%s.%N) - $t" | bc) s"
  local images
  images="$("$repo/.venv/bin/python" -c 'from voile.lab.images import ensure; print(ensure()[0].directory)')"
  docker_ import "$images/rootfs.tar" localhost/busybox:lab >/dev/null
}

down() {
  [[ -d "$D" ]] || return 0
  if [[ -S "$D/docker.sock" ]]; then docker_ ps -aq | xargs -r docker -H "unix://$D/docker.sock" rm -f >/dev/null; fi
  local p; p="$(cat "$D/dockerd.pid" 2>/dev/null || echo 0)"
  if [[ "$p" != 0 ]]; then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  pkill -f -- "-address $D/exec/containerd/containerd.sock" || true # shims, if dockerd was killed
  kill "$(holder)" 2>/dev/null || true
  for c in cpu cpuacct cpuset memory devices freezer blkio pids systemd unified; do
    [[ -d "/sys/fs/cgroup/$c/$CGROOT" ]] && find "/sys/fs/cgroup/$c/$CGROOT" -depth -type d -exec rmdir {} \;
  done
  ip netns del "$H" 2>/dev/null || true
  rm -rf "$D"
  rmdir "$VRT_DIR" "$(dirname "$VRT_DIR")" 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  docker) shift; docker_ "$@" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
