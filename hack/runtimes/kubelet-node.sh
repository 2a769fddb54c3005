#!/usr/bin/env bash
# Kubernetes nodes on this machine: containerd 1.6 + the pinned kubelet per simulated host, as
# verified in docs/runtimes.md (this script is that recipe, runnable; no test uses it).
#
#   kubelet-node.sh fabric-up            fabric namespace + bridge 198.18.100.254/24 + API server there
#   N=1 kubelet-node.sh up               host h1: namespaces, containerd, images, kubelet, Node Ready
#   N=1 kubelet-node.sh pod NAME         a busybox Pod on h1; prints the time to Ready and its IP
#   N=1 kubelet-node.sh down             h1 gone: processes, mounts, cgroups, namespace, files
#   kubelet-node.sh fabric-down          the API server and the fabric namespace
#   kubelet-node.sh kubectl ARGS...      kubectl against the lab's API server (from the fabric)
#
# Host N: network namespace vrt-hN with underlay address 198.18.100.N (a veth into the fabric
# bridge), pods in 198.19.N.0/24 (reference bridge + host-local plugins), cgroup root /vrt-hN,
# files under $VRT_DIR/hN. containerd and kubelet share a mount namespace of their own (kept by a
# sleeping process): a private /run, /var/log, /var/lib/cni and /var/lib/kubelet, and shadow copies
# of the sysctls kubelet writes, so the machine's sysctls, mount table and /var stay untouched.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${VOILE_CACHE:-$HOME/.cache/voile}"
VRT_DIR="${VRT_DIR:-/tmp/voile-$(id -u)/runtimes}"
N="${N:-1}"
NODE="h$N"
B="$VRT_DIR/$NODE"
H="vrt-$NODE"
CGROOT="vrt-$NODE"
FABRIC=vrt-fabric
API_IP=198.18.100.254
NODE_IP="198.18.100.$N"
POD_CIDR="198.19.$N.0/24"
CP="$VRT_DIR/controlplane"
KUBELET="$cache/bin/kubelet-v1.34.4"
CRICTL="$cache/bin/crictl-v1.34.0"
SYSCTLS="vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
         kernel/keys/root_maxkeys kernel/keys/root_maxbytes"
CGROUPS_V1="cpu cpuacct cpuset memory devices freezer blkio pids systemd"
SHARED_DIRS="/var/lib/cni /var/lib/kubelet" # mount points only; made (and removed) when missing

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
say() { echo "$NODE: $*"; }
holder() { cat "$B/holder.pid"; }
inside() { nsenter --mount="/proc/$(holder)/ns/mnt" --net="/run/netns/$H" "$@"; }
daemon() { # name argv...: runs inside the host's namespaces; pid in $B/name.pid, log in name.log
  local name="$1"; shift
  ( exec nsenter --mount="/proc/$(holder)/ns/mnt" --net="/run/netns/$H" "$@" ) \
    </dev/null >"$B/$name.log" 2>&1 &
  echo $! >"$B/$name.pid"
}
stop() { # name: SIGTERM, 10 s, SIGKILL
  local f="$B/$1.pid" p; [[ -f "$f" ]] || return 0; p="$(cat "$f")"
  kill "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true; rm -f "$f"
}
kubectl_() {
  nsenter --net="/run/netns/$FABRIC" kubectl --kubeconfig "$CP/kubeconfig" --cache-dir "$CP/kube-cache" "$@"
}
crictl_() { inside "$CRICTL" --config "$B/crictl.yaml" "$@"; }
ctr_() { inside ctr --address "$B/containerd.sock" -n k8s.io "$@"; }

fabric_up() {
  mkdir -p "$VRT_DIR"
  ip netns add "$FABRIC"; ip -n "$FABRIC" link set lo up
  ip -n "$FABRIC" link add br0 type bridge
  ip -n "$FABRIC" addr add "$API_IP/24" dev br0; ip -n "$FABRIC" link set br0 up
  local t; t="$(now)"
  nsenter --net="/run/netns/$FABRIC" "$repo/.venv/bin/python" -c "
from pathlib import Path
from voile.controlplane import ControlPlane
print(ControlPlane(Path('$CP'), address='$API_IP').start().server)"
  echo "fabric: API server ready after $(since "$t") s"
  # RBAC only (no Node authorizer): every kubelet gets the node role through its group.
  kubectl_ create clusterrolebinding vrt-nodes --clusterrole=system:node --group=system:nodes
}

fabric_down() {
  "$repo/.venv/bin/voile" controlplane down --dir "$CP" || true
  ip netns del "$FABRIC" 2>/dev/null || true
  rmdir "$VRT_DIR" "$(dirname "$VRT_DIR")" 2>/dev/null || true
}

