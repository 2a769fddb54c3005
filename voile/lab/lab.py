"""`voile lab`: a multi-host Voile on one machine.

What ``up`` builds (every name carries the run id ``lab``; nothing outside 198.18.0.0/24 is used):

    root namespace                      fabric namespace voile-fabric-lab
      kube-apiserver on 198.18.0.254 --- veth vllabr0 ====== br0 (Linux bridge, the underlay)
      etcd on 127.0.0.1                                       |        |        |
      voile-operator                        voile-lab-host-1  host-2   host-3   (namespaces)
                                            eth0 198.18.0.1   .2       .3
                                            ovsdb-server + ovs-vswitchd (netdev) + voile-agent

The agents run inside their hosts' namespaces and reach the API server over the underlay, as they
would on real hosts. ``down`` removes all of it: processes, namespaces, links and files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voile import attach, kube
from voile.api import constants as c
from voile.api.attach import AttachmentRef, AttachRequest, Owner, OwnerKind
from voile.api.model import Target, TargetKind, parse_ipv4
from voile.controlplane import ControlPlane, default_state_dir
from voile.crds import install_crds
from voile.errors import LabError
from voile.kubectl_voile import render_status
from voile.lab import cni
from voile.lab.docker import HostDocker, run_cli
from voile.lab.host import Fabric, SimulatedHost, add_netns, del_netns, netns_exists, sh
from voile.lab.node import KubeNode, ensure_node_rbac, wait_all
from voile.lab.podman import Podman
from voile.processes import alive, terminate

RUN_ID = "lab"
ATTACH_NAMESPACE = "default"
# The network of a Pod without the annotation voile.dev/network: the first example's.
DEFAULT_POD_NETWORK = "blue"
NODE_CNI_NETWORK = "voile"  # the conflist's name (libcni keys its cache by it)
# Each host's agent serves its metrics on this port of the host's namespace (the chart's
# metrics.agentPort).
AGENT_METRICS_PORT = 9782


def lab_dir() -> Path:
    """$VOILE_LAB_DIR, or next to the control plane's default state directory."""
    env = os.environ.get("VOILE_LAB_DIR")
    return Path(env) if env else default_state_dir().parent / "lab"


