"""The OVS backend's pieces and the host's netlink plumbing against real OVS and the real
kernel, one verb at a time: each verb is idempotent (second call: no change) and never adopts or
deletes what is not Voile's.

Real: one simulated host with its own ovsdb-server and ovs-vswitchd (netdev), namespaces, veths.
The test thread enters the host's namespace (setns is per thread) so that the netlink appliers act
there, exactly as the agent does when it runs inside the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voile.api import naming
from voile.api.model import TargetKind
from voile.errors import DatapathError, PlumbingError
from voile.lab.host import Fabric, SimulatedHost, inside_netns, run_id
from voile_agent.datapath.ovs import flows as flowplan
from voile_agent.datapath.ovs import underlay
from voile_agent.datapath.ovs.appctl import AppCtl
from voile_agent.datapath.ovs.backend import OvsDatapath, OvsSettings
from voile_agent.datapath.ovs.model import OWNER_KEY, DatapathType, PortRole
from voile_agent.datapath.ovs.neighbours import unresolved_next_hops
from voile_agent.datapath.ovs.openflow import OpenFlow
from voile_agent.datapath.ovs.ovsdb import Ovs
from voile_agent.host import netlink
from voile_agent.host.netlink import NextHop
from voile_agent.planning.model import Attachment
from voile_agent.planning.plan import host_plan


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SimulatedHost]:
    fabric = Fabric(tmp_path / "fabric", run_id())
    try:
        yield fabric.host(1).start()
    finally:
        fabric.stop()


def endpoint_port(
    netns: str,
    uid: str = "uid-appliers-1",
    ip: str = "198.19.40.2",
    kind: TargetKind = TargetKind.NETNS,
    interface: str = "eth0",
) -> Attachment:
    return Attachment(
        uid=uid,
        namespace="default",
        name="e",
        network="n",
        vni=40,
        mtu=1400,
        ip=ipaddress.IPv4Address(ip),
        mac="0a:58:c6:13:28:02",
        prefix_length=24,
        gateway=ipaddress.IPv4Address("198.19.40.1"),
        kind=kind,
        interface=interface,
        port=naming.port_name(uid),
        peer=naming.peer_name(uid),
        netns_path=netns if kind == TargetKind.NETNS else None,
    )


def settings(host: SimulatedHost) -> OvsSettings:
    return OvsSettings(
        datapath_type=DatapathType.NETDEV,
        ovsdb=host.ovsdb,
        ovs_rundir=str(host.directory),
        underlay_interface="eth0",
        vtep_interface="eth0",
    )


def ensure_underlay(ovs: Ovs) -> None:
    underlay.ensure_underlay(
        ovs, interface="eth0", bridge="br-underlay", datapath_type=DatapathType.NETDEV
    )


def test_bridge_and_tunnel_port_converge_once(host: SimulatedHost) -> None:
    ovs = Ovs(host.ovsdb)
    assert ovs.ensure_bridge(
        "br-voile", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True
    )
    assert not ovs.ensure_bridge(
        "br-voile", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True
    )
    assert host.vsctl("get", "bridge", "br-voile", "fail_mode").strip() == "secure"
    assert '"voile.dev/owner"=voile' in host.vsctl("get", "bridge", "br-voile", "external_ids")
    assert ovs.ensure_tunnel_port("br-voile", "vxlan-voile", local_ip="198.18.0.1", dst_port=4789)
    assert not ovs.ensure_tunnel_port(
        "br-voile", "vxlan-voile", local_ip="198.18.0.1", dst_port=4789
    )
    # A changed option is converged in place.
    assert ovs.ensure_tunnel_port("br-voile", "vxlan-voile", local_ip="198.18.0.1", dst_port=4790)
    options = host.vsctl("get", "interface", "vxlan-voile", "options")
    assert 'dst_port="4790"' in options and "remote_ip=flow" in options and "key=flow" in options


def test_foreign_bridges_and_ports_are_refused_and_kept(host: SimulatedHost) -> None:
    ovs = Ovs(host.ovsdb)
    host.vsctl("add-br", "br-voile", "--", "set", "bridge", "br-voile", "datapath_type=netdev")
    with pytest.raises(DatapathError, match="not Voile's"):
        ovs.ensure_bridge("br-voile", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True)
    assert not ovs.delete_bridge("br-voile")
    assert "br-voile" in host.vsctl("list-br").split()

    assert ovs.ensure_bridge("br-mine", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True)
    host.vsctl(
        "add-port", "br-mine", "foreign0", "--", "set", "interface", "foreign0", "type=internal"
    )
    assert not ovs.delete_port("foreign0")
    assert "foreign0" in host.vsctl("list-ports", "br-mine").split()
    assert ovs.delete_bridge("br-mine")
    assert not ovs.delete_bridge("br-mine")


def test_veth_plumbing_converges_and_unplumbs_once(host: SimulatedHost) -> None:
    ovs = Ovs(host.ovsdb)
    ovs.ensure_bridge("br-voile", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True)
    netns = host.endpoint_namespace("ap")
    port = endpoint_port(netns)
    with inside_netns(host.netns_path):
        netlink.plumb_veth(port, netns, tx_off=True)
        netlink.plumb_veth(port, netns, tx_off=True)  # converges, does not recreate
        assert netlink.link_exists(port.port)
        assert netlink.agent_links() == {port.port: netlink.alias_for(port.uid)}
        assert ovs.ensure_endpoint_port("br-voile", port)
        assert not ovs.ensure_endpoint_port("br-voile", port)
    inner = host.exec("ip", "netns", "exec", Path(netns).name, "ip", "-d", "addr", "show", "eth0")
    assert "0a:58:c6:13:28:02" in inner.stdout and "mtu 1400" in inner.stdout
    assert "198.19.40.2/24" in inner.stdout
    assert netlink.alias_for(port.uid) in inner.stdout
    routes = host.exec("ip", "netns", "exec", Path(netns).name, "ip", "route").stdout
    assert "default via 198.19.40.1" in routes
    ids = host.vsctl("get", "interface", port.port, "external_ids")
    assert "iface-id" in ids and OWNER_KEY in ids and "attached-mac" in ids

    # A foreign interface with the requested name is refused, not taken over.
    other_ns = host.endpoint_namespace("ap2")
    host.exec(
        "ip",
        "netns",
        "exec",
        Path(other_ns).name,
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0p",
    )
    with inside_netns(host.netns_path), pytest.raises(PlumbingError) as refused:
        netlink.plumb_veth(endpoint_port(other_ns, uid="uid-appliers-2"), other_ns, tx_off=False)
    assert refused.value.reason == "PlumbingFailed"

    with inside_netns(host.netns_path):
        assert ovs.delete_port(port.port)
        assert not ovs.delete_port(port.port)
        assert netlink.unplumb(port.port)
        assert not netlink.unplumb(port.port)
        assert not netlink.link_exists(port.port)
    gone = host.exec(
        "ip", "netns", "exec", Path(netns).name, "ip", "link", "show", "eth0", check=False
    )
    assert gone.returncode != 0


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/proc/1/ns/net", "NamespaceNotAllowed"),
        ("/tmp", "NamespaceNotAllowed"),
        ("/run/netns/voile-surely-absent", "NamespaceNotFound"),
    ],
)
def test_namespace_policy(path: str, reason: str) -> None:
    with pytest.raises(PlumbingError) as err:
        netlink.check_netns(path, netlink.DEFAULT_ALLOWED_NETNS_DIRS)
    assert err.value.reason == reason


def test_underlay_move_is_idempotent_and_undone(host: SimulatedHost) -> None:
    ovs = Ovs(host.ovsdb)
    keys = ["rp_filter", "arp_ignore"]
    with inside_netns(host.netns_path):
        before = netlink.ipv4_conf("eth0", keys)
        assert before != {"rp_filter": "1", "arp_ignore": "8"}
        ensure_underlay(ovs)
        # The kernel drops its copy of what the NIC receives: OVS owns the NIC now.
        assert netlink.ipv4_conf("eth0", keys) == {"rp_filter": "1", "arp_ignore": "8"}
        ensure_underlay(ovs)
        vtep = underlay.vtep_address(
            vtep_ip=None, vtep_interface="eth0", underlay="eth0", bridge="br-underlay"
        )
    assert vtep == host.address
    assert f"{host.address}/24" in host.exec("ip", "-o", "addr", "show", "br-underlay").stdout
    assert str(host.address) not in host.exec("ip", "-o", "-4", "addr", "show", "eth0").stdout
    with inside_netns(host.netns_path):
        assert underlay.undo_underlay(ovs, "br-underlay")
        assert not underlay.undo_underlay(ovs, "br-underlay")
        assert netlink.ipv4_conf("eth0", keys) == before
    assert f"{host.address}/24" in host.exec("ip", "-o", "addr", "show", "eth0").stdout
    assert "br-underlay" not in host.vsctl("list-br")


def test_flow_diffs_apply_atomically_and_converge(host: SimulatedHost) -> None:
    ovs = Ovs(host.ovsdb)
    ovs.ensure_bridge("br-voile", DatapathType.NETDEV, role=PortRole.INTEGRATION, secure=True)
    host.ofctl("add-flow", "br-voile", "table=5,priority=1,actions=drop")  # foreign, cookie 0
    of = OpenFlow("br-voile", str(host.directory))
    port = endpoint_port("/run/netns/unused")
    plan = host_plan(vtep=host.address, segments={}, local=[port], remote=[])
    want = flowplan.plan_flows(plan, ofports={port.port: 7}, tunnel_ofport=1)

    async def scenario() -> None:
        await of.apply(flowplan.diff_flows(want, await of.cookies()))
        assert sorted(await of.cookies()) == sorted(f.cookie for f in want)
        assert flowplan.diff_flows(want, await of.cookies()).empty
        empty = host_plan(vtep=host.address, segments={}, local=[], remote=[])
        smaller = flowplan.plan_flows(empty, ofports={}, tunnel_ofport=1)
        await of.apply(flowplan.diff_flows(smaller, await of.cookies()))
        assert sorted(await of.cookies()) == sorted(f.cookie for f in smaller)
        # A bad line fails the whole bundle: nothing changes.
        bad = flowplan.Flow(table=0, priority=9, match="no_such_field=1", actions="drop")
        with pytest.raises(DatapathError):
            await of.apply(flowplan.FlowDiff(add=(*want, bad), delete=()))
        assert sorted(await of.cookies()) == sorted(f.cookie for f in smaller)
        await of.delete_all()
        assert await of.cookies() == []

    asyncio.run(scenario())
    assert "table=5" in host.ofctl("dump-flows", "br-voile")  # not ours: kept


def test_tunnel_next_hop_is_learned_even_when_the_kernel_already_knows_it(tmp_path: Path) -> None:
    """The netdev datapath drops a tunnelled packet whose next hop is not in its own neighbour
    cache. The agent's ARP request fills it, also when the kernel already has the peer (learned
    from the peer's own ARP request), where a kernel ping would send no ARP at all."""
    fabric = Fabric(tmp_path / "fabric", run_id())
    try:
        h1, h2 = fabric.host(1).start(), fabric.host(2).start()
        # Open vSwitch snoops tunnel next hops only once a bridge has a (native) tunnel port.
        with inside_netns(h1.netns_path):
            assert asyncio.run(OvsDatapath(settings(h1)).ensure_host()) == h1.address
        pinged = h2.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", str(h1.address))
        assert pinged.returncode == 0
        assert "DUP" not in pinged.stdout  # the kernel answers once, through the bridge only
        assert h2.underlay_mac in h1.exec("ip", "neigh", "show", str(h2.address)).stdout
        # As after the entry expired: no cache entry, and no datapath flow that would carry the
        # reply past the snooping slow path.
        h1.appctl("tnl/neigh/flush")
        h1.appctl("revalidator/purge")
        appctl = AppCtl(str(h1.directory))
        cache = asyncio.run(appctl.tunnel_neighbours())
        assert ("br-underlay", h2.address) not in cache

        with inside_netns(h1.netns_path):
            hops = netlink.next_hops([h2.address, h1.address, ipaddress.IPv4Address("198.19.9.9")])
        # Our own address and an address without a route have nothing to resolve.
        assert hops == [
            NextHop(
                vtep=h2.address,
                address=h2.address,
                interface="br-underlay",
                source=h1.address,
                mac=h1.underlay_mac,
            )
        ]
        assert unresolved_next_hops(hops, cache) == hops
        with inside_netns(h1.netns_path):
            netlink.send_arp_requests(hops)
        deadline = time.monotonic() + 5
        while ("br-underlay", h2.address) not in cache and time.monotonic() < deadline:
            time.sleep(0.05)
            cache = asyncio.run(appctl.tunnel_neighbours())
        assert cache.get(("br-underlay", h2.address)) == h2.underlay_mac
        assert unresolved_next_hops(hops, cache) == []
    finally:
        fabric.stop()


