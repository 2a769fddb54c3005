"""Kubernetes nodes in the lab: Debian's containerd 1.6 and the pinned kubelet on a simulated host,
registered under the host's name, with a CNI conflist of the lab's choosing (Voile's plugin; the
reference bridge plugin for baselines). The recipe of docs/runtimes.md ("containerd 1.6 +
kubelet"), verified with hack/runtimes/kubelet-node.sh, made Python; docs/lab.md says how the lab
uses it.

One node = the host's network namespace + a mount namespace of its own, kept alive by a sleeping
process (the *holder*). containerd, kubelet and the host's agent run inside both, so the agent sees
the network namespaces containerd mounts for its sandboxes, as an agent on a real node does
(``/run/netns`` of the machine stays visible inside: lab attachments, podman). In the holder's
mount namespace, and nowhere else:

- ``/run`` is a tmpfs (shim sockets, runc state, CRI fifos), with the machine's ``/run/netns``
  bound back in as a slave (new namespaces of the machine show up; nothing made inside leaks out);
- ``/var/lib`` is a tmpfs holding ``cni`` (libcni's cache) and ``kubelet`` (the device-plugin
  socket's fixed path), both bound to this node's directory, so nothing is created under the
  machine's ``/var/lib``; ``/var/log`` is this node's ``log`` folder (pod logs);
- the six sysctl files kubelet "fixes" (``vm.overcommit_memory``, ``kernel.panic``, ...) are
  covered by copies: kubelet writes the copies, the machine keeps its values.

Outside the mount namespace a node makes only cgroups (``/<cgroup root>`` in every hierarchy,
removed by ``stop``) and files under its directory. ``stop`` removes every process (kubelet, every
sandbox through CRI, containerd, leftover shims and container processes in its cgroups, the
holder, whose exit takes every mount with it) and the cgroups; the host removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from voile import kube
from voile.controlplane import ControlPlane, binary
from voile.errors import LabError
from voile.lab import images
from voile.lab.host import SimulatedHost, sh
from voile.processes import alive, terminate

SYSTEM_PLUGINS = Path("/usr/lib/cni")  # containernetworking-plugins: loopback, bridge, host-local
# Written by kubelet at start (machine-wide, not namespaced): shadowed by copies in the holder.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CGROUP_MOUNTS = Path("/proc/self/mountinfo")
CONFLIST = "10-lab.conflist"  # containerd 1.6 loads the first conflist of its directory only
NODE_RBAC = "voile-lab-nodes"  # ClusterRoleBinding: group system:nodes -> ClusterRole system:node
CNI_NETNS_SUBDIR = Path("io.containerd.grpc.v1.cri") / "netns"  # netns_mounts_under_state_dir
START_TIMEOUT = 60.0


def cgroup_hierarchies(mountinfo: str) -> list[Path]:
    """Every cgroup hierarchy's mount point (v1 controllers, named ones, the v2 unified tree),
    from /proc/self/mountinfo's text. Pure."""
    found: list[Path] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or right.split()[:1] not in (["cgroup"], ["cgroup2"]):
            continue
        mount = Path(fields[4])
        if mount not in found:
            found.append(mount)
    return found


def shim_pids(cmdlines: Iterable[tuple[int, Sequence[str]]], address: str) -> list[int]:
    """The containerd shims started by the containerd listening on ``address``: their command
    line carries ``-address <address>``. Pure."""
    return [
        pid
        for pid, argv in cmdlines
        if any(a == "-address" and b == address for a, b in itertools.pairwise(argv))
    ]


def cmdlines() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process of the machine that can be read."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        out.append((int(entry.name), [a.decode(errors="replace") for a in raw.split(b"\0") if a]))
    return out


