"""What data-path probes cost a node: CPU and packets per second at N hosts and M networks.

Real: a control plane, N simulated hosts with their own Open vSwitch and a real voile-agent each,
M networks that span every host (one endpoint per host and network, allocated the way the
operator would). Two phases in the same run, on the same datapaths: the agents with probes off
(`--probe-interval 0`: the baseline), then with the default interval. For each phase, over the
same window: the agents' and ovs-vswitchd's CPU (from /proc), and the packets per second on each
host's underlay NIC. The difference is what the probes cost. Bounded: two windows of --seconds.

    sudo .venv/bin/python bench/bench_probes.py [--hosts 10] [--networks 20] [--seconds 30]

Only 198.18.0.0/15 addresses, only inside namespaces it creates; everything is removed at the
end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
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
from voile.lab.measure import free_octet

NS = "voile-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def nic_counters(host: SimulatedHost) -> tuple[int, int]:
    """Packets and bytes, both directions, on the host's underlay NIC."""
    stats = "/sys/class/net/eth0/statistics/"
    out = [int(x) for x in host.exec(
        "cat", *(stats + n for n in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes"))
    ).stdout.split()]  # fmt: skip
    return out[0] + out[1], out[2] + out[3]


def vswitchd_pid(host: SimulatedHost) -> int:
    return int((host.directory / "ovs-vswitchd.pid").read_text().strip())


async def populate(kubeconfig: Path, rid: str, hosts: list[SimulatedHost], networks: int) -> int:
    """M networks over every host, one allocated endpoint per host and network."""
    count = 0
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
        for m in range(networks):
            net, vni = f"probe-{rid}-{m}", 5000 + m
            await user.create(
                kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
                {"apiVersion": c.API_VERSION, "kind": c.OVERLAY_NETWORK,
                 "metadata": {"name": net}, "spec": {"cidr": f"198.19.{100 + m}.0/24"}},
            )  # fmt: skip
            await op.patch(
                kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net, subresource="status"),
                {"apiVersion": c.API_VERSION, "kind": c.OVERLAY_NETWORK,
                 "metadata": {"name": net}, "status": {"vni": vni, "mtu": 1450}},
                kind="apply",
            )  # fmt: skip
            for i, host in enumerate(hosts):
                ns_path = host.endpoint_namespace(f"n{m}")
                ip = f"198.19.{100 + m}.{i + 2}"
                name = f"p-{rid}-{m}-{i}"
                await user.create(
                    kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS),
                    {"apiVersion": c.API_VERSION, "kind": c.ENDPOINT,
                     "metadata": {"name": name, "namespace": NS},
                     "spec": {"network": net, "node": f"bench-{rid}-{host.name}",
                              "target": {"netns": {"path": ns_path, "interface": "eth0"}}}},
                )  # fmt: skip
                await op.patch(
                    kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS, name=name,
                              subresource="status"),
                    {"apiVersion": c.API_VERSION, "kind": c.ENDPOINT,
                     "metadata": {"name": name, "namespace": NS},
                     "status": {"ip": ip, "mac": mac_for(ipaddress.IPv4Address(ip)),
                                "prefixLength": 24, "vni": vni, "mtu": 1450}},
                    kind="apply",
                )  # fmt: skip
                count += 1
    return count


async def wait_ready(kubeconfig: Path, count: int, timeout: float) -> None:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        deadline = time.monotonic() + timeout
        while True:
            items, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS))
            ready = sum(
                1
                for e in items
                for cond in (e.get("status") or {}).get("conditions") or []
                if cond.get("type") == "Ready" and cond.get("status") == "True"
            )
            if ready >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready}/{count} endpoints Ready")
            await asyncio.sleep(2)