def test_handoff_leaves_the_container_end_for_the_runtime_and_keeps_it_once_moved(
    host: SimulatedHost,
) -> None:
    port = endpoint_port("", uid="uid-handoff-1", kind=TargetKind.HANDOFF, interface="vhtest0")
    runtime_ns = host.endpoint_namespace("rt")
    with inside_netns(host.netns_path):
        netlink.plumb_handoff(port, tx_off=True)
        netlink.plumb_handoff(port, tx_off=True)  # converges, does not recreate
        assert netlink.link_exists(port.port) and netlink.link_exists("vhtest0")
    inner = host.exec("ip", "-d", "link", "show", "vhtest0").stdout
    assert "0a:58:c6:13:28:02" in inner and "mtu 1400" in inner
    assert netlink.alias_for(port.uid) in inner
    assert "tx-checksumming: off" in host.exec("ethtool", "-k", "vhtest0").stdout
    # The runtime moves the container end away (as Docker does after Join) ...
    host.exec("ip", "link", "set", "vhtest0", "netns", Path(runtime_ns).name)
    with inside_netns(host.netns_path):
        netlink.plumb_handoff(port, tx_off=True)  # ... and the agent leaves the pair alone
        assert not netlink.link_exists("vhtest0") and netlink.link_exists(port.port)
    moved = host.exec("ip", "netns", "exec", Path(runtime_ns).name, "ip", "link", "show")
    assert "vhtest0" in moved.stdout
    with inside_netns(host.netns_path):
        assert netlink.unplumb(port.port)
        assert not netlink.unplumb(port.port)
    after = host.exec("ip", "netns", "exec", Path(runtime_ns).name, "ip", "link", "show")
    assert "vhtest0" not in after.stdout


def test_an_ovsdb_that_never_answered_is_an_error_not_an_empty_bridge(tmp_path: Path) -> None:
    dead = OvsDatapath(OvsSettings(ovsdb=f"unix:{tmp_path}/nobody.sock", vtep_ip="198.18.0.1"))
    with pytest.raises(DatapathError):
        asyncio.run(dead.observe())
