"""Single-stream TCP and ping latency, endpoint to endpoint across two simulated hosts, five
ways, in one run (rounds interleaved, so all paths share the machine's conditions):

1. over the underlay veth between two host namespaces (the limit here);
2. plain kernel VXLAN + a Linux bridge per host, static flood entry (Flannel / Docker overlay);
3. Voile on OVS: real control plane, real `voile-agent` per host, OVS userspace datapath
   (netdev, AF_PACKET ports), flow-based VXLAN;
4. Voile on eBPF: tc programs and a VXLAN device in external mode, TX offloads on (default);
5. Voile on eBPF with TX offloads off on the endpoints (what a network shared with OVS netdev
   hosts needs).

Prints the median over --rounds of Gbit/s, the ratios to the underlay and to kernel VXLAN +
bridge, the ping RTT (median of 20 pings at 10 ms) and CPU per Gbit/s (cores busy during the
iperf3 run, machine-wide from /proc/stat, divided by Gbit/s: noisy where other work runs).
Bounded: each iperf3 runs -t SECONDS. Run as root:
``.venv/bin/python bench/bench_datapath.py [--seconds 3] [--rounds 3]``. Everything it makes
(namespaces, daemons, bpffs mounts, the control plane) is removed at the end, also on failure.
Only 198.18.0.0/15 addresses (underlay 198.18.<--octet>.0/24), only inside namespaces it creates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

from voile import kube
from voile.api import constants as c
from voile.api.model import mac_for
from voile.controlplane import ControlPlane
from voile.crds import install_crds
from voile.lab.host import Fabric, LoopbackForwarder, SimulatedHost, run_id, sh

NS = "voile-bench"


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def iperf_cpu(server_ns: str, client_ns: str, address: str, seconds: int) -> tuple[float, float]:
    """(Gbit/s, cores busy machine-wide meanwhile)."""
    busy0, total0 = busy_jiffies()
    gbps = iperf(server_ns, client_ns, address, seconds)
    busy1, total1 = busy_jiffies()
    cores = (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
    return gbps, cores


def ping_rtt(netns: str, address: str) -> float:
    """Median RTT (ms) of 20 pings at 10 ms intervals."""
    out = sh(
        "ip", "netns", "exec", netns, "ping", "-n", "-c", "20", "-i", "0.01", "-W", "1", address,
        check=False, timeout=30,
    ).stdout  # fmt: skip
    rtts = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out)]
    return statistics.median(rtts) if rtts else float("nan")


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


async def voile_setup(
    kubeconfig: Path, rid: str, hosts: list[SimulatedHost], *, octet: int, vni: int
) -> list[str]:
    """A network (198.19.<octet>.0/24) and one endpoint per host, allocated the way the
    operator would."""
    net = f"bench-{rid}-{vni}"
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
                "spec": {"cidr": f"198.19.{octet}.0/24"},
            },
        )
        await op.patch(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net, subresource="status"),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": net},
                "status": {"vni": vni, "mtu": 1450},
            },
            kind="apply",
        )
        for i, host in enumerate(hosts):
            ns_path = host.endpoint_namespace("bench")
            nss.append(ns_path)
            ip = f"198.19.{octet}.{i + 2}"
            name = f"bench-{rid}-{vni}-{i}"
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
                        "vni": vni,
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


UNDERLAY = "underlay veth (host to host)"
KERNEL = "kernel VXLAN + Linux bridge"
OVS = "Voile on OVS (netdev)"
EBPF = "Voile on eBPF (offloads on)"
EBPF_OFF = "Voile on eBPF (offloads off)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--octet", type=int, default=21, help="underlay 198.18.<octet>.0/24")
    args = parser.parse_args()
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"voile-bench-{rid}-"))
    plane = ControlPlane(workdir / "controlplane")
    underlay = ipaddress.IPv4Network(f"198.18.{args.octet}.0/24")
    fabric = Fabric(workdir / "fabric", rid, underlay)
    agents: list[subprocess.Popen[bytes]] = []
    forwarders: list[LoopbackForwarder] = []
    gbps: dict[str, list[float]] = defaultdict(list)
    cores: dict[str, list[float]] = defaultdict(list)
    rtt: dict[str, list[float]] = defaultdict(list)
    try:
        print("# starting control plane and 8 simulated hosts", file=sys.stderr)
        endpoints = plane.start()
        port = int(urlparse(endpoints.server).port or 443)
        fabric.start()
        pairs: dict[str, list[SimulatedHost]] = {
            OVS: [fabric.host(i, datapath="ovs") for i in (1, 2)],
            EBPF: [fabric.host(i, datapath="ebpf") for i in (3, 4)],
            EBPF_OFF: [fabric.host(i, datapath="ebpf") for i in (5, 6)],
        }
        for host in pairs[EBPF_OFF]:
            host.offload = False
        kernel_hosts = [fabric.host(i, datapath="none").start() for i in (11, 12)]
        paths: dict[str, tuple[str, str, str]] = {}  # name -> (server ns, client ns, address)
        for (name, hosts), (octet, vni) in zip(
            pairs.items(), ((30, 3030), (32, 3032), (33, 3033)), strict=True
        ):
            for host in hosts:
                host.start()
                forwarders.append(LoopbackForwarder(host.netns_path, port).start())
                node = f"bench-{rid}-{host.name}"
                agents.append(start_agent(host, endpoints.kubeconfig, node))
            nss = asyncio.run(voile_setup(endpoints.kubeconfig, rid, hosts, octet=octet, vni=vni))
            a, b = (Path(p).name for p in nss)
            wait_ping(a, f"198.19.{octet}.3", timeout=120)
            paths[name] = (b, a, f"198.19.{octet}.3")

        k1 = kernel_vxlan(kernel_hosts[0], kernel_hosts[1], "198.19.31.2")
        k2 = kernel_vxlan(kernel_hosts[1], kernel_hosts[0], "198.19.31.3")
        wait_ping(k1, "198.19.31.3")
        paths[KERNEL] = (k2, k1, "198.19.31.3")
        h1, h2 = (h.namespace for h in kernel_hosts)
        paths[UNDERLAY] = (h2, h1, str(kernel_hosts[1].address))

        order = [UNDERLAY, KERNEL, OVS, EBPF, EBPF_OFF]
        for r in range(args.rounds):
            for name in order:
                server, client, address = paths[name]
                g, busy = iperf_cpu(server, client, address, args.seconds)
                gbps[name].append(g)
                cores[name].append(busy)
                rtt[name].append(ping_rtt(client, address))
                print(f"# round {r + 1} {name}: {g:.2f} Gbit/s", file=sys.stderr)
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

    med = {name: statistics.median(v) for name, v in gbps.items()}
    base, kernel = med[UNDERLAY], med[KERNEL]
    print(
        f"TCP 1 stream, iperf3 -t {args.seconds}, median of {args.rounds} rounds; "
        "ping: median of 20 at 10 ms"
    )
    print(
        f"| {'path':32} | {'Gbit/s':>6} | {'x underlay':>10} | {'x kernel VXLAN+bridge':>21} "
        f"| {'ping ms':>7} | {'cores per Gbit/s':>16} |"
    )
    print(f"| {'-' * 32} | {'-' * 5}: | {'-' * 9}: | {'-' * 20}: | {'-' * 6}: | {'-' * 15}: |")
    for name in [UNDERLAY, KERNEL, OVS, EBPF, EBPF_OFF]:
        g = med[name]
        per = statistics.median(cores[name]) / g if g > 0 else float("inf")
        print(
            f"| {name:32} | {g:6.2f} | {g / base:10.2f} | {g / kernel:21.2f} "
            f"| {statistics.median(rtt[name]):7.3f} | {per:16.2f} |"
        )
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
