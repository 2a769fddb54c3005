"""The OVS backend's rendering of the neutral plan into OpenFlow, pure: isolation,
anti-spoofing, ARP answers, head-end replication, split horizon, and cookie-based diffs. Each test
builds the plan with the real planner (planning.plan.host_plan) and renders it; no OVS here:
tests/functional runs the same flows on OVS."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest

from voile.api.model import TargetKind
from voile_agent.datapath.ovs.flows import (
    COOKIE_PREFIX,
    TABLE_ARP,
    TABLE_CLASSIFY,
    TABLE_L2,
    Flow,
    diff_flows,
    flow_cookie,
    is_voile_cookie,
)
from voile_agent.datapath.ovs.flows import plan_flows as render
from voile_agent.planning.model import Attachment, RemoteEndpoint
from voile_agent.planning.plan import host_plan

TUN = 1
SELF = ipaddress.IPv4Address("198.18.0.1")


@dataclasses.dataclass(frozen=True)
class PlumbedEndpoint:
    endpoint: Attachment
    ofport: int


def plan_flows(
    *,
    tunnel_ofport: int | None,
    local: Sequence[PlumbedEndpoint],
    remote: Sequence[RemoteEndpoint],
) -> list[Flow]:
    plan = host_plan(vtep=SELF, segments={}, local=[p.endpoint for p in local], remote=remote)
    ofports = {p.endpoint.port: p.ofport for p in local}
    return render(plan, ofports=ofports, tunnel_ofport=tunnel_ofport)


def local(uid: str, ip: str, mac: str, vni: int, ofport: int, net: str = "a") -> PlumbedEndpoint:
    ep = Attachment(
        uid=uid,
        namespace="default",
        name=uid,
        network=net,
        vni=vni,
        mtu=1450,
        ip=ipaddress.IPv4Address(ip),
        mac=mac,
        prefix_length=24,
        gateway=None,
        kind=TargetKind.NETNS,
        interface="eth0",
        port=f"vo-{uid}",
        peer=f"vi-{uid}",
        netns_path="/run/netns/x",
    )
    return PlumbedEndpoint(endpoint=ep, ofport=ofport)


def remote(uid: str, ip: str, mac: str, vni: int, vtep: str, net: str = "a") -> RemoteEndpoint:
    return RemoteEndpoint(
        uid=uid,
        network=net,
        vni=vni,
        ip=ipaddress.IPv4Address(ip),
        mac=mac,
        vtep=ipaddress.IPv4Address(vtep),
    )


# Two networks with the same CIDR on one host, each with a remote endpoint elsewhere.
A1 = local("a1", "198.19.1.2", "0a:58:c6:13:01:02", 100, 2, "a")
B1 = local("b1", "198.19.1.2", "0a:58:c6:13:01:12", 200, 3, "b")
A2 = remote("a2", "198.19.1.3", "0a:58:c6:13:01:03", 100, "198.18.0.2", "a")
B2 = remote("b2", "198.19.1.3", "0a:58:c6:13:01:13", 200, "198.18.0.3", "b")


def plan() -> list[Flow]:
    return plan_flows(tunnel_ofport=TUN, local=[A1, B1], remote=[A2, B2])


def find(flows: list[Flow], table: int, *parts: str) -> list[Flow]:
    return [f for f in flows if f.table == table and all(p in f.text for p in parts)]


def test_every_flow_carries_a_voile_cookie_derived_from_its_text() -> None:
    flows = plan()
    assert flows == sorted(flows)
    assert len({f.cookie for f in flows}) == len(flows)
    for f in flows:
        assert f.cookie >> 48 == COOKIE_PREFIX
        assert f.cookie == flow_cookie(f.text)
        assert is_voile_cookie(f.cookie)


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    assert plan() == plan_flows(tunnel_ofport=TUN, local=[B1, A1], remote=[B2, A2])


@pytest.mark.parametrize(("ep", "vni"), [(A1, 100), (B1, 200)], ids=["network-a", "network-b"])
def test_endpoint_may_send_only_with_its_own_mac_and_ip(ep: PlumbedEndpoint, vni: int) -> None:
    flows = plan()
    mine = [f for f in flows if f.table == TABLE_CLASSIFY and f"in_port={ep.ofport}," in f.text]
    assert len(mine) == 2
    e = ep.endpoint
    assert all(f"dl_src={e.mac}" in f.match for f in mine)
    ipv4 = find(mine, TABLE_CLASSIFY, ",ip,", f"nw_src={e.ip}")
    arp = find(mine, TABLE_CLASSIFY, "arp", f"arp_sha={e.mac}", f"arp_spa={e.ip}")
    assert len(ipv4) == 1 and len(arp) == 1
    assert f"set_field:{vni}->reg0" in ipv4[0].actions
    assert ipv4[0].actions.endswith(f"goto_table:{TABLE_L2}")
    assert arp[0].actions.endswith(f"goto_table:{TABLE_ARP}")
    # Anything else from the port hits the table-miss drop.
    assert find(flows, TABLE_CLASSIFY, "priority=0,actions=drop")


def test_tunnel_traffic_enters_only_the_network_of_its_vni() -> None:
    flows = plan()
    for vni in (100, 200):
        (f,) = find(flows, TABLE_CLASSIFY, f"in_port={TUN},tun_id={vni}")
        assert f.actions == f"set_field:{vni}->reg0,goto_table:{TABLE_L2}"


def test_same_cidr_networks_never_share_a_forwarding_rule() -> None:
    """Every L2 and ARP rule is keyed by one network register and names only that network's
    ports, MACs and VNIs, although both networks use 198.19.1.0/24."""
    flows = plan()
    for f in flows:
        if f.table in (TABLE_ARP, TABLE_L2) and f.priority > 0:
            vni = 100 if "reg0=100" in f.match else 200
            assert f"reg0={vni}" in f.match
            other = 200 if vni == 100 else 100
            assert f"{other}->tun_id" not in f.actions
            others = (B1, B2) if vni == 100 else (A1, A2)
            for o in others:
                mac = o.endpoint.mac if isinstance(o, PlumbedEndpoint) else o.mac
                assert mac not in f.text
            if vni == 100:
                assert "output:3" not in f.actions.split(",")
            else:
                assert "output:2" not in f.actions.split(",")


def test_arp_for_every_known_ip_of_the_network_is_answered_in_place() -> None:
    flows = plan()
    (own,) = find(flows, TABLE_ARP, "reg0=100", "arp_tpa=198.19.1.2")
    (far,) = find(flows, TABLE_ARP, "reg0=100", "arp_tpa=198.19.1.3")
    assert "arp_op=1" in own.match
    assert f"set_field:{A2.mac}->eth_src" in far.actions
    assert f"set_field:{A2.mac}->arp_sha" in far.actions
    assert far.actions.endswith("IN_PORT")
    assert "set_field:2->arp_op" in far.actions
    (far_b,) = find(flows, TABLE_ARP, "reg0=200", "arp_tpa=198.19.1.3")
    assert B2.mac in far_b.actions and A2.mac not in far_b.actions
    # Unanswered ARP continues to L2 (flooded within the network).
    assert find(flows, TABLE_ARP, "priority=0", f"goto_table:{TABLE_L2}")


def test_unicast_goes_to_the_local_port_or_the_remote_vtep_with_the_vni() -> None:
    flows = plan()
    (to_local,) = find(flows, TABLE_L2, f"reg0=100,dl_dst={A1.endpoint.mac}")
    assert to_local.actions == "output:2"
    (to_remote,) = find(flows, TABLE_L2, f"reg0=100,dl_dst={A2.mac}")
    assert to_remote.actions == f"set_field:100->tun_id,set_field:198.18.0.2->tun_dst,output:{TUN}"


def test_flood_replicates_to_local_ports_and_only_the_vteps_of_the_network() -> None:
    extra = local("a3", "198.19.1.4", "0a:58:c6:13:01:04", 100, 4, "a")
    far = remote("a4", "198.19.1.5", "0a:58:c6:13:01:05", 100, "198.18.0.9", "a")
    same_vtep = remote("a5", "198.19.1.6", "0a:58:c6:13:01:06", 100, "198.18.0.2", "a")
    flows = plan_flows(tunnel_ofport=TUN, local=[A1, B1, extra], remote=[A2, B2, far, same_vtep])
    (flood,) = find(flows, TABLE_L2, "priority=10,reg0=100")
    acts = flood.actions
    assert "output:2" in acts and "output:4" in acts and "output:3" not in acts
    assert acts.count("198.18.0.2->tun_dst") == 1  # one copy per VTEP, not per endpoint
    assert "198.18.0.9->tun_dst" in acts
    assert "198.18.0.3" not in acts  # network b's VTEP
    # From the tunnel: local ports only, never back into the tunnel (split horizon).
    (from_tun,) = find(flows, TABLE_L2, f"reg0=100,in_port={TUN}")
    assert from_tun.priority > flood.priority
    assert "tun_dst" not in from_tun.actions
    assert from_tun.actions == "output:2,output:4"


def test_a_port_without_an_openflow_number_gets_no_flows() -> None:
    plan = host_plan(vtep=SELF, segments={}, local=[A1.endpoint, B1.endpoint], remote=[A2])
    flows = render(plan, ofports={A1.endpoint.port: 2}, tunnel_ofport=TUN)
    assert not [f for f in flows if "reg0=200" in f.text or B1.endpoint.mac in f.text]
    assert find(flows, TABLE_L2, f"dl_dst={A1.endpoint.mac}")


def test_remote_endpoints_of_networks_absent_here_are_ignored() -> None:
    stranger = remote("z", "198.19.9.9", "0a:58:c6:13:09:09", 999, "198.18.0.7", "z")
    flows = plan_flows(tunnel_ofport=TUN, local=[A1], remote=[A2, stranger])
    assert not [f for f in flows if "999" in f.text or "198.18.0.7" in f.text]


def test_no_tunnel_port_means_local_switching_only() -> None:
    flows = plan_flows(tunnel_ofport=None, local=[A1], remote=[A2])
    assert not [f for f in flows if "tun_" in f.text]
    assert find(flows, TABLE_L2, f"dl_dst={A1.endpoint.mac}")


def test_empty_host_keeps_only_the_default_drops() -> None:
    flows = plan_flows(tunnel_ofport=TUN, local=[], remote=[A2])
    assert [f.text for f in flows] == [
        "table=0,priority=0,actions=drop",
        "table=10,priority=0,actions=goto_table:20",
        "table=20,priority=0,actions=drop",
    ]


# -- diffs -------------------------------------------------------------------------------------


def test_diff_of_an_unchanged_plan_is_empty() -> None:
    flows = plan()
    diff = diff_flows(flows, [f.cookie for f in flows])
    assert diff.empty and diff.bundle_lines() == []


def test_diff_adds_missing_and_deletes_stale_by_exact_cookie() -> None:
    old = plan_flows(tunnel_ofport=TUN, local=[A1], remote=[A2])
    new = plan_flows(tunnel_ofport=TUN, local=[A1], remote=[])
    diff = diff_flows(new, [f.cookie for f in old])
    removed = {f.cookie for f in old} - {f.cookie for f in new}
    assert set(diff.delete) == removed and removed
    # Only the flood rule changes (it no longer replicates to the remote VTEP).
    assert [(f.table, f.priority) for f in diff.add] == [(TABLE_L2, 10)]
    assert "tun_dst" not in diff.add[0].actions
    lines = diff.bundle_lines()
    deletes = [line for line in lines if line.startswith("delete")]
    assert len(deletes) == len(removed)
    assert all(line.startswith("delete cookie=0x5601") and line.endswith("/-1") for line in deletes)


def test_diff_never_deletes_flows_that_are_not_voiles() -> None:
    foreign = [0, 0x1234, 0x5602 << 48 | 5]
    diff = diff_flows([], foreign)
    assert diff.delete == ()


def test_bundle_lines_put_deletes_before_adds_and_carry_cookies() -> None:
    flows = plan()
    stale = flow_cookie("table=0,priority=5,actions=drop")
    diff = diff_flows(flows[:2], [stale])
    lines = diff.bundle_lines()
    assert lines[0] == f"delete cookie={stale:#x}/-1"
    assert lines[1] == f"add cookie={flows[0].cookie:#x},{flows[0].text}"
    assert len(lines) == 3


def test_changed_port_number_changes_exactly_the_flows_that_name_it() -> None:
    before = plan_flows(tunnel_ofport=TUN, local=[A1, B1], remote=[A2])
    moved = local("b1", "198.19.1.2", "0a:58:c6:13:01:12", 200, 9, "b")
    after = plan_flows(tunnel_ofport=TUN, local=[A1, moved], remote=[A2])
    diff = diff_flows(after, [f.cookie for f in before])
    assert diff.add and all("9" in f.text for f in diff.add)
    kept = {f.cookie for f in after}
    for f in before:
        names_port_3 = "in_port=3," in f.text or "output:3" in f.actions.split(",")
        assert (f.cookie in kept) != names_port_3, f.text


def test_flows_changed_in_place_are_replaced_atomically() -> None:
    from voile_agent.datapath.ovs.flows import FlowDiff, with_repairs
    from voile_agent.datapath.ovs.openflow import diff_cookies

    a = Flow(table=0, priority=100, match="in_port=1", actions="drop")
    b = Flow(table=20, priority=10, match="reg0=0x1,dl_dst=0a:58:c6:12:01:01", actions="output:1")
    c = Flow(table=20, priority=10, match="reg0=0x1,dl_dst=0a:58:c6:12:01:02", actions="output:2")
    out = (
        "+priority=5 cookie=0x99 actions=drop\n"
        f"-table=20 priority=10,reg0=0x1,dl_dst=0a:58:c6:12:01:01 cookie={b.cookie:#x} "
        "actions=output:1\n"
        f"+table=20 priority=10,reg0=0x1,dl_dst=0a:58:c6:12:01:01 cookie={b.cookie:#x} "
        "actions=output:2\n"
        f"-table=20 priority=10,reg0=0x1,dl_dst=0a:58:c6:12:01:02 cookie={c.cookie:#x} "
        "actions=output:2\n"
    )
    drifted = diff_cookies(out)
    assert drifted == {0x99, b.cookie, c.cookie}
    # c is missing (added by the cookie diff), b changed in place (deleted and added again),
    # 0x99 is not a desired flow (not ours to touch here).
    diff = diff_flows([a, b, c], observed_cookies=[a.cookie, b.cookie])
    assert diff == FlowDiff(add=(c,), delete=())
    repaired = with_repairs(diff, [a, b, c], drifted)
    assert repaired == FlowDiff(add=(c, b), delete=(b.cookie,))
    lines = repaired.bundle_lines()
    assert lines[0] == f"delete cookie={b.cookie:#x}/-1"
    assert lines[1:] == [f"add cookie={c.cookie:#x},{c.text}", f"add cookie={b.cookie:#x},{b.text}"]
    # Nothing drifted: the diff is unchanged.
    assert with_repairs(diff, [a, b, c], set()) == diff
