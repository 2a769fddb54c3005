"""Convergence: an Endpoint applied with kubectl until its first successful ping, in the lab.

For each of N endpoints (default 100) spread over 3 hosts: create a namespace, `kubectl apply` an
Endpoint into it, then ping a probe endpoint on host-1 from it until the first reply. Reported:
p50/p99/max of that time, against Kubernetes' pod-startup SLO (p99 <= 5 s).

Baseline in the same run: the same namespace plumbed by hand with `ip` (veth to a Linux bridge,
address, ping a neighbour): the cost of the kernel work alone, with no API server, operator or
agent. The ratio says what the control plane and the agent add on top of it.

Bounded: N endpoints, a 15 s limit per endpoint, 25 minutes overall. Run as root:
    .venv/bin/python bench/bench_convergence.py [--endpoints 100] [--hosts 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voile.lab import measure
from voile.lab.host import add_netns, del_netns
from voile.lab.lab import Lab
from voile.lab.measure import percentile

PER_ENDPOINT_LIMIT = 15.0
OVERALL_LIMIT = 25 * 60.0


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, check=check, input=input, timeout=60
    )


def first_ping(netns: str, address: str, limit: float) -> float:
    """Seconds until the first echo reply (ping every 50 ms), or raise after ``limit``."""
    took = measure.first_ping(netns, address, limit)
    if took is None:
        raise TimeoutError(f"no ping from {netns} to {address} within {limit}s")
    return took


def endpoint_yaml(name: str, node: str, netns: str) -> str:
    return f"""apiVersion: voile.dev/v1alpha1
kind: Endpoint
metadata: {{name: {name}, namespace: default}}
spec:
  network: bench
  node: {node}
  target: {{netns: {{path: /run/netns/{netns}, interface: eth0}}}}
"""


def baseline(count: int) -> list[float]:
    """Namespace + veth + Linux bridge + address + first ping, by hand."""
    ns_bridge = "voile-bench-bl"
    add_netns(ns_bridge)
    times: list[float] = []
    try:
        sh("ip", "-n", ns_bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns_bridge, "link", "set", "br0", "up")
        sh("ip", "-n", ns_bridge, "addr", "add", "198.19.250.254/24", "dev", "br0")
        for i in range(count):
            netns = f"voile-bench-bl{i}"
            start = time.monotonic()
            add_netns(netns)
            sh(
                "ip",
                "link",
                "add",
                f"vbb{i}",
                "netns",
                ns_bridge,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            sh("ip", "-n", ns_bridge, "link", "set", f"vbb{i}", "master", "br0", "up")
            sh("ip", "-n", netns, "addr", "add", f"198.19.250.{i + 1}/24", "dev", "eth0")
            sh("ip", "-n", netns, "link", "set", "eth0", "up")
            first_ping(netns, "198.19.250.254", PER_ENDPOINT_LIMIT)
            times.append(time.monotonic() - start)
            del_netns(netns)
    finally:
        for i in range(count):
            del_netns(f"voile-bench-bl{i}")
        del_netns(ns_bridge)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_convergence needs root", file=sys.stderr)
        return 2
    count = max(1, min(args.endpoints, 250))
    began = time.monotonic()
    base = baseline(min(count, 50))

    with tempfile.TemporaryDirectory(prefix="voile-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab", run_id="bench", underlay_octet=9)
        names: list[str] = []
        try:
            lab.up(hosts=args.hosts, datapath="ovs")
            env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
            network = (
                "apiVersion: voile.dev/v1alpha1\nkind: OverlayNetwork\n"
                "metadata: {name: bench}\nspec: {cidr: 198.19.0.0/24}\n"
            )
            subprocess.run(
                ["kubectl", "apply", "-f", "-"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                input=network,
                timeout=60,
            )
            probe = lab.attach("host-1", "probe", "bench")
            times: list[float] = []
            for i in range(count):
                if time.monotonic() - began > OVERALL_LIMIT:
                    print(f"stopped after {i} endpoints: overall limit", file=sys.stderr)
                    break
                name, node = f"b{i}", f"host-{i % args.hosts + 1}"
                netns = f"{lab.container_prefix}{name}"
                add_netns(netns)
                names.append(netns)
                start = time.monotonic()
                subprocess.run(
                    ["kubectl", "apply", "-f", "-"],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    input=endpoint_yaml(name, node, netns),
                )
                first_ping(netns, probe, PER_ENDPOINT_LIMIT)
                times.append(time.monotonic() - start)
        finally:
            lab.down()
            for netns in names:
                del_netns(netns)

    print(f"endpoints: {len(times)} on {args.hosts} hosts")
    print(f"{'':28}{'p50 s':>8}{'p99 s':>8}{'max s':>8}")
    for label, values in (("voile (kubectl -> ping)", times), ("baseline (ip by hand)", base)):
        print(
            f"{label:28}{statistics.median(values):8.3f}{percentile(values, 99):8.3f}"
            f"{max(values):8.3f}"
        )
    print(
        f"ratio voile/baseline: p50 {statistics.median(times) / statistics.median(base):.1f}x, "
        f"p99 {percentile(times, 99) / percentile(base, 99):.1f}x"
    )
    slo = percentile(times, 99) <= 5.0
    print(f"pod-startup SLO (p99 <= 5 s): {'met' if slo else 'MISSED'}")
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
