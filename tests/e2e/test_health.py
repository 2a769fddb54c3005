"""Data-path health end to end (issue 15): the lab, real faults in its underlay, the operator's
conditions, and `kubectl voile` (status, trace, diagnose) as a user runs it.

Real: etcd + kube-apiserver, the operator, three simulated hosts with their own Open vSwitch and
voile-agent, kubectl, ping, nftables in the lab's fabric namespace. Faults are made where
operators meet them: VXLAN dropped by an nftables bridge-family rule in the fabric (a rule inside
a host's namespace would not see what the netdev datapath reads from its NIC), and a smaller MTU
for tunnel packets to and from one host (also nftables in the fabric). Its own run id,
directory and underlay octet (50).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from voile import kube
from voile.api import constants as c
from voile.lab.host import run_id, sh
from voile.lab.lab import Lab

from .labtools import kubectl, kubectl_voile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

OCTET = 50
NET = "healthy"
CIDR = "198.19.50.0/24"
DEADLINE = 10.0  # the bound for both transitions


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("hl-lab"), run_id=f"hl{run_id()[:4]}", underlay_octet=OCTET)
    try:
        lab.up(hosts=3)
        yield lab
    finally:
        lab.down()
    leftovers = [p.name for p in Path("/run/netns").glob(f"voile-{lab.run_id}*")]
    assert leftovers == [], f"lab down left namespaces: {leftovers}"


def network(lab: Lab, name: str, cidr: str) -> None:
    kubectl(
        lab,
        "apply",
        "-f",
        "-",
        input=f"apiVersion: {c.API_VERSION}\nkind: {c.OVERLAY_NETWORK}\n"
        f"metadata: {{name: {name}}}\nspec: {{cidr: {cidr}}}\n",
    )


def in_ns(netns: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cond(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((obj or {}).get("status") or {}).get("conditions") or ():
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def wait_for(
    lab: Lab,
    url: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> tuple[float, dict[str, Any]]:
    """Poll one object until ``check`` holds: the time it took, and the object."""

    async def go() -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        last: dict[str, Any] = {}
        async with kube.KubeClient.from_config(str(lab.kubeconfig)) as client:
            while True:
                last = await client.get(url) or {}
                if check(last):
                    return time.monotonic() - started, last
                if time.monotonic() - started > timeout:
                    raise AssertionError(
                        f"{what} not within {timeout} s: {(last.get('status') or {})}"
                    )
                await asyncio.sleep(0.2)

    return asyncio.run(go())


NET_URL = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=NET)


def ep_url(name: str) -> str:
    return kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace="default", name=name)


def pairs(obj: dict[str, Any]) -> set[tuple[str, str, str]]:
    health = (obj.get("status") or {}).get("health") or {}
    return {(p["from"], p["to"], p["reason"]) for p in health.get("brokenPairs") or ()}


def is_status(kind: str, status: str, generation: bool = True) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        got = cond(obj, kind)
        gen = (obj.get("metadata") or {}).get("generation")
        return got.get("status") == status and (
            not generation or got.get("observedGeneration") == gen
        )

    return check


def ping_counts(out: str) -> tuple[int, int]:
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in {out!r}")


@pytest.fixture(scope="module")
def attached(lab: Lab) -> dict[str, str]:
    network(lab, NET, CIDR)
    ips = {f"x{i}": lab.attach(f"host-{i}", f"x{i}", NET) for i in (1, 2, 3)}
    wait_for(lab, NET_URL, is_status("DataPathHealthy", "True"), 60, "DataPathHealthy=True")
    return ips


def test_a_healthy_network_says_so_everywhere(lab: Lab, attached: dict[str, str]) -> None:
    _, net = wait_for(lab, NET_URL, is_status("MTUVerified", "True"), 30, "MTUVerified=True")
    assert cond(net, "DataPathHealthy")["reason"] == "Healthy"
    assert net["status"]["health"] == {"nodesExpected": 3, "nodesRealized": 3, "brokenPairs": []}
    for name in attached:
        _, ep = wait_for(lab, ep_url(name), is_status("DataPathHealthy", "True"), 30, name)
        assert cond(ep, "MTUVerified")["status"] == "True"
        assert ep["status"]["health"]["brokenPairs"] == []
    status = kubectl_voile(lab, "status")
    print(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in attached:
        row = next(r for r in status.stdout.splitlines() if r.startswith(f"default/{name} "))
        assert row.split()[-3:] == ["True", "True", "True"], row
    line = next(row for row in status.stdout.splitlines() if row.startswith(NET + " "))
    assert line.split()[-4:] == ["True", "True", "True", "3/3"], line
    lab_table, ok = lab.status()  # `voile lab status`: the same tables, the same verdict
    assert ok and line in lab_table


def test_vxlan_dropped_between_two_hosts_names_exactly_that_pair(
    lab: Lab, attached: dict[str, str]
) -> None:
    a, b = (str(lab.host(i).address) for i in (1, 2))
    fabric = lab.fabric.namespace
    nft = ["ip", "netns", "exec", fabric, "nft"]
    # Endpoint traffic between the unaffected hosts, all along: x3 <-> x1 and x3 <-> x2.
    x3 = lab.container_netns("x3")
    pings = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                x3,
                "ping",
                "-q",
                "-i",
                "0.01",
                "-c",
                "1500",
                "-w",
                "150",
                attached[peer],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for peer in ("x1", "x2")
    ]
    try:
        sh(*nft, "add", "table", "bridge", "vhealth")
        try:
            sh(*nft, "add", "chain", "bridge", "vhealth", "drops",
               "{ type filter hook forward priority 0 ; }")  # fmt: skip
            sh(*nft, "add", "rule", "bridge", "vhealth", "drops",
               "ip", "saddr", a, "ip", "daddr", b, "udp", "dport", "4789", "drop")  # fmt: skip
            took, net = wait_for(
                lab, NET_URL, is_status("DataPathHealthy", "False"), DEADLINE, "False"
            )
            # Both ends of host-1 <-> host-2 lose their probes (requests one way, replies the
            # other); nothing else is named.
            broken = {("host-1", "host-2", "Unreachable"), ("host-2", "host-1", "Unreachable")}
            _, net = wait_for(lab, NET_URL, lambda o: pairs(o) == broken, 5, "both ends named")
            assert cond(net, "DataPathHealthy")["reason"] == "BrokenPairs"
            assert "host-3" not in cond(net, "DataPathHealthy")["message"]
            _, ep1 = wait_for(lab, ep_url("x1"), is_status("DataPathHealthy", "False"), 5, "x1")
            _, ep3 = wait_for(lab, ep_url("x3"), is_status("DataPathHealthy", "True"), 5, "x3")
            assert {(p["from"], p["to"]) for p in ep1["status"]["health"]["brokenPairs"]} == {
                ("host-1", "host-2"),
                ("host-2", "host-1"),
            }
            assert ep3["status"]["health"]["brokenPairs"] == []
            status = kubectl_voile(lab, "status")
            print(status.stdout)
            assert status.returncode == 1, status.stdout
            row = next(r for r in status.stdout.splitlines() if r.startswith("default/x3 "))
            assert row.split()[-2:] == ["True", "True"], "x3's node is not affected"
            assert f"{NET}: host-1 -> host-2 Unreachable" in status.stdout
            assert not lab.status()[1]
        finally:
            sh(*nft, "delete", "table", "bridge", "vhealth")
        back, _ = wait_for(lab, NET_URL, is_status("DataPathHealthy", "True"), DEADLINE, "back")
        assert pairs(wait_for(lab, NET_URL, lambda o: not pairs(o), 5, "no pairs")[1]) == set()
        print(f"DataPathHealthy=False after {took:.1f} s, True again after {back:.1f} s")
    finally:
        outs = []
        for proc in pings:
            try:
                outs.append(proc.communicate(timeout=180)[0])
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    for out in outs:
        sent, received = ping_counts(out)
        assert sent == 1500 and received == sent, out
    assert kubectl_voile(lab, "status").returncode == 0


def test_a_smaller_underlay_mtu_fails_mtu_verified_while_small_pings_pass(
    lab: Lab, attached: dict[str, str]
) -> None:
    # host-1's underlay path carries no tunnel packet above 1400 bytes (IP length), both ways:
    # an MTU fault in the fabric. Made with nftables rather than the link's MTU: a bridge drops
    # an oversized frame without ICMP, so a lower link MTU also black-holes host-1's API
    # connection (its Lease responses are larger), and the operator would then see host-1's
    # report go stale (DataPathHealthy Unknown, NoReport) instead of four MTU pairs.
    h1 = str(lab.host(1).address)
    fabric = lab.fabric.namespace
    nft = ["ip", "netns", "exec", fabric, "nft"]
    sh(*nft, "add", "table", "bridge", "vmtu")
    try:
        sh(*nft, "add", "chain", "bridge", "vmtu", "small",
           "{ type filter hook forward priority 0 ; }")  # fmt: skip
        for side in ("saddr", "daddr"):
            sh(*nft, "add", "rule", "bridge", "vmtu", "small", "ip", side, h1,
               "udp", "dport", "4789", "ip", "length", "gt", "1400", "drop")  # fmt: skip
        took, net = wait_for(lab, NET_URL, is_status("MTUVerified", "False"), DEADLINE, "MTU")
        # Both directions of every pair with host-1; host-2 <-> host-3 is not named.
        ends = [
            ("host-1", "host-2"),
            ("host-2", "host-1"),
            ("host-1", "host-3"),
            ("host-3", "host-1"),
        ]
        want = {(s, t, "MTU") for s, t in ends}
        _, net = wait_for(lab, NET_URL, lambda o: pairs(o) == want, 5, "the MTU pairs")
        assert cond(net, "MTUVerified")["reason"] == "MTUTooSmall"
        assert cond(net, "DataPathHealthy")["status"] == "True", "small probes still pass"
        x1 = lab.container_netns("x1")
        small = in_ns(x1, "ping", "-c", "3", "-W", "2", attached["x2"])
        assert small.returncode == 0, small.stdout
        big = in_ns(x1, "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", attached["x2"])
        assert big.returncode != 0, "a full-size packet cannot pass: the fault is real"
        _, ep2 = wait_for(lab, ep_url("x2"), is_status("MTUVerified", "False"), 5, "x2")
        assert {(p["from"], p["to"]) for p in ep2["status"]["health"]["brokenPairs"]} == {
            ("host-1", "host-2"),
            ("host-2", "host-1"),
        }
    finally:
        sh(*nft, "delete", "table", "bridge", "vmtu")
    back, _ = wait_for(lab, NET_URL, is_status("MTUVerified", "True"), DEADLINE, "MTU back")
    print(f"MTUVerified=False after {took:.1f} s, True again after {back:.1f} s")


def test_trace_delivers_across_hosts_and_shows_the_isolation_drop(
    lab: Lab, attached: dict[str, str]
) -> None:
    same = kubectl_voile(lab, "trace", "default/x1", "default/x3")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "[source] node host-1" in same.stdout and "[destination] node host-3" in same.stdout
    assert "=> tunnel: to " + str(lab.host(3).address) in same.stdout
    assert same.stdout.rstrip().splitlines()[-1].startswith("verdict: delivered")
    # Two networks with the same CIDR: ta1 (host-1) and tb2 (host-2) in tenant-b, where tb2
    # has ta2's address (and so its MAC): tenant-a's packet goes to host-3 only, and host-2's
    # datapath drops what comes in tenant-a's VNI, by a rule the trace names.
    for name in ("ta", "tb"):
        network(lab, name, "198.19.51.0/24")
    lab.attach("host-1", "ta1", "ta", "198.19.51.10")
    lab.attach("host-3", "ta2", "ta", "198.19.51.11")
    lab.attach("host-2", "tb2", "tb", "198.19.51.11")
    # Remote hosts learn ta2 a moment after it is Ready: trace once host-1 tunnels to host-3.
    deadline = time.monotonic() + 30
    while True:
        other = kubectl_voile(lab, "trace", "default/ta1", "default/tb2")
        if "=> tunnel: to " + str(lab.host(3).address) in other.stdout:
            break
        assert time.monotonic() < deadline, other.stdout + other.stderr
        time.sleep(0.5)
    assert other.returncode == 1, other.stdout + other.stderr
    assert "[destination] node host-2" in other.stdout
    # The rule is the backend's own: an OpenFlow table on OVS, the program's drop reason on eBPF.
    rule = "dropped by table=" if lab.datapath == "ovs" else "dropped by drop unknown_vni"
    assert "=> dropped: " + rule in other.stdout
    assert "verdict: Dropped" in other.stdout and "never sends it to host-2" in other.stdout
    for name in ("ta1", "ta2", "tb2"):
        lab.detach(name)


def test_diagnose_gathers_objects_events_status_and_dumps(
    lab: Lab, attached: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "diag.tar.gz"
    # An Event of the test's own, so that the archive's events are known to hold something.
    marker = f"diagnose-{run_id()[:6]}"
    kubectl(lab, "create", "-f", "-", input=(
        "apiVersion: v1\nkind: Event\n"
        f"metadata: {{name: {marker}, namespace: default}}\n"
        "involvedObject: {kind: Endpoint, namespace: default, name: x1,"
        f" apiVersion: {c.API_VERSION}}}\n"
        f"reason: DiagnoseMarker\nmessage: {marker}\ntype: Normal\n"
    ))  # fmt: skip
    sockets = [a for i in (1, 2, 3) for a in ("--agent-socket", str(lab.host(i).attach_socket))]
    done = kubectl_voile(lab, "diagnose", "-o", str(out), *sockets)
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(out) as tar:
        files = {m.name.removeprefix("voile-diagnose/"): m for m in tar.getmembers()}

        def text(name: str) -> str:
            member = tar.extractfile(files[name])
            assert member is not None
            return member.read().decode()

        assert NET in text(f"objects/overlaynetworks.{c.GROUP}.json")
        assert c.ANNOTATION_PROBES in text("objects/leases.json")
        assert NET in text("status.txt") and "x1" in text("status.txt")
        assert marker in text("events.txt")
        for i in range(3):
            dump = text(f"agents/local-{i}/dump.json")
            assert "error" not in dump[:40], dump[:300]
            # The backend's own dump: OpenFlow tables on OVS, tc programs and maps on eBPF.
            assert ("table=" if lab.datapath == "ovs" else "from_vxlan") in dump, dump[:300]