class KubeNode:
    """containerd + kubelet as the simulated host ``host``'s Kubernetes node ``host.name``.

    Every verb is idempotent: ``prepare`` and ``start`` complete a half-started node and leave a
    running one alone; ``stop`` removes whatever is there, also after a failed start."""

    def __init__(self, host: SimulatedHost, plane: ControlPlane) -> None:
        self.host = host
        self.plane = plane
        self.name = host.name
        self.directory = host.directory / "node"
        # Unique per lab and host: every hierarchy's top level is shared by the whole machine.
        self.cgroup_root = f"voile-{host.fabric.id}-{host.name}"

    # -- paths ---------------------------------------------------------------------------------

    def _pidfile(self, what: str) -> Path:
        return self.directory / f"{what}.pid"

    def _pid(self, what: str) -> int | None:
        try:
            return int(self._pidfile(what).read_text().strip())
        except (OSError, ValueError):
            return None

    def _running(self, what: str) -> int | None:
        """The pid of this node's ``what`` when it runs: alive, and by its command line ours
        (a pid file can outlive its process, and the pid be reused by another)."""
        pid = self._pid(what)
        if pid is None or not alive(pid):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if what == "holder":
            ours = argv[:2] == [b"sleep", b"infinity"]
        else:  # nsenter execs: containerd and kubelet name files of this node
            ours = any(str(self.directory).encode() in a for a in argv)
        return pid if ours else None

    @property
    def socket(self) -> Path:
        return self.directory / "containerd.sock"

    @property
    def conf_dir(self) -> Path:
        """containerd's CNI configuration directory (one conflist)."""
        return self.directory / "net.d"

    @property
    def plugin_dir(self) -> Path:
        """containerd's CNI_PATH: links to the system's loopback/bridge/host-local and Voile's."""
        return self.directory / "cni-bin"

    @property
    def netns_dir(self) -> Path:
        """Where containerd mounts its sandboxes' network namespaces (the agent must allow it)."""
        return self.directory / "containerd" / "state" / CNI_NETNS_SUBDIR

    @property
    def mount_namespace(self) -> str:
        """The node's mount namespace, as a path other processes can enter (nsenter --mount)."""
        pid = self._running("holder")
        if pid is None:
            raise LabError(f"{self.name}: the node's mount namespace is not there (prepare it)")
        return f"/proc/{pid}/ns/mnt"

    def enter(self) -> list[str]:
        """The argv prefix that runs a command inside the node: its mount and network namespace."""
        return ["nsenter", f"--mount={self.mount_namespace}", f"--net={self.host.netns_path}"]

    # -- prepare: mount namespace and cgroups --------------------------------------------------

    def prepare(self) -> None:
        """The holder and its mounts, the cgroup roots, the directories. Idempotent."""
        for sub in ("containerd", "kubelet", "manifests", "log", "cni-lib", "sysctl", "stage"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(exist_ok=True)
        self._link_plugins({})
        if self._running("holder") is None:
            self._start_holder()
        self._make_cgroups()

    def _start_holder(self) -> None:
        argv = [
            "nsenter", f"--net={self.host.netns_path}",
            "unshare", "--mount", "--propagation", "slave",
            "sleep", "infinity",
        ]  # fmt: skip
        with (self.directory / "holder.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self._pidfile("holder").write_text(f"{proc.pid}\n")
        own = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while True:  # nsenter and unshare exec: the pid becomes the sleep in the new namespace
            with contextlib.suppress(OSError):  # unshare(2) comes before the exec of sleep
                if os.readlink(f"/proc/{proc.pid}/ns/mnt") != own and self._running("holder"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{self.name}: the mount namespace holder did not start")
            time.sleep(0.01)
        self._mount_private_dirs()

    def _inside(self, *argv: str) -> None:
        sh("nsenter", f"--mount={self.mount_namespace}", *argv)

    def _mount(self, *args: str) -> None:
        # -n: no userspace mount table (/run/mount/utab is not there once /run is replaced).
        self._inside("mount", "-n", *args)

    def _mount_private_dirs(self) -> None:
        stage = self.directory / "stage"
        # /run: a tmpfs, with the machine's /run/netns bound back in as a slave. Assembled on a
        # staging mount point first, then moved over /run in one step.
        self._mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(stage))
        self._inside("mkdir", "-p", f"{stage}/netns")
        self._mount("--rbind", "/run/netns", f"{stage}/netns")
        self._mount("--make-rslave", f"{stage}/netns")
        self._mount("--move", str(stage), "/run")
        # /var/lib: a tmpfs with libcni's cache and kubelet's fixed paths bound to this node.
        self._mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/var/lib")
        self._inside("mkdir", "/var/lib/cni", "/var/lib/kubelet")
        self._mount("--bind", str(self.directory / "cni-lib"), "/var/lib/cni")
        self._mount("--bind", str(self.directory / "kubelet"), "/var/lib/kubelet")
        self._mount("--bind", str(self.directory / "log"), "/var/log")
        for key in KUBELET_SYSCTLS:
            copy = self.directory / "sysctl" / key.replace("/", ".")
            copy.write_text(Path("/proc/sys", key).read_text())
            self._mount("--bind", str(copy), f"/proc/sys/{key}")

    def _hierarchies(self) -> list[Path]:
        return cgroup_hierarchies(CGROUP_MOUNTS.read_text())

    def _make_cgroups(self) -> None:
        """kubelet's cgroupRoot must exist in every hierarchy before it starts."""
        for hierarchy in self._hierarchies():
            mine = hierarchy / self.cgroup_root
            mine.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset admits no process
                parent, child = hierarchy / knob, mine / knob
                if parent.exists() and child.exists() and not child.read_text().strip():
                    child.write_text(parent.read_text())

    def _link_plugins(self, extra: Mapping[str, Path]) -> None:
        """CNI_PATH holds links: containerd 1.6 takes one plugin directory, and needs loopback."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        wanted = {p.name: p for p in SYSTEM_PLUGINS.iterdir() if p.is_file()}
        wanted.update(extra)
        for name, target in wanted.items():
            link = self.plugin_dir / name
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    # -- CNI -----------------------------------------------------------------------------------

    def set_cni(
        self, conflist: Mapping[str, Any], plugins: Mapping[str, Path] | None = None
    ) -> None:
        """Make ``conflist`` the node's only CNI network (written atomically; containerd reloads
        it), with ``plugins`` (type -> binary) beside the system's. Idempotent."""
        self._link_plugins(plugins or {})
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for other in self.conf_dir.iterdir():
            if other.name != CONFLIST:
                other.unlink()
        text = json.dumps(conflist, indent=2) + "\n"
        path = self.conf_dir / CONFLIST
        if path.exists() and path.read_text() == text:
            return
        tmp = self.conf_dir.parent / f".{CONFLIST}.tmp"
        tmp.write_text(text)
        tmp.replace(path)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """containerd (images imported) and kubelet, inside the node. Idempotent. Call after
        ``prepare``, with the control plane up and the group system:nodes bound (node_rbac)."""
        self.prepare()
        if self._running("containerd") is None:
            self._write_containerd_config()
            self._spawn("containerd", ["containerd", "--config", str(self._containerd_conf)])
            self._wait_containerd()
            lab_images, _ = images.ensure()
            for archive in (lab_images.pause_archive, lab_images.busybox_archive):
                self.ctr("images", "import", str(archive))
        if self._running("kubelet") is None:
            kubeconfig = self.plane.issue_node_kubeconfig(self.name, self.directory / "creds")
            self._write_kubelet_config()
            self._spawn(
                "kubelet",
                [
                    str(binary("kubelet")),
                    "--config", str(self._kubelet_conf),
                    "--kubeconfig", str(kubeconfig),
                    "--root-dir", str(self.directory / "kubelet"),
                    "--cert-dir", str(self.directory / "kubelet" / "pki"),
                    "--hostname-override", self.name,
                    "--node-ip", str(self.host.address),
                    "--v=2",
                ],
            )  # fmt: skip

    @property
    def _containerd_conf(self) -> Path:
        return self.directory / "containerd.toml"

    @property
    def _kubelet_conf(self) -> Path:
        return self.directory / "kubelet.json"

    def _write_containerd_config(self) -> None:
        d = self.directory / "containerd"

        def q(value: object) -> str:  # a TOML basic string (JSON's escapes are TOML's)
            return json.dumps(str(value))

        cri = '[plugins."io.containerd.grpc.v1.cri"'
        self._containerd_conf.write_text(
            f"""version = 2
root = {q(d / "root")}
state = {q(d / "state")}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = {q(self.socket)}
[ttrpc]
  address = {q(str(self.socket) + ".ttrpc")}
[plugins."io.containerd.internal.v1.opt"]
  path = {q(d / "opt")}
{cri}]
  sandbox_image = {q(images.PAUSE_IMAGE)}
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  {cri}.cni]
    bin_dir = {q(self.plugin_dir)}
    conf_dir = {q(self.conf_dir)}
    max_conf_num = 1
  {cri}.containerd]
    default_runtime_name = "runc"
    {cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      {cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {q(d / "runc")}
"""
        )
        (self.directory / "crictl.yaml").write_text(
            f"runtime-endpoint: unix://{self.socket}\nimage-endpoint: unix://{self.socket}\n"
            "timeout: 60\n"
        )

    def _write_kubelet_config(self) -> None:
        creds = self.directory / "creds"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "failSwapOn": False,
            "staticPodPath": str(self.directory / "manifests"),
            "volumePluginDir": str(self.directory / "kubelet" / "volume-plugins"),
            # Imported images cannot be pulled again: no image GC, no disk-pressure eviction.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi"},
            "makeIPTablesUtilChains": False,
            "address": str(self.host.address),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(creds / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "resolvConf": "",
        }
        self._kubelet_conf.write_text(json.dumps(config, indent=2) + "\n")

    def _spawn(self, what: str, argv: Sequence[str]) -> int:
        with (self.directory / f"{what}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*self.enter(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pidfile(what).write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait_containerd(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.ctr("version", check=False).returncode == 0:
                return
            if self._running("containerd") is None or time.monotonic() > deadline:
                raise LabError(f"{self.name}: containerd did not start; see {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self, what: str = "containerd") -> str:
        log = self.directory / f"{what}.log"
        try:
            lines = log.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return f"{log} (missing)"
        return f"{log}:\n" + "\n".join(lines)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own CLI on this node, in the k8s.io namespace (no stdio: no fifos)."""
        return sh("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, check=check)

    def crictl_argv(self) -> list[str]:
        """crictl against this node's containerd, inside the node (exec/attach need it)."""
        config = str(self.directory / "crictl.yaml")
        return [*self.enter(), str(binary("crictl")), "--config", config]

    def crictl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh(*self.crictl_argv(), *args, check=check, timeout=timeout)

    async def wait_ready(self, client: kube.KubeClient, *, timeout: float = 120) -> None:
        """Until the Node object is Ready (kubelet registered it, the CNI conflist loaded)."""

        async def ready() -> bool:
            if self._running("kubelet") is None:
                raise LabError(f"{self.name}: kubelet exited; see {self._log_tail('kubelet')}")
            node = await client.get(kube.path("", "v1", "nodes", name=self.name))
            conditions = ((node or {}).get("status") or {}).get("conditions") or []
            return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conditions)

        try:
            await kube.wait_for(ready, timeout=timeout, what=f"Node {self.name} Ready")
        except TimeoutError as exc:
            raise LabError(f"{exc}; see {self._log_tail('kubelet')}") from exc

    # -- process helpers -----------------------------------------------------------------------

    def restart_kubelet(self, sig: int = signal.SIGTERM) -> int:
        """Stop kubelet by ``sig`` and start it again (the containers keep running)."""
        pid = self._running("kubelet")
        if pid is not None:
            terminate(pid, sig)
        self._pidfile("kubelet").unlink(missing_ok=True)
        self.start()
        new = self._pid("kubelet")
        assert new is not None
        return new

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Remove every process, mount and cgroup of this node; the files stay for the host to
        remove with its directory. Idempotent, also after a partial start."""
        kubelet = self._running("kubelet")
        if kubelet is not None:
            terminate(kubelet)
        if self._running("containerd") is not None:
            # Every sandbox stopped (CNI DEL; its netns and shm go) and removed, while containerd
            # runs: killed containers would otherwise outlive their shims.
            self.crictl("rmp", "--force", "--all", check=False, timeout=120)
        containerd = self._running("containerd")
        if containerd is not None:
            terminate(containerd)
        for pid in shim_pids(cmdlines(), str(self.socket)):
            terminate(pid)
        self._kill_cgroup_members()
        holder = self._running("holder")
        if holder is not None:
            terminate(holder)  # the mount namespace and all its mounts go with it
        for what in ("kubelet", "containerd", "holder"):
            self._pidfile(what).unlink(missing_ok=True)
        self._remove_cgroups()

    def _cgroup_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for hierarchy in self._hierarchies():
            mine = hierarchy / self.cgroup_root
            if mine.is_dir():
                dirs += sorted((p for p in mine.rglob("*") if p.is_dir()), reverse=True)
                dirs.append(mine)
        return dirs

    def _kill_cgroup_members(self) -> None:
        """Container processes whose shim is gone: everything in this node's cgroups is ours."""
        for _ in range(50):
            pids = set()
            for d in self._cgroup_dirs():
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            pids = {p for p in pids if alive(p)}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise LabError(f"{self.name}: processes in cgroup {self.cgroup_root} do not exit")

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            left = []
            for d in self._cgroup_dirs():  # deepest first
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
            if not left:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: cgroups not removed: {', '.join(map(str, left))}")
            time.sleep(0.1)


async def ensure_node_rbac(client: kube.KubeClient) -> None:
    """RBAC-only authorization gives the group system:nodes nothing (no Node authorizer here):
    bind the ClusterRole system:node to it. Idempotent."""
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NODE_RBAC},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
        ],
    }
    with contextlib.suppress(kube.Conflict):
        await client.create(
            kube.path("rbac.authorization.k8s.io", "v1", "clusterrolebindings"), body
        )


def bridge_conflist(name: str, subnet: str, data_dir: Path) -> dict[str, Any]:
    """The reference bridge + host-local network (the baseline; no masquerade, no iptables)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            }
        ],
    }


def wait_all(nodes: Sequence[KubeNode], kubeconfig: Path, timeout: float = 120) -> None:
    """Until every node is Ready."""

    async def go() -> None:
        async with kube.KubeClient.from_config(str(kubeconfig)) as client:
            await asyncio.gather(*(n.wait_ready(client, timeout=timeout) for n in nodes))

    asyncio.run(go())