up() {
  [[ -e "/run/netns/$FABRIC" ]] || { echo "run '$0 fabric-up' first" >&2; exit 1; }
  mkdir -p "$B"/{containerd,kubelet,manifests,log,cni/net.d,cni/lib,sysctl}
  ip netns add "$H"; ip -n "$H" link set lo up
  ip -n "$H" link add ul0 type veth peer name "ul-$NODE" netns "$FABRIC"
  ip -n "$FABRIC" link set "ul-$NODE" master br0 up
  ip -n "$H" addr add "$NODE_IP/24" dev ul0; ip -n "$H" link set ul0 up

  for d in $SHARED_DIRS; do [[ -d $d ]] || { mkdir "$d"; echo "$d" >>"$VRT_DIR/made-dirs"; }; done
  nsenter --net="/run/netns/$H" unshare --mount --propagation slave sleep infinity \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$B/holder.pid"
  until [[ "$(readlink "/proc/$(holder)/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]]; do sleep 0.01; done
  inside sh -euc "
    mount -t tmpfs -o mode=755 tmpfs /run               # shim sockets, runc state, netns files
    mount --bind '$B/log' /var/log                      # /var/log/pods, /var/log/containers
    mount --bind '$B/cni/lib' /var/lib/cni              # libcni's result cache
    mount --bind '$B/kubelet' /var/lib/kubelet          # the device-plugin socket's fixed path
    for s in $(echo $SYSCTLS); do                       # kubelet writes these; let it write copies
      f='$B/sysctl/'\$(echo \$s | tr / .); cat /proc/sys/\$s >\$f; mount --bind \$f /proc/sys/\$s
    done"
  for c in $CGROUPS_V1; do mkdir -p "/sys/fs/cgroup/$c/$CGROOT"; done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROOT/cpuset.mems"

  cat >"$B/cni/net.d/10-lab.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$B/cni/lib/networks"}}
]}
CNI
  cat >"$B/containerd.toml" <<TOML
version = 2
root = "$B/containerd/root"
state = "$B/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$B/containerd.sock"
[ttrpc]
  address = "$B/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$B/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:lab"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true   # no CAP_SYS_RESOURCE here: runc cannot set -998 for sandboxes
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$B/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$B/containerd/runc"
TOML
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\n' \
    "$B/containerd.sock" "$B/containerd.sock" >"$B/crictl.yaml"
  local t; t="$(now)"
  daemon containerd containerd --config "$B/containerd.toml"
  until ctr --address "$B/containerd.sock" version >/dev/null 2>&1; do sleep 0.01; done
  say "containerd answering after $(since "$t") s"
  local images; images="$("$repo/.venv/bin/python" -c 'from voile.lab.images import ensure; print(ensure()[0].directory)')"
  ctr_ images import "$images/pause.docker.tar" >/dev/null
  ctr_ images import "$images/busybox.docker.tar" >/dev/null

  "$repo/.venv/bin/python" -c "
from pathlib import Path
from voile.controlplane import ControlPlane
ControlPlane(Path('$CP')).issue_node_kubeconfig('$NODE', Path('$B/creds'))"
  cat >"$B/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$B/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$CGROOT
failSwapOn: false
staticPodPath: $B/manifests
volumePluginDir: $B/kubelet/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi"}
makeIPTablesUtilChains: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $B/creds/ca.crt}
authorization: {mode: Webhook}
resolvConf: ""
YAML
  t="$(now)"
  daemon kubelet "$KUBELET" --config "$B/kubelet.yaml" --kubeconfig "$B/creds/kubeconfig" \
    --root-dir "$B/kubelet" --cert-dir "$B/kubelet/pki" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --v=2
  until inside wget -q -O /dev/null http://127.0.0.1:10248/healthz 2>/dev/null; do sleep 0.05; done
  say "kubelet healthy after $(since "$t") s"
  kubectl_ wait --for=create "node/$NODE" --timeout=60s >/dev/null
  say "Node registered after $(since "$t") s"
  kubectl_ wait --for=condition=Ready "node/$NODE" --timeout=120s >/dev/null
  say "Node Ready after $(since "$t") s"
}

pod() { # name
  local name="$1" t
  cat >"$B/pod-$name.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: default}
spec:
  nodeName: $NODE
  terminationGracePeriodSeconds: 5
  containers:
  - name: bb
    image: localhost/busybox:lab
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
YAML
  t="$(now)"
  kubectl_ apply -f "$B/pod-$name.yaml" >/dev/null
  kubectl_ wait --for=condition=Ready "pod/$name" --timeout=60s >/dev/null
  say "pod $name Ready after $(since "$t") s, IP $(kubectl_ get pod "$name" -o jsonpath='{.status.podIP}')"
}

down() {
  [[ -d "$B" ]] || return 0
  kubectl_ delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  stop kubelet
  # Every sandbox stopped (CNI DEL, its netns and shm go) and removed while containerd runs.
  [[ -S "$B/containerd.sock" ]] && crictl_ rmp -fa >/dev/null 2>&1 || true
  stop containerd
  pkill -f -- "-address $B/containerd.sock" || true # shims of tasks containerd did not remove
  stop holder                                        # the mount namespace and its mounts go too
  for c in $CGROUPS_V1 unified; do
    [[ -d "/sys/fs/cgroup/$c/$CGROOT" ]] && find "/sys/fs/cgroup/$c/$CGROOT" -depth -type d -exec rmdir {} \;
  done
  ip netns del "$H" 2>/dev/null || true
  rm -rf "$B"
  if [[ -f "$VRT_DIR/made-dirs" ]] && ! ls "$VRT_DIR"/h*/holder.pid >/dev/null 2>&1; then
    while read -r d; do rmdir "$d" 2>/dev/null || echo "kept $d (not empty)"; done <"$VRT_DIR/made-dirs"
    rm -f "$VRT_DIR/made-dirs"
  fi
}

case "${1:-}" in
  fabric-up) fabric_up ;;
  fabric-down) fabric_down ;;
  up) up ;;
  pod) pod "${2:?pod name}" ;;
  down) down ;;
  kubectl) shift; kubectl_ "$@" ;;
  crictl) shift; crictl_ "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