async def probes_settled(kubeconfig: Path, hosts: int, networks: int, timeout: float) -> int:
    """Wait until every agent reports every path ok; the number of paths per node."""
    want = (hosts - 1) * networks
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        deadline = time.monotonic() + timeout
        while True:
            leases, _ = await client.list(
                kube.path("coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE)
            )
            oks = []
            for lease in leases:
                raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(
                    c.ANNOTATION_PROBES
                )
                paths = json.loads(raw).get("paths", []) if raw else []
                oks.append(sum(1 for p in paths if p["state"] == "ok"))
            if len(oks) >= hosts and min(oks) >= want:
                return want
            if time.monotonic() > deadline:
                raise RuntimeError(f"probes not settled: ok paths per node {sorted(oks)}")
            await asyncio.sleep(2)


def start_agents(
    hosts: list[SimulatedHost], kubeconfig: Path, rid: str, interval: float
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for host in hosts:
        log = (host.directory / "agent.log").open("a")
        procs.append(
            subprocess.Popen(
                host.agent_command(
                    f"bench-{rid}-{host.name}",
                    kubeconfig,
                    "--probe-interval",
                    str(interval),
                    "--resync-period",
                    "60",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def stop_agents(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def window(
    hosts: list[SimulatedHost], agents: list[subprocess.Popen[bytes]], seconds: float
) -> dict[str, float]:
    """Mean per node over the window: agent CPU %, ovs-vswitchd CPU %, underlay packets/s."""
    switches = [vswitchd_pid(h) for h in hosts]
    a0 = [cpu_seconds(p.pid) for p in agents]
    s0 = [cpu_seconds(p) for p in switches]
    n0 = [nic_counters(h) for h in hosts]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    a1 = [cpu_seconds(p.pid) for p in agents]
    s1 = [cpu_seconds(p) for p in switches]
    n1 = [nic_counters(h) for h in hosts]
    count = len(hosts)
    return {
        "agent_cpu": 100 * sum(b - a for a, b in zip(a0, a1, strict=True)) / elapsed / count,
        "vswitchd_cpu": 100 * sum(b - a for a, b in zip(s0, s1, strict=True)) / elapsed / count,
        "nic_pps": sum(b[0] - a[0] for a, b in zip(n0, n1, strict=True)) / elapsed / count,
        "nic_mbps": sum(b[1] - a[1] for a, b in zip(n0, n1, strict=True))
        * 8
        / 1e6
        / elapsed
        / count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--networks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--octet", type=int, default=0, help="underlay 198.18.<octet>.0/24 "
                        "(default: a free one)")  # fmt: skip
    args = parser.parse_args()
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"voile-bench-{rid}-"))
    plane = ControlPlane(workdir / "controlplane")
    octet = args.octet or free_octet()
    fabric = Fabric(workdir / "fabric", rid, ipaddress.IPv4Network(f"198.18.{octet}.0/24"))
    forwarders: list[LoopbackForwarder] = []
    agents: list[subprocess.Popen[bytes]] = []
    try:
        print(f"# {args.hosts} hosts, {args.networks} networks", file=sys.stderr)
        endpoints = plane.start()
        port = int(urlparse(endpoints.server).port or 443)
        fabric.start()
        hosts = [fabric.host(i + 1).start() for i in range(args.hosts)]
        for host in hosts:
            forwarders.append(LoopbackForwarder(host.netns_path, port).start())
        count = asyncio.run(populate(endpoints.kubeconfig, rid, hosts, args.networks))
        agents = start_agents(hosts, endpoints.kubeconfig, rid, 0)
        asyncio.run(wait_ready(endpoints.kubeconfig, count, timeout=600))
        time.sleep(5)
        base = window(hosts, agents, args.seconds)
        stop_agents(agents)
        agents = start_agents(hosts, endpoints.kubeconfig, rid, args.interval)
        paths = asyncio.run(
            probes_settled(endpoints.kubeconfig, args.hosts, args.networks, timeout=300)
        )
        probed = window(hosts, agents, args.seconds)
    finally:
        stop_agents(agents)
        for fwd in forwarders:
            fwd.stop()
        fabric.stop()
        plane.stop()
        sh("rm", "-rf", str(workdir), check=False)
    load = os.getloadavg()[0]
    print(f"probes: {args.hosts} hosts x {args.networks} networks, {paths} paths per node, "
          f"2 probes per path every {args.interval:g} s; window {args.seconds:g} s; "
          f"load {load:.1f}")  # fmt: skip
    print(f"{'per node':28} {'probes off':>11} {'probes on':>11} {'cost':>9} {'ratio':>7}")
    for key, label in (
        ("agent_cpu", "voile-agent CPU %"),
        ("vswitchd_cpu", "ovs-vswitchd CPU %"),
        ("nic_pps", "underlay packets/s"),
        ("nic_mbps", "underlay Mbit/s"),
    ):
        cost = probed[key] - base[key]
        ratio = f"{probed[key] / base[key]:7.2f}" if base[key] > 0 else "      -"
        print(f"{label:28} {base[key]:11.2f} {probed[key]:11.2f} {cost:9.2f} {ratio}")
    expected = paths * 2 * 2 * 2 / args.interval  # out and back, both directions, 2 sizes
    print(f"expected probe packets/s per node on the underlay: {expected:.0f}")
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
