"""The eBPF backend's pure parts: the plan rendered into map entries, the diff that writes only
differences and names repairs, and the trace replayed on the decoded maps."""

from __future__ import annotations

import ipaddress

from voile.api.model import TargetKind
from voile.api.trace import Result, Tunnel
from voile_agent.datapath.base import TraceQuery
from voile_agent.datapath.ebpf import maps
from voile_agent.datapath.ebpf import trace as tracing
from voile_agent.datapath.ebpf.maps import MapName
from voile_agent.planning.model import Attachment, RemoteEndpoint
from voile_agent.planning.plan import host_plan

IP = ipaddress.IPv4Address
VTEP = IP("198.18.20.1")


def att(name: str, ip: str, mac: str, vni: int = 5001) -> Attachment:
    return Attachment(
        uid=f"uid-{name}", namespace="default", name=name, network=f"net{vni}", vni=vni,
        mtu=1450, ip=IP(ip), mac=mac, prefix_length=24, gateway=None, kind=TargetKind.NETNS,
        interface="eth0", port=f"vo{name}", peer=f"vi{name}", netns_path="/run/netns/x",
    )  # fmt: skip


A = att("a", "198.19.20.2", "0a:58:c6:13:14:02")
B = att("b", "198.19.20.3", "0a:58:c6:13:14:03")
G = att("g", "198.19.20.2", "0a:58:c6:13:14:02", vni=5002)  # same IP and MAC, other VNI
R = RemoteEndpoint(
    uid="uid-r", network="net5001", vni=5001, ip=IP("198.19.20.9"), mac="0a:58:c6:13:14:09",
    vtep=IP("198.18.20.2"),
)  # fmt: skip
IFINDEX = {"voa": 11, "vob": 12, "vog": 13}


def plan(*remote: RemoteEndpoint, complete: bool = True):  # type: ignore[no-untyped-def]
    return host_plan(vtep=VTEP, segments={}, local=[A, B, G], remote=remote, complete=complete)


def rendered(*remote: RemoteEndpoint) -> maps.Desired:
    return maps.desired(
        plan(*remote), IFINDEX, vxlan_ifindex=3, probe_ifindex=4, build=7,
        peer_ports=frozenset({"voa", "vob", "vog"}),
    )  # fmt: skip


def tables(want: maps.Desired) -> maps.Tables:
    return maps.Tables.decode(want.forwarding)


def test_plan_renders_ports_fdb_arp_and_flood_per_vni() -> None:
    t = tables(rendered(R))
    assert t.vxlan_ifindex == 3 and t.probe_ifindex == 4 and t.vtep == VTEP
    assert t.ports[11] == maps.PortEntry(vni=5001, ip=A.ip, mac=A.mac)
    assert t.ports[13].vni == 5002
    assert t.fdb[(5001, B.mac)] == maps.FdbEntry(ifindex=12, vtep=None, peer=True)
    assert t.fdb[(5001, R.mac)] == maps.FdbEntry(ifindex=0, vtep=R.vtep, peer=False)
    assert (5002, R.mac) not in t.fdb  # the remote is in 5001 only
    assert t.arp[(5001, R.ip)] == R.mac
    assert t.flood[5001] == maps.FloodEntry(ports=(11, 12), vteps=(R.vtep,))
    assert t.flood[5002] == maps.FloodEntry(ports=(13,), vteps=())


def test_diff_writes_only_differences_and_tells_repairs_from_plan_changes() -> None:
    before = rendered().forwarding[MapName.FDB]
    after = rendered(R).forwarding[MapName.FDB]
    same = maps.diff(after, after, complete=True, written=after)
    assert not same.write and not same.delete
    grown = maps.diff(after, before, complete=True, written=before)
    assert list(grown.write) == [maps.fdb_key(5001, R.mac)] and grown.repaired == 0
    shrunk = maps.diff(before, after, complete=False, written=after)
    assert shrunk.delete == ()  # a partial plan removes nothing
    assert maps.diff(before, after, complete=True).delete == (maps.fdb_key(5001, R.mac),)
    # An entry changed by hand: written back, counted as a repair.
    key = maps.fdb_key(5001, B.mac)
    tampered = {**after, key: b"\0" * 12}
    fixed = maps.diff(after, tampered, complete=True, written=after)
    assert fixed.write == {key: after[key]} and fixed.repaired == 1


def q(**kw: object) -> TraceQuery:
    base: dict[str, object] = dict(
        protocol="icmp", src_mac=A.mac, src_ip=A.ip, dst_mac=B.mac, dst_ip=B.ip, from_port="voa"
    )
    base.update(kw)
    return TraceQuery(**base)  # type: ignore[arg-type]


def test_trace_ends_delivered_tunnel_answered_or_with_the_drop_reason() -> None:
    t = tables(rendered(R))
    local = tracing.walk(q(to_port="vob"), t, ifindexes=IFINDEX)
    assert local.result == Result.DELIVERED and "bpf_redirect_peer" in (local.rule or "")
    remote = tracing.walk(q(dst_mac=R.mac, dst_ip=R.ip), t, ifindexes=IFINDEX)
    assert remote.result == Result.TUNNEL and remote.tunnels == (Tunnel(vtep=R.vtep, vni=5001),)
    arp = tracing.walk(q(protocol="arp", dst_mac="ff:ff:ff:ff:ff:ff"), t, ifindexes=IFINDEX)
    assert arp.result == Result.ANSWERED
    spoofed = tracing.walk(q(src_ip=IP("198.19.20.77")), t, ifindexes=IFINDEX)
    assert spoofed.result == Result.DROPPED and spoofed.rule == "drop spoofed_ip"
    mac = tracing.walk(q(src_mac="0a:00:00:00:00:01"), t, ifindexes=IFINDEX)
    assert mac.rule == "drop spoofed_mac"
    # From the tunnel: only endpoints of that VNI; an unknown VNI is dropped by name.
    inbound = q(from_port=None, from_tunnel=Tunnel(vtep=R.vtep, vni=5001), src_mac=R.mac,
                src_ip=R.ip, to_port="voa", dst_mac=A.mac, dst_ip=A.ip)  # fmt: skip
    assert tracing.walk(inbound, t, ifindexes=IFINDEX).result == Result.DELIVERED
    other = q(from_port=None, from_tunnel=Tunnel(vtep=R.vtep, vni=5009), to_port="voa")
    assert tracing.walk(other, t, ifindexes=IFINDEX).rule == "drop unknown_vni"
    isolated = q(from_port=None, from_tunnel=Tunnel(vtep=R.vtep, vni=5002), dst_mac=B.mac,
                 to_port="vob")  # fmt: skip
    assert tracing.walk(isolated, t, ifindexes=IFINDEX).result == Result.DROPPED
