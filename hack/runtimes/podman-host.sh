#!/usr/bin/env bash
# podman 4.3 (CNI backend, runc, cgroupfs) for one simulated host, as verified in docs/runtimes.md
# (this script is that recipe, runnable; no test uses it).
#
#   N=1 podman-host.sh up               namespace vrt-pN, its own podman dirs, localhost/busybox:lab
#   N=1 podman-host.sh podman ARGS...   podman of that host, e.g. run --rm localhost/busybox:lab ip addr
#   N=1 podman-host.sh down             containers, namespaces, cgroups and files gone
#
# podman runs inside the host's network namespace (so the CNI plugins do, and the veths land there)
# and inside a mount namespace of its own (a private /run and /var/lib/cni, so netns files and
# libcni's cache stay out of the machine's). Containers get a reference-bridge network "lab" in
# 198.19.(100+N).0/24 and the cgroup parent /vrt-pN.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
VRT_DIR="${VRT_DIR:-/tmp/voile-$(id -u)/runtimes}"
N="${N:-1}"
P="$VRT_DIR/p$N"
H="vrt-p$N"
CGROOT="vrt-p$N"
SUBNET="198.19.$((100 + N)).0/24"

holder() { cat "$P/holder.pid"; }
podman_() { # containers.conf has no cgroup parent setting: run and create get the flag
  case "${1:-}" in run|create) local sub="$1"; shift; set -- "$sub" --cgroup-parent "/$CGROOT" "$@" ;; esac
  nsenter --mount="/proc/$(holder)/ns/mnt" --net="/run/netns/$H" \
    env CONTAINERS_CONF="$P/containers.conf" CONTAINERS_STORAGE_CONF="$P/storage.conf" podman "$@"
}

up() {
  mkdir -p "$P"/{cni/net.d,cni/networks,cni/lib}
  [[ -d /var/lib/cni ]] || { mkdir /var/lib/cni; touch "$P/made-var-lib-cni"; }
  ip netns add "$H"; ip -n "$H" link set lo up
  nsenter --net="/run/netns/$H" unshare --mount --propagation slave sleep infinity \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$P/holder.pid"
  until [[ "$(readlink "/proc/$(holder)/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]]; do sleep 0.01; done
  nsenter --mount="/proc/$(holder)/ns/mnt" sh -euc "
    mount -t tmpfs -o mode=755 tmpfs /run
    mount --bind '$P/cni/lib' /var/lib/cni"
  mkdir -p "/sys/fs/cgroup/cpuset/$CGROOT"
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.mems"
  cat >"$P/containers.conf" <<CONF
[containers]
default_ulimits = []            # no CAP_SYS_RESOURCE here: runc cannot raise RLIMIT_NOFILE/NPROC
[engine]
cgroup_manager = "cgroupfs"     # cgroup v1 hybrid: crun refuses it, runc works
runtime = "runc"
events_logger = "file"
events_logfile_path = "$P/events.log"
tmp_dir = "$P/tmp"
image_copy_tmp_dir = "$P/tmp"   # else /var/tmp
static_dir = "$P/storage/libpod"
volume_path = "$P/storage/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "$P/cni/net.d"
default_network = "lab"
CONF
  cat >"$P/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$P/storage"
runroot = "$P/run"
CONF
  # Not \`podman network create\`: its conflist adds portmap, firewall and ipMasq (iptables rules).
  cat >"$P/cni/net.d/lab.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "lab0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$SUBNET"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$P/cni/networks"}}
]}
CNI
  local images
  images="$("$repo/.venv/bin/python" -c 'from voile.lab.images import ensure; print(ensure()[0].directory)')"
  podman_ import "$images/rootfs.tar" localhost/busybox:lab >/dev/null
  echo "p$N: podman ready (network lab $SUBNET in namespace $H)"
}

down() {
  [[ -d "$P" ]] || return 0
  podman_ rm -af -t 0 >/dev/null 2>&1 || true # stops containers: CNI DEL runs in namespace H
  kill "$(holder)" 2>/dev/null || true
  for c in cpu cpuacct cpuset memory devices freezer blkio pids systemd unified; do
    [[ -d "/sys/fs/cgroup/$c/$CGROOT" ]] && find "/sys/fs/cgroup/$c/$CGROOT" -depth -type d -exec rmdir {} \;
  done
  ip netns del "$H" 2>/dev/null || true
  [[ -f "$P/made-var-lib-cni" ]] && { rmdir /var/lib/cni 2>/dev/null || true; }
  rm -rf "$P"
  rmdir "$VRT_DIR" "$(dirname "$VRT_DIR")" 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  podman) shift; podman_ "$@" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
