"""Fixtures for the functional tier: real Open vSwitch daemons in simulated hosts (network
namespaces joined by an underlay bridge), a real control plane, real `voile-agent` processes.

What is real: etcd + kube-apiserver with Voile's CRDs, ovsdb-server + ovs-vswitchd (userspace
datapath) per host, the agent binary, the kernel's veths and namespaces, ping/iperf3/tcpdump.
What is not: the operator, in most modules. Those tests act as the operator by writing the status
fields it owns (server-side apply, field manager ``voile-operator``), so that the agent is tested
alone. Modules that need the whole attach path (the CNI plugin) run the real `voile-operator`
(``OperatorProcess``) against a control plane of their own (``own_plane``), so that it never
allocates the objects of the modules that play its part.

Every name carries a run id, so parallel sessions on one machine do not collide; every fixture
removes what it made (processes, namespaces, links, files, API objects), also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from voile import kube
from voile.api import constants as c
from voile.api.model import mac_for
from voile.controlplane import ControlPlane, Endpoints
from voile.crds import install_crds
from voile.lab.host import Fabric, LoopbackForwarder, SimulatedHost, run_id

AGENT = str(Path(sys.executable).with_name("voile-agent"))
OPERATOR = str(Path(sys.executable).with_name("voile-operator"))
AGENT_METRICS_PORT = 9464  # each agent listens inside its own host namespace
TEST_NAMESPACE = "voile-functional"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "functional tests need root"
    for tool in ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ip", "iperf3", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason:
        for item in items:
            if "functional" in Path(str(item.fspath)).parts:
                item.add_marker(pytest.mark.skip(reason=reason))


@contextlib.contextmanager
def _control_plane(directory: Path) -> Iterator[Endpoints]:
    """A started control plane with the CRDs and the test namespaces; stopped afterwards."""
    cp = ControlPlane(directory)
    try:
        endpoints = cp.start()

        async def prepare() -> None:
            async with kube.KubeClient.from_config(str(endpoints.kubeconfig)) as client:
                await install_crds(client)
                for ns in (c.DEFAULT_NAMESPACE, TEST_NAMESPACE):
                    with contextlib.suppress(kube.Conflict):
                        await client.create(
                            kube.path("", "v1", "namespaces"),
                            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                        )

        asyncio.run(prepare())
        yield endpoints
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    with _control_plane(tmp_path_factory.mktemp("controlplane")) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """A control plane of the module's own, for modules that run the real operator."""
    with _control_plane(tmp_path_factory.mktemp("own-controlplane")) as endpoints:
        yield endpoints


