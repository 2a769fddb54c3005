"""The agent's parsing of API objects, its readiness decisions, namespace policy, port naming and
stale-port selection. Pure: plain dicts in, frozen values out."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from voile.api import conditions, naming
from voile.api import constants as c
from voile.api.model import Endpoint, TargetKind, parse_overlay_network
from voile_agent.datapath.ovs.model import (
    OWNER_KEY,
    OWNER_VALUE,
    BridgePort,
    PortKind,
    endpoint_ids,
    port_kind,
)
from voile_agent.planning import state
from voile_agent.planning.model import Attachment, Segment
from voile_agent.planning.plan import host_plan

NET = Segment(
    network="blue",
    vni=4242,
    mtu=1450,
    cidr=ipaddress.IPv4Network("198.19.0.0/24"),
    gateway=ipaddress.IPv4Address("198.19.0.1"),
)


# The operator's verdict on an Endpoint whose node's Lease stood still (planning.nodes).
LOST = {
    "conditions": [
        {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeLost",
            "message": "node host-2 lost",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
}


def raw_endpoint(
    *,
    name: str = "e1",
    uid: str = "uid-1",
    node: str = "host-1",
    status: dict[str, Any] | None = None,
    deleting: bool = False,
    target: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": uid,
        "generation": 1,
        "resourceVersion": "7",
    }
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {
            "network": "blue",
            "node": node,
            "target": target or {"netns": {"path": "/run/netns/x", "interface": "eth1"}},
        },
        "status": status or {},
    }


def endpoint(**kwargs: Any) -> Endpoint:
    ep = state.parse(raw_endpoint(**kwargs))
    assert ep is not None
    return ep


def attachment(**kwargs: Any) -> Attachment:
    att = state.attachment(endpoint(**kwargs), {})
    assert isinstance(att, Attachment), att
    return att


ALLOCATED = {
    "ip": "198.19.0.5",
    "mac": "0A:58:C6:13:00:05",
    "prefixLength": 24,
    "vni": 4242,
    "mtu": 1400,
    "conditions": [{"type": "Allocated", "status": "True"}],
}


def network(status: dict[str, Any] | None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "blue", "uid": "n1", "generation": 1},
        "spec": spec or {"cidr": "198.19.0.0/24", "gateway": "198.19.0.1"},
        "status": status or {},
    }


@pytest.mark.parametrize(
    ("status", "spec", "vni", "mtu"),
    [
        ({}, None, None, None),
        ({"vni": 7}, None, 7, 1450),
        ({"vni": 7, "mtu": 1400}, None, 7, 1400),
        ({"vni": 7}, {"cidr": "198.19.0.0/24", "mtu": 1300}, 7, 1300),
    ],
    ids=["unsettled", "default-mtu", "operator-mtu", "spec-mtu"],
)
def test_segment_needs_a_settled_vni(
    status: dict[str, Any], spec: dict[str, Any] | None, vni: int | None, mtu: int | None
) -> None:
    info = state.segment(parse_overlay_network(network(status, spec)))
    if vni is None:
        assert info is None
    else:
        assert info is not None and (info.vni, info.mtu) == (vni, mtu)


def test_allocated_local_endpoint_is_parsed_with_lowercase_mac() -> None:
    ep = attachment(status=ALLOCATED)
    assert ep.mac == "0a:58:c6:13:00:05" and ep.ip == ipaddress.IPv4Address("198.19.0.5")
    assert (ep.vni, ep.mtu, ep.prefix_length) == (4242, 1400, 24)
    assert ep.kind == TargetKind.NETNS and ep.interface == "eth1" and ep.gateway is None
    assert ep.key == "default/e1"
    assert ep.port == naming.port_name("uid-1") and ep.peer == naming.peer_name("uid-1")


def test_network_fills_vni_mtu_and_gateway_when_the_endpoint_status_lacks_them() -> None:
    status = {k: v for k, v in ALLOCATED.items() if k not in ("vni", "mtu")}
    ep = state.attachment(endpoint(status=status), {"blue": NET})
    assert isinstance(ep, Attachment)
    assert (ep.vni, ep.mtu, ep.gateway) == (4242, 1450, NET.gateway)


@pytest.mark.parametrize(
    ("status", "missing"),
    [
        ({}, "ip"),
        ({**ALLOCATED, "mac": None}, "mac"),
        ({**ALLOCATED, "prefixLength": None}, "prefixLength"),
        ({**ALLOCATED, "vni": None}, "vni"),
        ({**ALLOCATED, "conditions": [{"type": "Allocated", "status": "False"}]}, "address"),
    ],
)
def test_unallocated_endpoints_wait_with_a_reason(status: dict[str, Any], missing: str) -> None:
    result = state.attachment(endpoint(status=status), {})
    assert isinstance(result, state.Waiting)
    assert result.reason == c.Reason.WAITING_FOR_ALLOCATION.value
    assert missing in result.message


def test_an_endpoint_that_breaks_the_schema_is_not_parsed() -> None:
    obj = raw_endpoint(status=ALLOCATED)
    obj["spec"]["target"] = {"netns": {"path": "relative"}}
    assert state.parse(obj) is None


@pytest.mark.parametrize(
    ("obj", "usable"),
    [
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "198.18.0.2"}), True),
        (endpoint(node="host-2", status=ALLOCATED), False),  # no VTEP yet
        (endpoint(node="host-1", status={**ALLOCATED, "vtep": "198.18.0.1"}), False),  # ours
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "198.18.0.2"}, deleting=True), False),
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "garbage"}), False),
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "198.18.0.2", **LOST}), False),
    ],
    ids=["ready", "no-vtep", "local", "deleting", "bad-vtep", "node-lost"],
)
def test_remote_endpoints_need_ip_mac_vtep_and_life(obj: Endpoint, usable: bool) -> None:
    r = state.remote_endpoint(obj, {}, node="host-1")
    assert (r is not None) == usable
    if r is not None:
        assert r.vtep == ipaddress.IPv4Address("198.18.0.2") and r.mac == "0a:58:c6:13:00:05"


def announced(vtep: str, status: dict[str, Any]) -> Endpoint:
    """A remote Endpoint whose agent announced VTEP with its finalizer."""
    obj = raw_endpoint(node="host-2", status=status)
    obj["metadata"]["annotations"] = {c.ANNOTATION_VTEP: vtep}
    ep = state.parse(obj)
    assert ep is not None
    return ep


def test_the_vtep_announced_with_the_finalizer_is_enough_to_forward() -> None:
    r = state.remote_endpoint(announced("198.18.0.2", ALLOCATED), {}, node="host-1")
    assert r is not None and r.vtep == ipaddress.IPv4Address("198.18.0.2")
    assert state.forwarding(announced("198.18.0.2", ALLOCATED)) is not None
    assert state.remote_endpoint(announced("garbage", ALLOCATED), {}, node="host-1") is None


def test_the_reported_vtep_wins_over_the_announced_one() -> None:
    ep = announced("198.18.0.9", {**ALLOCATED, "vtep": "198.18.0.2"})
    r = state.remote_endpoint(ep, {}, node="host-1")
    assert r is not None and r.vtep == ipaddress.IPv4Address("198.18.0.2")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/run/netns/pod1", True),
        ("/var/run/netns/pod1", True),
        ("/run/netns/a/b", True),
        ("/run/netns", False),
        ("/run/netns/../../proc/1/ns/net", False),
        ("/proc/1/ns/net", False),
        ("/run/netnsX/pod", False),
        ("/tmp/ns", False),
    ],
)
def test_namespace_paths_must_lie_inside_allowed_directories(path: str, allowed: bool) -> None:
    assert state.netns_allowed(path, ["/run/netns", "/var/run/netns/"]) is allowed


def test_port_names_are_deterministic_short_and_distinct() -> None:
    names = {naming.port_name(f"uid-{i}") for i in range(2000)}
    assert len(names) == 2000
    for name in names:
        assert len(name) == 13 <= naming.IFNAMSIZ and name.startswith(naming.PORT_PREFIX)
        assert all(ch in "0123456789abcdef" for ch in name[2:])
    assert naming.port_name("x") == naming.port_name("x")
    assert len({naming.peer_name("x"), naming.port_name("x"), naming.handoff_name("x")}) == 3


def test_port_kinds_and_external_ids() -> None:
    ep = attachment(status=ALLOCATED)
    assert port_kind(ep) == PortKind.VETH and ep.port == naming.port_name("uid-1")
    ids = endpoint_ids(ep)
    assert ids[OWNER_KEY] == OWNER_VALUE and ids["voile.dev/endpoint"] == "default/e1"
    assert ids["iface-id"] == "uid-1" and ids["attached-mac"] == ep.mac
    host = attachment(status=ALLOCATED, target={"host": {"interface": "vhost0"}})
    assert port_kind(host) == PortKind.INTERNAL
    assert host.port == "vhost0" and host.interface == "vhost0"
    parsed = endpoint(target={"host": {"interface": "vhost0"}})
    assert naming.interfaces(parsed)[0] == "vhost0"


def test_handoff_attachments_leave_a_named_end_for_the_runtime() -> None:
    derived = attachment(status=ALLOCATED, target={"handoff": {}})
    assert derived.kind == TargetKind.HANDOFF and port_kind(derived) == PortKind.VETH
    assert derived.interface == naming.handoff_name("uid-1") != derived.port
    assert len(derived.interface) <= naming.IFNAMSIZ
    named = attachment(status=ALLOCATED, target={"handoff": {"interface": "dk0"}})
    assert named.interface == "dk0" and named.netns_path is None


def test_stale_ports_are_those_nobody_wants() -> None:
    ep = attachment(status=ALLOCATED)
    present = [
        (ep.port, "uid-1"),  # wanted
        ("vo00000000000", "gone"),  # stale
        (ep.port + "x", "uid-1"),  # right uid, wrong name: stale
        (ep.port, "uid-old"),  # right name, another incarnation: stale
    ]
    assert state.stale_ports(present, [ep]) == sorted(["vo00000000000", ep.port + "x", ep.port])
    assert state.stale_ports(present[:1], [ep]) == []


def test_ovs_bridge_ports_know_their_owner_and_role() -> None:
    ids = {"voile.dev/role": "endpoint", OWNER_KEY: OWNER_VALUE, "voile.dev/endpoint-uid": "u"}
    mine = BridgePort(name="vo1", ofport=5, external_ids=tuple(sorted(ids.items())))
    assert mine.owned and mine.role == "endpoint" and mine.endpoint_uid == "u"
    foreign = BridgePort(name="eth9", ofport=6)
    assert not foreign.owned and foreign.role is None and foreign.endpoint_uid is None


def test_ready_condition_keeps_transition_time_while_status_holds() -> None:
    cond = state.ready(c.Reason.READY.value, "plumbed", 3)
    assert cond.status == c.ConditionStatus.TRUE
    held = conditions.parse_condition(
        {"type": "Ready", "status": "True", "lastTransitionTime": "T1"}
    )
    same = cond.to_api(now="T2", previous=held)
    assert same["lastTransitionTime"] == "T1" and same["observedGeneration"] == 3
    flipped = cond.to_api(now="T2", previous=state.ready(c.Reason.PENDING.value, "x", 3))
    assert flipped["lastTransitionTime"] == "T2"
    bad = state.ready(c.Reason.NAMESPACE_NOT_FOUND.value, "gone")
    assert bad.status == c.ConditionStatus.FALSE and bad.reason == "NamespaceNotFound"


def test_status_is_current_only_when_vtep_and_condition_match() -> None:
    cond = state.ready(c.Reason.READY.value, "plumbed", 1)
    status = {
        "vtep": "198.18.0.1",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "plumbed",
                "observedGeneration": 1,
            }
        ],
    }
    ep = endpoint(status=status)
    assert state.status_is_current(ep, vtep="198.18.0.1", cond=cond)
    assert not state.status_is_current(ep, vtep="198.18.0.2", cond=cond)
    assert not state.status_is_current(
        ep, vtep="198.18.0.1", cond=state.ready("PlumbingFailed", "x", 1)
    )
    assert not state.status_is_current(
        ep, vtep="198.18.0.1", cond=state.ready(c.Reason.READY.value, "plumbed", 2)
    )


def test_a_lost_node_leaves_the_flood_list_unless_another_of_its_endpoints_lives() -> None:
    """No unicast entry to an endpoint of a lost node, and its VTEP leaves the flood list."""
    seg = {"blue": NET}
    local = attachment(status=ALLOCATED)
    alive = endpoint(name="e2", uid="uid-2", node="host-2",
                     status={**ALLOCATED, "ip": "198.19.0.6", "mac": "0a:58:c6:13:00:06",
                             "vtep": "198.18.0.2"})  # fmt: skip
    lost = endpoint(name="e3", uid="uid-3", node="host-3",
                    status={**ALLOCATED, "ip": "198.19.0.7", "mac": "0a:58:c6:13:00:07",
                            "vtep": "198.18.0.3", **LOST})  # fmt: skip
    assert state.node_lost(lost) and not state.node_lost(alive)
    remotes = [r for ep in (alive, lost) if (r := state.remote_endpoint(ep, seg, node="host-1"))]
    plan = host_plan(vtep=ipaddress.IPv4Address("198.18.0.1"), segments=seg, local=[local],
                     remote=remotes)  # fmt: skip
    (segment,) = plan.segments
    assert [r.uid for r in segment.remote] == ["uid-2"]
    assert segment.flood == (ipaddress.IPv4Address("198.18.0.2"),)
