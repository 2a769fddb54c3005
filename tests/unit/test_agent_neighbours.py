"""Tunnel next hops of the netdev datapath: which to resolve, the cache as ovs-appctl prints it,
and the ARP request the agent sends. Pure."""

from __future__ import annotations

import ipaddress

import pytest

from voile_agent.datapath.ovs.appctl import parse_neigh_show
from voile_agent.datapath.ovs.neighbours import unresolved_next_hops
from voile_agent.host.netlink import NextHop, arp_request

IP = ipaddress.IPv4Address


def hop(vtep: str, via: str | None = None, interface: str = "br-underlay") -> NextHop:
    return NextHop(
        vtep=IP(vtep),
        address=IP(via or vtep),
        interface=interface,
        source=IP("198.18.0.1"),
        mac="02:76:6f:00:00:01",
    )


SHOW = """\
IP                                            MAC                 Bridge
==========================================================================
198.18.0.254                                  12:21:62:60:22:0d   br-underlay
198.18.0.2                                    02:76:6f:00:00:02   br-underlay
fe80::1                                       02:76:6f:00:00:09   br-underlay
198.18.0.3                                    02:76:6f:00:00:03   br-other     STATIC
"""


def test_parse_neigh_show_keeps_ipv4_rows_per_bridge() -> None:
    assert parse_neigh_show(SHOW) == {
        ("br-underlay", IP("198.18.0.254")): "12:21:62:60:22:0d",
        ("br-underlay", IP("198.18.0.2")): "02:76:6f:00:00:02",
        ("br-other", IP("198.18.0.3")): "02:76:6f:00:00:03",
    }
    assert parse_neigh_show("") == {}


@pytest.mark.parametrize(
    ("hops", "expected"),
    [
        # Cached on the right bridge: nothing to do.
        ([hop("198.18.0.2")], []),
        # Cached on another bridge only: still missing here.
        ([hop("198.18.0.3")], [hop("198.18.0.3")]),
        # Two VTEPs behind one gateway: one request for the gateway.
        (
            [hop("198.18.7.5", "198.18.0.9"), hop("198.18.7.4", "198.18.0.9")],
            [hop("198.18.7.4", "198.18.0.9")],
        ),
        # Behind a cached gateway: nothing to do.
        ([hop("198.18.7.5", "198.18.0.254")], []),
        # Stable order, whatever the input order.
        ([hop("198.18.0.9"), hop("198.18.0.5")], [hop("198.18.0.5"), hop("198.18.0.9")]),
    ],
)
def test_unresolved_next_hops(hops: list[NextHop], expected: list[NextHop]) -> None:
    assert unresolved_next_hops(hops, parse_neigh_show(SHOW)) == expected


def test_arp_request_is_a_broadcast_who_has_from_the_interface() -> None:
    frame = arp_request(hop("198.18.0.2"))
    assert len(frame) == 60
    assert frame[0:6] == b"\xff" * 6
    assert frame[6:12] == bytes.fromhex("02766f000001")
    assert frame[12:14] == b"\x08\x06"
    # htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
    assert frame[14:22] == bytes.fromhex("0001080006040001")
    assert frame[22:28] == bytes.fromhex("02766f000001")
    assert frame[28:32] == IP("198.18.0.1").packed
    assert frame[32:38] == b"\0" * 6
    assert frame[38:42] == IP("198.18.0.2").packed
    assert frame[42:] == b"\0" * 18