def _bin(name: str) -> str:
    """A console script of this installation (the lab runs what `make setup` installed)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def choose_datapath(requested: str) -> tuple[str, str]:
    """The lab hosts' datapath and why: ``auto`` is ``ebpf`` where the kernel can run it (tc
    BPF programs need bpftool and the compiled object, built by ``make setup`` or here with
    clang), else ``ovs`` (userspace OVS, which runs anywhere)."""
    if requested in ("ovs", "ebpf"):
        return requested, "asked for"
    if requested != "auto":
        raise LabError(f"--datapath {requested!r} is not one of ovs, ebpf, auto")
    if shutil.which("bpftool") is None or shutil.which("tc") is None:
        return "ovs", "auto: no bpftool/tc for eBPF"
    # The agent's build step (a process: the shared package imports no agent code).
    built = subprocess.run(
        [sys.executable, "-m", "voile_agent.datapath.ebpf.build"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if built.returncode != 0:  # no clang, no object: the userspace datapath still works
        return "ovs", f"auto: eBPF programs unavailable ({built.stderr.strip()[-300:]})"
    return "ebpf", "auto: the kernel runs the eBPF datapath; no packet passes through OVS"


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class Lab:
    def __init__(
        self, directory: Path | None = None, *, run_id: str = RUN_ID, underlay_octet: int = 0
    ) -> None:
        """One lab. ``run_id`` names every namespace and link; ``underlay_octet`` picks the
        underlay 198.18.<octet>.0/24 (hosts .1-.N, the API server .254). A second lab (the e2e
        tests) uses other values, so it never touches a user's lab. Both are kept in the state
        file, so a later ``Lab()`` in the same directory finds them."""
        self.directory = (directory or lab_dir()).resolve()
        self.state_file = self.directory / "lab.json"
        saved = self._state()
        self.run_id = saved.get("run_id", run_id)
        octet = int(saved.get("underlay_octet", underlay_octet))
        self.underlay = ipaddress.IPv4Network(f"198.18.{octet}.0/24")
        self.underlay_octet = octet
        self.api_address = str(self.underlay.network_address + 254)
        self.root_leg = f"vl{self.run_id}r0"[:15]
        self.fabric_leg = f"vl{self.run_id}f0"[:15]
        self.container_prefix = f"voile-{self.run_id}-ct-"
        self.fabric = Fabric(self.directory / "fabric", self.run_id, self.underlay)
        self.plane = ControlPlane(
            self.directory / "controlplane",
            address=self.api_address,
            extra_sans=(self.api_address,),
        )
        self._hosts: dict[int, SimulatedHost] = {}

    def container_netns(self, name: str) -> str:
        """The network namespace (under /run/netns) of an attached container."""
        info = self._state()["containers"].get(name)
        return str(info["netns"]) if info else self.container_prefix + name

    # -- state ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        state.setdefault("hosts", [])
        state.setdefault("pids", {})
        state.setdefault("containers", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2, sort_keys=True))

    def host(self, index: int) -> SimulatedHost:
        """The simulated host ``host-<index>``: deterministic names, any process finds it."""
        if index not in self._hosts:
            datapath = self._state().get("datapath") or "ovs"
            host = self.fabric.host(index, datapath=datapath)
            host.supervised = True  # OVS daemons restarted when they exit (voile.lab.supervise)
            self._hosts[index] = host
        return self._hosts[index]

    @property
    def datapath(self) -> str | None:
        """The hosts' datapath (``ovs`` or ``ebpf``), once an ``up`` has chosen it."""
        chosen = self._state().get("datapath")
        return str(chosen) if chosen else None

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    # -- up ------------------------------------------------------------------------------------

    def up(
        self,
        hosts: int = 3,
        *,
        nodes: bool = False,
        pod_network: str | None = None,
        datapath: str = "auto",
        agents: bool = True,
    ) -> Path:
        """Start (or complete) the lab with hosts host-1..host-N. Idempotent. ``nodes``: each
        host is also a Kubernetes node (containerd + kubelet, voile.lab.node) whose Pods get
        ``pod_network`` unless their annotation voile.dev/network names another; ``datapath``:
        ``ovs`` (userspace OVS per host), ``ebpf``, or ``auto`` (``choose_datapath``); a lab
        keeps what its first ``up`` chose. ``agents=False``: everything but the hosts' agents,
        which ``start_agents`` starts (a test observes the hosts before any agent ran)."""
        if not 1 <= hosts <= 50:
            raise LabError("--hosts must be between 1 and 50")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces and Open vSwitch)")
        state = self._state()
        saved = state.get("pod_network")
        if pod_network and saved and pod_network != saved:
            raise LabError(
                f"this lab's Pods join {saved} by default; `voile lab down` to choose another"
            )
        chosen, why = choose_datapath(datapath)
        if state.get("datapath") and datapath != "auto" and chosen != state["datapath"]:
            raise LabError(
                f"this lab's hosts run {state['datapath']}; `voile lab down` to choose another"
            )
        state["datapath"] = state.get("datapath") or chosen
        newly_nodes = nodes and not state.get("nodes")
        state["run_id"], state["underlay_octet"] = self.run_id, self.underlay_octet
        state["nodes"] = bool(state.get("nodes")) or nodes
        state["pod_network"] = saved or pod_network or DEFAULT_POD_NETWORK
        self._save(state)
        self._hosts.clear()
        _say(f"datapath: {state['datapath']} ({why})")
        _say(f"underlay: fabric namespace and bridge {self.underlay}")
        self.fabric.start()
        self._root_leg()
        _say("control plane: etcd + kube-apiserver on " + self.api_address)
        endpoints = self.plane.start()
        asyncio.run(self._prepare_api())
        names = sorted(
            set(state["hosts"]) | {f"host-{i}" for i in range(1, hosts + 1)},
            key=lambda n: int(n.split("-")[1]),
        )
        state["hosts"] = names
        self._save(state)
        for name in names:
            index = int(name.split("-")[1])
            what = "OVS daemons" if state["datapath"] == "ovs" else "its own bpffs, no OVS"
            _say(f"{name}: namespace, underlay {self.underlay.network_address + index}, {what}")
            self.host(index).start()
            if state["nodes"]:
                self.node(index).prepare()  # the agent runs in the node's mount namespace
        self._ensure_process(
            state, "operator", self._operator_argv(), self.directory / "operator.log"
        )
        if not agents:
            self._save(state)
            return endpoints.kubeconfig
        self.start_agents(names, state=state, restart_running=newly_nodes)
        if state["nodes"]:
            self._start_nodes(names, state["pod_network"])
        _say(f"lab up: {len(names)} hosts; try `voile lab attach host-1 c1 --network <net>`")
        return endpoints.kubeconfig

    def start_agents(
        self,
        names: Sequence[str] | None = None,
        *,
        extra: Sequence[str] | None = None,
        state: dict[str, Any] | None = None,
        restart_running: bool = False,
    ) -> None:
        """Start the agents of ``names`` (default: every host) that do not run, and wait for
        their heartbeats. ``extra``: more agent options, kept for every later (re)start.
        ``restart_running``: restart running ones too (hosts that just became nodes)."""
        state = state if state is not None else self._state()
        if extra is not None:
            state["agent_args"] = list(extra)
            self._save(state)
        names = list(names) if names is not None else list(state["hosts"])
        for name in names:
            index = int(name.split("-")[1])
            host = self.host(index)
            key = f"agent/{name}"
            if restart_running and alive(int(state["pids"].get(key) or 0)):
                # It runs in a mount namespace of its own: into the node's, to see its Pods.
                self.restart(key)
                state = self._state()
                continue
            self._ensure_process(state, key, self._agent_argv(host), host.directory / "agent.log")
        self._save(state)
        _say("waiting for the agents' heartbeats")
        asyncio.run(self._wait_agents(names, timeout=120))

    # -- Kubernetes nodes ----------------------------------------------------------------------

    def node(self, index: int) -> KubeNode:
        """The Kubernetes node of ``host-<index>`` (not necessarily running)."""
        return KubeNode(self.host(index), self.plane)

    @property
    def has_nodes(self) -> bool:
        return bool(self._state().get("nodes"))

    def node_cni(self, index: int, pod_network: str) -> dict[str, Any]:
        """The conflist of host-<index>'s node: Voile's plugin through this host's agent."""
        host = self.host(index)
        return cni.conflist(
            pod_network,
            socket=host.attach_socket,
            spool_dir=host.cni_spool_dir,
            name=NODE_CNI_NETWORK,
            pod_network_annotation=True,
        )

    def _start_nodes(self, names: Sequence[str], pod_network: str) -> None:
        _say(f"Kubernetes nodes: containerd + kubelet on {', '.join(names)}")
        asyncio.run(self._node_rbac())
        indexes = [int(n.split("-")[1]) for n in names]
        plugin = cni.plugin()

        def start(index: int) -> KubeNode:
            node = self.node(index)
            node.set_cni(self.node_cni(index, pod_network), {cni.PLUGIN_TYPE: plugin})
            node.start()
            return node

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            started = list(pool.map(start, indexes))
        wait_all(started, self.kubeconfig)
        _say(f"nodes Ready; Pods without voile.dev/network join {pod_network}")

    async def _node_rbac(self) -> None:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            await ensure_node_rbac(client)

    def _stop_nodes(self, indexes: Sequence[int]) -> list[str]:
        """Every node's processes, mounts and cgroups (its files go with the host's)."""
        nodes = [self.node(i) for i in indexes if self.node(i).directory.exists()]
        if nodes:
            _say(f"stopping the Kubernetes nodes {', '.join(n.name for n in nodes)}")
        errors = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for node, done in [(n, pool.submit(n.stop)) for n in nodes]:
                try:
                    done.result()
                except Exception as exc:  # the rest of down still runs; reported at its end
                    errors.append(f"{node.name}: {exc}")
        return errors

    def _root_leg(self) -> None:
        """A veth from the root namespace into the fabric: the API server's underlay address."""
        if sh("ip", "link", "show", self.root_leg, check=False).returncode != 0:
            sh(
                "ip",
                "link",
                "add",
                self.root_leg,
                "type",
                "veth",
                "peer",
                "name",
                self.fabric_leg,
                "netns",
                self.fabric.namespace,
            )
            sh(
                "ip",
                "-n",
                self.fabric.namespace,
                "link",
                "set",
                self.fabric_leg,
                "master",
                "br0",
                "up",
            )
        addrs = sh("ip", "-o", "-4", "addr", "show", "dev", self.root_leg).stdout
        if f"{self.api_address}/24" not in addrs:
            sh("ip", "addr", "add", f"{self.api_address}/24", "dev", self.root_leg)
        sh("ip", "link", "set", self.root_leg, "up")
        # The hosts' underlay ports are OVS netdev (AF_PACKET) ports, which pass on partial
        # checksums as they are: the API server's TCP must leave with full checksums.
        sh("ethtool", "-K", self.root_leg, "tx", "off")

    async def _prepare_api(self) -> None:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            await install_crds(client)
            ns = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": c.DEFAULT_NAMESPACE},
            }
            with contextlib.suppress(kube.Conflict):
                await client.create(kube.path("", "v1", "namespaces"), ns)

    def _operator_argv(self) -> list[str]:
        # Under voile.lab.supervise, as a Deployment's pod under kubelet: an operator that
        # exits (it stops when it loses its leader Lease, e.g. the API server was down) is
        # started again.
        return [
            sys.executable,
            "-m",
            "voile.lab.supervise",
            "--pidfile",
            str(self.directory / "supervise-operator.pid"),
            "--",
            _bin("voile-operator"),
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            c.DEFAULT_NAMESPACE,
            "--id",
            "lab-operator",
            "--metrics-port",
            "0",
            "--agent-dead-after",
            "60",
        ]

    def _agent_argv(self, host: SimulatedHost) -> list[str]:
        extra: list[str] = []
        mount_namespace = None
        if self.has_nodes:
            node = self.node(host.index)
            mount_namespace = node.mount_namespace
            for allowed in ("/run/netns", str(node.netns_dir)):
                extra += ["--allowed-netns-dir", allowed]
        return host.agent_command(
            host.name,
            self.kubeconfig,
            "--namespace", c.DEFAULT_NAMESPACE,
            "--resync-period", "30",
            # A lab host that dies is found lost (peers stop sending to it) in ~12 s, not 40.
            "--heartbeat-interval", "3",
            "--lease-duration", "12",
            "--metrics-port", str(AGENT_METRICS_PORT),
            *self._state().get("agent_args", []),
            *extra,
            mount_namespace=mount_namespace,
        )  # fmt: skip

    def _ensure_process(
        self, state: dict[str, Any], key: str, argv: Sequence[str], log: Path
    ) -> int:
        pid = state["pids"].get(key)
        if pid and alive(pid):
            return int(pid)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        state["pids"][key] = proc.pid
        self._save(state)
        return proc.pid

    def restart(self, key: str, *, sig: int = signal.SIGTERM) -> int:
        """Stop one lab process (``operator`` or ``agent/host-N``) by ``sig``, start it again."""
        state = self._state()
        pid = state["pids"].get(key)
        if pid:
            terminate(pid, sig, group=True)
        if key == "operator":
            argv, log = self._operator_argv(), self.directory / "operator.log"
        else:
            host = self.host(int(key.rsplit("-", maxsplit=1)[-1]))
            argv, log = self._agent_argv(host), host.directory / "agent.log"
        state["pids"].pop(key, None)
        return self._ensure_process(state, key, argv, log)

    def stop_process(self, key: str, *, sig: int = signal.SIGTERM) -> None:
        state = self._state()
        pid = state["pids"].pop(key, None)
        if pid:
            terminate(pid, sig, group=True)
        self._save(state)

    async def _wait_agents(self, names: Sequence[str], *, timeout: float) -> None:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:

            async def all_beating() -> bool:
                for name in names:
                    lease = await client.get(
                        kube.path(
                            "coordination.k8s.io",
                            "v1",
                            "leases",
                            namespace=c.DEFAULT_NAMESPACE,
                            name=c.AGENT_LEASE_PREFIX + name,
                        )
                    )
                    if lease is None:
                        return False
                return True

            try:
                await kube.wait_for(all_beating, timeout=timeout, what="agent heartbeats")
            except TimeoutError as exc:
                raise LabError(f"{exc}; see {self.directory}/fabric/host-*/agent.log") from exc

    # -- hosts ---------------------------------------------------------------------------------

    def remove_host(self, name: str) -> None:
        """Stop a host's agent and daemons and remove its namespace (the host 'dies'); its
        Endpoints stay in the API. ``up`` makes it again."""
        state = self._state()
        if name not in state["hosts"]:
            raise LabError(f"no host {name} in this lab")
        self.stop_process(f"agent/{name}", sig=signal.SIGKILL)
        if state.get("nodes"):
            self.node(int(name.split("-")[1])).stop()
        self.host(int(name.split("-")[1])).stop()
        state = self._state()
        state["hosts"] = [h for h in state["hosts"] if h != name]
        self._save(state)

    # -- containers ----------------------------------------------------------------------------

    def attach(
        self, host: str, name: str, network: str, ip: str | None = None, *, timeout: float = 60
    ) -> str:
        """A container-like namespace NAME plugged into NETWORK by HOST's agent; its address."""
        state = self._state()
        if host not in state["hosts"]:
            raise LabError(f"no host {host!r} in the lab (hosts: {', '.join(state['hosts'])})")
        if ip is not None:
            ipaddress.IPv4Address(ip)
        netns = self.container_prefix + name
        add_netns(netns)
        state["containers"][name] = {"host": host, "netns": netns, "network": network}
        self._save(state)
        return asyncio.run(self._attach(host, name, network, ip, netns, timeout))

    async def _attach(
        self, host: str, name: str, network: str, ip: str | None, netns: str, timeout: float
    ) -> str:
        request = AttachRequest(
            network=network,
            owner=Owner(kind=OwnerKind.LAB, id=name),
            target=Target(
                kind=TargetKind.NETNS, interface="eth0", netns_path=f"/run/netns/{netns}"
            ),
            namespace=ATTACH_NAMESPACE,
            ip=parse_ipv4(ip, "ip") if ip else None,
            name=name,
            timeout=timeout,
        )
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            try:
                done = await attach.attach(client, attach.ApiSource(client), request, node=host)
            except attach.AttachError as exc:
                raise LabError(f"{name} not attached: {exc}") from exc
        return str(done.ip)

    def detach(self, name: str) -> None:
        """Delete the Endpoint, wait until it is gone, remove the namespace. Idempotent."""
        state = self._state()
        info = state["containers"].get(name)
        asyncio.run(self._detach(name, info["network"] if info else None))
        if info:
            del_netns(info["netns"])
        state["containers"].pop(name, None)
        self._save(state)

    async def _detach(self, name: str, network: str | None, timeout: float = 60) -> None:
        ref = AttachmentRef(
            network=network or "unknown",
            owner=Owner(kind=OwnerKind.LAB, id=name),
            interface="eth0",
            namespace=ATTACH_NAMESPACE,
            timeout=timeout,
            endpoint=name,
        )
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            try:
                await attach.detach(client, attach.ApiSource(client), ref)
            except attach.AttachError as exc:
                raise LabError(f"{name} not detached: {exc}") from exc

    def exec(self, name: str, argv: Sequence[str]) -> int:
        state = self._state()
        info = state["containers"].get(name)
        netns = info["netns"] if info else self.container_prefix + name
        if not netns_exists(netns):
            raise LabError(f"no lab container {name!r}; attach it first")
        return subprocess.call(["ip", "netns", "exec", netns, *argv])

    # -- Docker --------------------------------------------------------------------------------

    def docker_of(self, host: str) -> HostDocker:
        """HOST's dockerd (voile.lab.docker), started on first use with the lab image loaded."""
        state = self._state()
        if host not in state["hosts"]:
            raise LabError(f"no host {host!r} in the lab (hosts: {', '.join(state['hosts'])})")
        docker = HostDocker(self.host(int(host.split("-")[1])), self.run_id)
        docker.start()
        return docker

    def docker(self, host: str, argv: Sequence[str]) -> int:
        """``docker ARGS...`` against HOST's dockerd; its exit status."""
        return run_cli(self.docker_of(host), argv)

    def _stop_dockers(self, names: Sequence[str]) -> None:
        dockers = []
        for name in names:
            with contextlib.suppress(ValueError, IndexError, LabError):
                dockers.append(HostDocker(self.host(int(name.split("-")[1])), self.run_id))
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda d: d.remove(), dockers))

    # -- runtimes (CNI) ------------------------------------------------------------------------

    def _lab_host(self, host: str) -> SimulatedHost:
        state = self._state()
        if host not in state["hosts"]:
            raise LabError(f"no host {host!r} in the lab (hosts: {', '.join(state['hosts'])})")
        return self.host(int(host.split("-")[1]))

    def cni_conf(self, host: str, network: str) -> dict[str, Any]:
        """The conflist that puts a container of HOST on NETWORK (any libcni client)."""
        h = self._lab_host(host)
        return cni.conflist(
            network, socket=h.attach_socket, spool_dir=h.cni_spool_dir, namespace=ATTACH_NAMESPACE
        )

    async def _network_names(self) -> list[str]:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            items, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS))
        return sorted(str(n["metadata"]["name"]) for n in items)

    def podman(self, host: str) -> Podman:
        """HOST's podman, ready to run: its configuration, the busybox image, and one voile
        conflist per OverlayNetwork of the cluster as it is now."""
        runtime = Podman(self._lab_host(host))
        runtime.prepare()
        names = asyncio.run(self._network_names())
        runtime.networks({n: self.cni_conf(host, n) for n in names})
        return runtime

    def crictl(self, host: str, argv: Sequence[str]) -> int:
        """crictl ARGV against HOST's containerd, inside the node (exec and logs need it)."""
        state = self._state()
        if host not in state["hosts"] or not state.get("nodes"):
            raise LabError(f"no Kubernetes node {host!r} in the lab (lab up --nodes)")
        node = self.node(int(host.split("-")[1]))
        return subprocess.call([*node.crictl_argv(), *argv])

    # -- status --------------------------------------------------------------------------------

    def status(self) -> tuple[str, bool]:
        """The table and whether everything is Ready."""
        if self.plane.running() is None:
            return "lab: not running (control plane down)\n", False
        return asyncio.run(self._status())

    async def _status(self) -> tuple[str, bool]:
        state = self._state()
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            leases, _ = await client.list(
                kube.path("coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE)
            )
            nets, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS))
            eps, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS))
        hosts = {}
        for name in state["hosts"]:
            pid = state["pids"].get(f"agent/{name}")
            hosts[name] = "running" if pid and alive(pid) else "DOWN"
        return render_status(nets, leases, eps, hosts=hosts)

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything the lab created. Idempotent; also cleans up a half-started lab."""
        state = self._state()
        names = state["hosts"] or [p.name for p in (self.directory / "fabric").glob("host-*")]
        # Docker first, while the agents still run: they release the containers' Endpoints.
        self._stop_dockers(names)
        pids = state["pids"]
        if pids:
            _say(f"stopping {', '.join(sorted(pids))}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda pid: terminate(pid, group=True), pids.values()))
        errors = self._remove_runtimes(state) + self._stop_nodes(self._host_indexes(state))
        for info in state["containers"].values():
            del_netns(info["netns"])
        for path in Path("/run/netns").glob(self.container_prefix + "*"):
            del_netns(path.name)
        for name in names:
            with contextlib.suppress(ValueError, IndexError):
                self.host(int(name.split("-")[1]))
        _say("removing hosts, underlay and control plane")
        sh("ip", "link", "del", self.root_leg, check=False)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            # Each stop waits for its daemons to exit; the waits overlap.
            stops = [pool.submit(self.plane.stop)]
            stops += [pool.submit(host.stop) for host in self._hosts.values()]
            for stop in stops:
                with contextlib.suppress(Exception):  # fabric.stop below retries and reports
                    stop.result()
        self.fabric.stop()
        for path in Path("/run/netns").glob(f"voile-{self.run_id}-host-*"):
            del_netns(path.name)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory == lab_dir().resolve() and "VOILE_LAB_DIR" not in os.environ:
            with contextlib.suppress(OSError):  # /tmp/voile-<uid>, when nothing else is in it
                self.directory.parent.rmdir()
        if errors:
            raise LabError("not fully removed: " + "; ".join(errors))

    def _remove_runtimes(self, state: dict[str, Any]) -> list[str]:
        """Every container, image, mount and file of the hosts' podman. The agents are gone
        already, so each DEL is recorded in the host's spool (removed with the host)."""
        hosts = {h.name: h for h in (self.host(i) for i in self._host_indexes(state))}
        runtimes = [
            r
            for r in (Podman(h) for h in hosts.values())
            if r.directory.exists() or r.run_directory.exists()
        ]
        if runtimes:
            _say(f"removing containers of {', '.join(r.host.name for r in runtimes)}")
        errors = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for runtime, done in [(r, pool.submit(r.cleanup)) for r in runtimes]:
                try:
                    done.result()
                except Exception as exc:  # the rest of down still runs; reported at its end
                    errors.append(f"{runtime.host.name}: {exc}")
        return errors

    def _host_indexes(self, state: dict[str, Any]) -> list[int]:
        names = set(state["hosts"]) | {p.name for p in (self.directory / "fabric").glob("host-*")}
        indexes = []
        for name in names:
            with contextlib.suppress(ValueError, IndexError):
                indexes.append(int(name.split("-")[1]))
        return sorted(indexes)
