"""Data-path probes on real OVS, on eBPF, and between the two (mixed): each agent probes the
VTEPs that share a network with it, in that network's VNI, at full MTU with DF and small,
answered by the peer's datapath; the report lands in the agent's heartbeat Lease. Faults are
made where operators meet them: VXLAN dropped in the underlay (an nftables bridge rule in the
fabric), a smaller MTU on one host's link.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from voile import kube
from voile.api import constants as c
from voile.lab.host import sh

from .conftest import Lab, Operator, in_ns

CIDR = "198.19.30.0/24"


async def report(op: Operator, node: str) -> dict[str, Any]:
    lease = await op.user.get(
        kube.path(
            "coordination.k8s.io",
            "v1",
            "leases",
            namespace=c.DEFAULT_NAMESPACE,
            name=c.AGENT_LEASE_PREFIX + node,
        )
    )
    raw = ((lease or {}).get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_PROBES)
    return json.loads(raw) if raw else {}


async def states(op: Operator, node: str, vni: int) -> dict[str, str]:
    got = await report(op, node)
    return {p["vtep"]: p["state"] for p in got.get("paths", []) if p["vni"] == vni}


async def wait_states(
    op: Operator, node: str, vni: int, want: dict[str, str], timeout: float
) -> float:
    started = time.monotonic()
    while True:
        got = await states(op, node, vni)
        if got == want:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{node}: {got} != {want}"
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("lab", ["ovs", "ebpf", "mixed"], indirect=True)
async def test_probes_report_health_and_name_blocked_and_mtu_broken_paths(
    lab: tuple[Lab, Operator],
) -> None:
    the_lab, op = lab
    hosts = the_lab.add_hosts(3)
    vni = 7001
    net = await op.network("probed", CIDR, vni)
    spaces = []
    for i, host in enumerate(hosts):
        ns = host.endpoint_namespace(f"p{i}")
        spaces.append(ns)
        await op.endpoint(
            f"p{i}",
            network=net,
            node=the_lab.node(host),
            ip=f"198.19.30.{i + 2}",
            netns=ns,
            vni=vni,
        )
    for i in range(3):
        await op.ready(f"p{i}")
    a, b, cc = (str(h.address) for h in hosts)
    nodes = [the_lab.node(h) for h in hosts]
    for node, peers in zip(nodes, ([b, cc], [a, cc], [a, b]), strict=True):
        await wait_states(op, node, vni, {p: "ok" for p in peers}, timeout=30)
    first = await report(op, nodes[0])
    assert first["vnis"] == [vni] and first["vtep"] == a

    # VXLAN from host 1 to host 2 dropped in the underlay: only that pair breaks, both ways.
    fabric = the_lab.fabric.namespace
    nft = ["ip", "netns", "exec", fabric, "nft"]
    sh(*nft, "add", "table", "bridge", "vfault")
    sh(*nft, "add", "chain", "bridge", "vfault", "drops",
       "{ type filter hook forward priority 0 ; }")  # fmt: skip
    sh(*nft, "add", "rule", "bridge", "vfault", "drops",
       "ip", "saddr", a, "ip", "daddr", b, "udp", "dport", "4789", "drop")  # fmt: skip
    try:
        took = await wait_states(op, nodes[0], vni, {b: "unreachable", cc: "ok"}, timeout=10)
        await wait_states(op, nodes[1], vni, {a: "unreachable", cc: "ok"}, timeout=10)
        await wait_states(op, nodes[2], vni, {a: "ok", b: "ok"}, timeout=5)
        assert in_ns(spaces[0], "ping", "-c", "2", "-W", "1", "198.19.30.4").returncode == 0
    finally:
        sh(*nft, "delete", "table", "bridge", "vfault")
    await wait_states(op, nodes[0], vni, {b: "ok", cc: "ok"}, timeout=10)
    print(f"unreachable reported after {took:.1f} s")

    # A smaller MTU on host 1's link: full-size probes fail, small ones pass.
    link = f"vf{the_lab.fabric.id}h1"[:15]
    sh("ip", "-n", fabric, "link", "set", link, "mtu", "1400")
    try:
        await wait_states(op, nodes[0], vni, {b: "mtu", cc: "mtu"}, timeout=10)
        await wait_states(op, nodes[2], vni, {a: "mtu", b: "ok"}, timeout=10)
        assert in_ns(spaces[0], "ping", "-c", "2", "-W", "1", "198.19.30.3").returncode == 0
        big = in_ns(
            spaces[0], "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", "198.19.30.3"
        )
        assert big.returncode != 0
    finally:
        sh("ip", "-n", fabric, "link", "set", link, "mtu", "1500")
    await wait_states(op, nodes[0], vni, {b: "ok", cc: "ok"}, timeout=10)
