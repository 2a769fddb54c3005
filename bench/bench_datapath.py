"""TCP throughput, one stream, endpoint to endpoint across two simulated hosts, three ways:

1. through Voile: real control plane, real `voile-agent` per host, OVS userspace datapath
   (netdev, AF_PACKET ports), flow-based VXLAN;
2. through plain kernel VXLAN + a Linux bridge per host (what Flannel and Docker's overlay do);
3. over the underlay veth between two host namespaces (the physical limit here).

Prints one table with the ratios to the underlay. Bounded: each iperf3 runs -t SECONDS (default
3). Run as root: ``.venv/bin/python bench/bench_datapath.py [--seconds 3]``. Everything it makes
(namespaces, daemons, the control plane) is removed at the end, also on failure. Only
198.18.0.0/15 addresses, only inside namespaces it creates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from voile import kube
from voile.api import constants as c
from voile.api.model import mac_for
from voile.controlplane import ControlPlane
from voile.crds import install_crds
from voile.lab.host import Fabric, LoopbackForwarder, SimulatedHost, run_id, sh

NS = "voile-bench"


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """Gbit/s received, one TCP stream, bounded by -t and a hard timeout."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = sh(
            "ip",
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            address,
            "-t",
            str(seconds),
            "-J",
            timeout=seconds + 30,
        ).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait(5)


def wait_ping(netns: str, address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (
        sh(
            "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address, check=False
        ).returncode
        != 0
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{address} unreachable from {netns}")
        time.sleep(0.5)


# -- 1. Voile ------------------------------------------------------------------------------------


async def voile_setup(kubeconfig: Path, rid: str, hosts: list[SimulatedHost]) -> list[str]:
    """A network and one endpoint per host, allocated the way the operator would."""
    net = f"bench-{rid}"
    nss = []
    async with (
        kube.KubeClient.from_config(str(kubeconfig)) as user,
        kube.KubeClient.from_config(str(kubeconfig), field_manager="voile-operator") as op,
    ):
        await install_crds(user)
        for ns in (c.DEFAULT_NAMESPACE, NS):
            with contextlib.suppress(kube.Conflict):
                await user.create(
                    kube.path("", "v1", "namespaces"),
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                )
        await user.create(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": net},
                "spec": {"cidr": "198.19.30.0/24"},
            },
        )
        await op.patch(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net, subresource="status"),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": net},
                "status": {"vni": 3030, "mtu": 1450},
            },
            kind="apply",
        )
        for i, host in enumerate(hosts):
            ns_path = host.endpoint_namespace("bench")
            nss.append(ns_path)
            ip = f"198.19.30.{i + 2}"
            name = f"bench-{rid}-{i}"
            await user.create(
                kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS),
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.ENDPOINT,
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {
                        "network": net,
                        "node": f"bench-{rid}-{host.name}",
                        "target": {"netns": {"path": ns_path, "interface": "eth0"}},
                    },
                },
            )
            await op.patch(
                kube.path(
                    c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS, name=name, subresource="status"
                ),
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.ENDPOINT,
                    "metadata": {"name": name, "namespace": NS},
                    "status": {
                        "ip": ip,
                        "mac": mac_for(ipaddress.IPv4Address(ip)),
                        "prefixLength": 24,
                        "vni": 3030,
                        "mtu": 1450,
                    },
                },
                kind="apply",
            )
    return nss


def start_agent(host: SimulatedHost, kubeconfig: Path, node: str) -> subprocess.Popen[bytes]:
    log = (host.directory / "agent.log").open("w")
    return subprocess.Popen(
        host.agent_command(node, kubeconfig),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


# -- 2. kernel VXLAN + Linux bridge --------------------------------------------------------------


def kernel_vxlan(host: SimulatedHost, peer: SimulatedHost, pod_ip: str) -> str:
    """Kernel VXLAN (VNI 42, static flood entry to the peer) + bridge + a veth to a pod."""
    n = host.namespace
    pod = host.endpoint_namespace("kpod")
    sh(
        "ip",
        "-n",
        n,
        "link",
        "add",
        "vx42",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "local",
        str(host.address),
        "nolearning",
    )
    sh("ip", "-n", n, "link", "add", "kbr0", "type", "bridge")
    sh("ip", "-n", n, "link", "set", "vx42", "master", "kbr0", "up")
    sh(
        "bridge",
        "-n",
        n,
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vx42",
        "dst",
        str(peer.address),
    )
    sh(
        "ip",
        "-n",
        n,
        "link",
        "add",
        "kpod0",
        "mtu",
        "1450",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        Path(pod).name,
    )
    sh("ip", "-n", n, "link", "set", "kpod0", "master", "kbr0", "up")
    sh("ip", "-n", n, "link", "set", "kbr0", "up")
    p = Path(pod).name
    sh("ip", "-n", p, "link", "set", "eth0", "mtu", "1450", "up")
    sh("ip", "-n", p, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
    return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"voile-bench-{rid}-"))
    plane = ControlPlane(workdir / "controlplane")
    fabric = Fabric(workdir / "fabric", rid)
    agents: list[subprocess.Popen[bytes]] = []
    forwarders: list[LoopbackForwarder] = []
    results: dict[str, float] = {}
    try:
        print("# starting control plane and 4 simulated hosts", file=sys.stderr)
        endpoints = plane.start()
        port = int(urlparse(endpoints.server).port or 443)
        fabric.start()
        voile_hosts = [fabric.host(i).start() for i in (1, 2)]
        kernel_hosts = [fabric.host(i).start() for i in (11, 12)]
        for host in voile_hosts:
            forwarders.append(LoopbackForwarder(host.netns_path, port).start())
            agents.append(start_agent(host, endpoints.kubeconfig, f"bench-{rid}-{host.name}"))
        nss = asyncio.run(voile_setup(endpoints.kubeconfig, rid, voile_hosts))
        a, b = (Path(p).name for p in nss)
        wait_ping(a, "198.19.30.3", timeout=90)
        results["voile (OVS netdev, VXLAN)"] = iperf(b, a, "198.19.30.3", args.seconds)

        k1 = kernel_vxlan(kernel_hosts[0], kernel_hosts[1], "198.19.31.2")
        k2 = kernel_vxlan(kernel_hosts[1], kernel_hosts[0], "198.19.31.3")
        wait_ping(k1, "198.19.31.3")
        results["kernel VXLAN + Linux bridge"] = iperf(k2, k1, "198.19.31.3", args.seconds)

        h1, h2 = (h.namespace for h in kernel_hosts)
        results["underlay veth (host to host)"] = iperf(
            h2, h1, str(kernel_hosts[1].address), args.seconds
        )
    finally:
        for proc in agents:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fwd in forwarders:
            fwd.stop()
        fabric.stop()
        plane.stop()
        sh("rm", "-rf", str(workdir), check=False)

    base = results["underlay veth (host to host)"]
    print(f"TCP throughput, 1 stream, iperf3 -t {args.seconds} (Gbit/s)")
    print(f"{'path':40} {'Gbit/s':>8} {'vs underlay':>12}")
    for name, gbps in results.items():
        print(f"{name:40} {gbps:8.2f} {gbps / base:11.1%}")
    voile, kernel = results["voile (OVS netdev, VXLAN)"], results["kernel VXLAN + Linux bridge"]
    print(f"voile / kernel VXLAN = {voile / kernel:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