class OperatorProcess:
    """One real `voile-operator` (allocation of VNIs, addresses and MACs, finalizers)."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> OperatorProcess:
        argv = [
            OPERATOR,
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", c.DEFAULT_NAMESPACE,
            "--id", f"ft-{run_id()}",
            "--metrics-port", "0",
            "--agent-dead-after", "60",
        ]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        return self

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The operator stopped (SIGSTOP) meanwhile: nothing gets allocated."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Operator:
    """Plays the operator's part: creates objects and writes the status the operator owns."""

    def __init__(self, user: kube.KubeClient, operator: kube.KubeClient, rid: str) -> None:
        self.user = user
        self.op = operator
        self.rid = rid
        self.endpoints: list[str] = []
        self.networks: list[str] = []

    def net_name(self, short: str) -> str:
        return f"ft-{self.rid}-{short}"

    async def network(
        self, short: str, cidr: str, vni: int, *, mtu: int = 1450, gateway: str | None = None
    ) -> str:
        name = self.net_name(short)
        spec: dict[str, Any] = {"cidr": cidr}
        if gateway:
            spec["gateway"] = gateway
        await self.user.create(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": name},
                "spec": spec,
            },
        )
        self.networks.append(name)
        await self.op.patch(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=name, subresource="status"),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": name},
                "status": {"vni": vni, "mtu": mtu},
            },
            kind="apply",
        )
        return name

    async def endpoint(
        self,
        name: str,
        *,
        network: str,
        node: str,
        ip: str,
        netns: str,
        interface: str = "eth0",
        prefix: int = 24,
        vni: int,
        mtu: int = 1450,
        allocate: bool = True,
        host_interface: str | None = None,
    ) -> str:
        await self.user.create(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=TEST_NAMESPACE),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.ENDPOINT,
                "metadata": {"name": name, "namespace": TEST_NAMESPACE},
                "spec": {
                    "network": network,
                    "node": node,
                    "target": (
                        {"host": {"interface": host_interface}}
                        if host_interface
                        else {"netns": {"path": netns, "interface": interface}}
                    ),
                },
            },
        )
        self.endpoints.append(name)
        if allocate:
            await self.allocate(name, ip=ip, prefix=prefix, vni=vni, mtu=mtu)
        return name

    async def allocate(self, name: str, *, ip: str, prefix: int, vni: int, mtu: int) -> None:
        await self.op.patch(
            kube.path(
                c.GROUP,
                c.VERSION,
                c.ENDPOINTS,
                namespace=TEST_NAMESPACE,
                name=name,
                subresource="status",
            ),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.ENDPOINT,
                "metadata": {"name": name, "namespace": TEST_NAMESPACE},
                "status": {
                    "ip": ip,
                    "mac": mac_for(ipaddress.IPv4Address(ip)),
                    "prefixLength": prefix,
                    "vni": vni,
                    "mtu": mtu,
                    "conditions": [
                        {
                            "type": "Allocated",
                            "status": "True",
                            "reason": "Allocated",
                            "message": f"{ip}",
                            "lastTransitionTime": "2025-01-01T00:00:00Z",
                        }
                    ],
                },
            },
            kind="apply",
        )

    def _path(self, name: str) -> str:
        return kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=TEST_NAMESPACE, name=name)

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.user.get(self._path(name))

    async def ready(
        self, name: str, *, timeout: float = 60, reason: str = "Ready"
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.get(name)
            for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("reason") == reason:
                    return obj
            return None

        result: dict[str, Any] = await kube.wait_for(
            check, timeout=timeout, interval=0.3, what=f"{name} Ready reason {reason}"
        )
        return result

    async def delete(self, name: str) -> None:
        await self.user.delete(self._path(name))

    async def gone(self, name: str, *, timeout: float = 60) -> None:
        async def check() -> bool:
            return await self.get(name) is None

        await kube.wait_for(check, timeout=timeout, interval=0.3, what=f"{name} deleted")

    async def cleanup(self) -> None:
        """Remove what this test made, dropping finalizers (the agents may be gone)."""
        for name in self.endpoints:
            with contextlib.suppress(kube.ApiError):
                await self.user.patch(self._path(name), {"metadata": {"finalizers": None}})
            with contextlib.suppress(kube.ApiError):
                await self.delete(name)
        for name in self.networks:
            with contextlib.suppress(kube.ApiError):
                await self.user.delete(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=name))


class AgentProcess:
    """One real `voile-agent run` inside a simulated host's namespace."""

    def __init__(self, host: SimulatedHost, kubeconfig: Path, node: str, resync: float) -> None:
        self.host = host
        self.kubeconfig = kubeconfig
        self.node = node
        self.resync = resync
        self.proc: subprocess.Popen[str] | None = None
        self.log = host.directory / "agent.log"
        self.starts = 0

    def argv(self) -> list[str]:
        return self.host.agent_command(
            self.node,
            self.kubeconfig,
            "--resync-period", str(self.resync),
            "--heartbeat-interval", "2",
            "--metrics-port", str(AGENT_METRICS_PORT),
            "--log-level", "debug",
        )  # fmt: skip

    def start(self) -> AgentProcess:
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"---- start {self.starts} at {time.time():.3f}\n")
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, text=True
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The agent stopped (SIGSTOP) meanwhile, so that a test can change the datapath
        behind its back and see the change before the agent repairs it."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def cleanup_command(self) -> subprocess.CompletedProcess[str]:
        h = self.host
        return h.exec(AGENT, "cleanup", *h.datapath_args(), *h.file_args(), check=False)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(x[:300] for x in self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""


class Lab:
    """Simulated hosts with their agents, and the operator stand-in, for one test."""

    def __init__(self, plane: Endpoints, directory: Path, datapath: str = "ovs") -> None:
        """``datapath``: ovs, ebpf, or mixed (odd hosts ovs, even hosts ebpf, the eBPF hosts
        with TX offloads off, as a network shared with OVS netdev hosts needs)."""
        self.datapath = datapath
        self.rid = run_id()
        self.plane = plane
        self.fabric = Fabric(directory / "fabric", self.rid)
        self.hosts: list[SimulatedHost] = []
        self.agents: list[AgentProcess] = []
        self.forwarders: list[LoopbackForwarder] = []
        self.port = int(urlparse(plane.server).port or 443)

    def node(self, host: SimulatedHost) -> str:
        return f"ft-{self.rid}-{host.name}"

    def add_hosts(self, count: int, *, resync: float = 30.0) -> list[SimulatedHost]:
        self.fabric.start()
        for _ in range(count):
            index = len(self.hosts) + 1
            kind = self.datapath
            if kind == "mixed":
                kind = "ovs" if index % 2 else "ebpf"
            host = self.fabric.host(index, datapath=kind)
            host.offload = self.datapath != "mixed"
            host.start()
            self.hosts.append(host)
            self.forwarders.append(LoopbackForwarder(host.netns_path, self.port).start())
            self.agents.append(
                AgentProcess(host, self.plane.kubeconfig, self.node(host), resync).start()
            )
        return self.hosts

    def stop(self) -> None:
        for agent in self.agents:
            agent.kill()
        for fwd in self.forwarders:
            fwd.stop()
        self.fabric.stop()


@pytest.fixture
async def lab(
    plane: Endpoints, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Lab, Operator]]:
    """Simulated hosts on one datapath (``ovs`` unless the test parametrizes ``lab``
    indirectly with ``ebpf`` or ``mixed``)."""
    the_lab = Lab(plane, tmp_path, getattr(request, "param", "ovs"))
    user = kube.KubeClient.from_config(str(plane.kubeconfig), field_manager="voile-test")
    op = kube.KubeClient.from_config(str(plane.kubeconfig), field_manager="voile-operator")
    operator = Operator(user, op, the_lab.rid)
    try:
        yield the_lab, operator
    finally:
        for agent in the_lab.agents:
            if agent.log.exists():
                sys.stderr.write(f"\n==== agent log {agent.node}\n{agent.log_tail(60)}\n")
        try:
            the_lab.stop()
        finally:
            await operator.cleanup()
            await user.close()
            await op.close()


def run(*cmd: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)


def spawn(*cmd: str) -> subprocess.Popen[str]:
    """A background process (a server, a capture, a long ping) with its output piped."""
    return subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def in_ns(netns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace given by its /run/netns path."""
    return run("ip", "netns", "exec", Path(netns).name, *cmd, timeout=timeout)


# -- reading a host's datapath directly (OVS tools or bpftool), for the backend-neutral tests ----


def bpf_map(host: SimulatedHost, name: str) -> list[dict[str, Any]]:
    """An eBPF host's pinned map as bpftool prints it with BTF: [{"key": ..., "value": ...}]."""
    import json

    pin = host.bpffs / "voile" / "maps" / name
    out = host.exec("bpftool", "-j", "map", "dump", "pinned", str(pin)).stdout
    return [entry.get("formatted", entry) for entry in json.loads(out)]


def ebpf_inventory(host: SimulatedHost) -> dict[str, Any]:
    """The forwarding maps' entries and the program ids on each device of an eBPF host."""
    import json

    maps = {
        name: sorted(json.dumps(e, sort_keys=True) for e in bpf_map(host, name))
        for name in ("voile_ports", "voile_fdb", "voile_arp", "voile_flood", "voile_config")
    }
    net = json.loads(host.exec("bpftool", "-j", "net", "show").stdout)
    progs = sorted(
        (t["devname"], t["id"]) for section in net for t in section.get("tc", []) if "id" in t
    )
    return {"maps": maps, "progs": progs}


def tunnel_rx_packets(host: SimulatedHost, vni: int) -> int:
    """Packets of ``vni`` that ``host`` received from the tunnel."""
    import re

    if host.datapath == "ebpf":
        for entry in bpf_map(host, "voile_vni_stats"):
            if entry["key"] == vni:
                return int(entry["value"]["rx_packets"])
        return 0
    ofport = host.vsctl("get", "interface", "vxlan-voile", "ofport").strip()
    rules = host.ofctl("dump-flows", "br-voile", f"in_port={ofport},tun_id={vni}")
    classifier = [line for line in rules.splitlines() if "priority=100," in line]
    packets = [int(n) for n in re.findall(r"n_packets=(\d+)", "\n".join(classifier))]
    return packets[0] if packets else 0
