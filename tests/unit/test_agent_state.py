"""The agent's parsing of API objects, its readiness decisions, namespace policy, port naming and
stale-port selection. Pure: plain dicts in, frozen values out."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from voile.api import constants as c
from voile.api.model import TargetKind
from voile_agent.planning import naming, state
from voile_agent.planning.model import (
    OWNER_KEY,
    OWNER_VALUE,
    NetworkInfo,
    ObservedPort,
    PortKind,
)

NET = NetworkInfo(
    name="blue",
    vni=4242,
    mtu=1450,
    cidr=ipaddress.IPv4Network("198.19.0.0/24"),
    gateway=ipaddress.IPv4Address("198.19.0.1"),
)


def endpoint(
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
def test_network_info_needs_a_settled_vni(
    status: dict[str, Any], spec: dict[str, Any] | None, vni: int | None, mtu: int | None
) -> None:
    info = state.network_info(network(status, spec))
    if vni is None:
        assert info is None
    else:
        assert info is not None and (info.vni, info.mtu) == (vni, mtu)


def test_allocated_local_endpoint_is_parsed_with_lowercase_mac() -> None:
    ep = state.local_endpoint(endpoint(status=ALLOCATED), {})
    assert not isinstance(ep, state.Waiting)
    assert ep.mac == "0a:58:c6:13:00:05" and ep.ip == ipaddress.IPv4Address("198.19.0.5")
    assert (ep.vni, ep.mtu, ep.prefix_length) == (4242, 1400, 24)
    assert ep.kind == TargetKind.NETNS and ep.interface == "eth1" and ep.gateway is None
    assert ep.key == "default/e1"


def test_network_fills_vni_mtu_and_gateway_when_the_endpoint_status_lacks_them() -> None:
    status = {k: v for k, v in ALLOCATED.items() if k not in ("vni", "mtu")}
    ep = state.local_endpoint(endpoint(status=status), {"blue": NET})
    assert not isinstance(ep, state.Waiting)
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
    result = state.local_endpoint(endpoint(status=status), {})
    assert isinstance(result, state.Waiting)
    assert result.reason == c.Reason.WAITING_FOR_ALLOCATION.value
    assert missing in result.message


def test_invalid_spec_waits_as_invalid() -> None:
    obj = endpoint(status=ALLOCATED)
    obj["spec"]["target"] = {"netns": {"path": "relative"}}
    result = state.local_endpoint(obj, {})
    assert isinstance(result, state.Waiting) and result.reason == c.Reason.INVALID_SPEC.value


@pytest.mark.parametrize(
    ("obj", "usable"),
    [
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "198.18.0.2"}), True),
        (endpoint(node="host-2", status=ALLOCATED), False),  # no VTEP yet
        (endpoint(node="host-1", status={**ALLOCATED, "vtep": "198.18.0.1"}), False),  # ours
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "198.18.0.2"}, deleting=True), False),
        (endpoint(node="host-2", status={**ALLOCATED, "vtep": "garbage"}), False),
    ],
    ids=["ready", "no-vtep", "local", "deleting", "bad-vtep"],
)
def test_remote_endpoints_need_ip_mac_vtep_and_life(obj: dict[str, Any], usable: bool) -> None:
    r = state.remote_endpoint(obj, {}, node="host-1")
    assert (r is not None) == usable
    if r is not None:
        assert r.vtep == ipaddress.IPv4Address("198.18.0.2") and r.mac == "0a:58:c6:13:00:05"


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
        assert len(name) <= naming.IFNAMSIZ and naming.is_agent_link_name(name)
    assert naming.port_name("x") == naming.port_name("x")
    assert naming.peer_name("x") != naming.port_name("x")
    assert not naming.is_agent_link_name("eth0")
    assert not naming.is_agent_link_name("vozzzzzzzzzzz")


def test_desired_port_kinds_and_external_ids() -> None:
    ep = state.local_endpoint(endpoint(status=ALLOCATED), {})
    assert not isinstance(ep, state.Waiting)
    port = state.desired_port(ep)
    assert port.kind == PortKind.VETH and port.name == naming.port_name("uid-1")
    ids = port.external_ids()
    assert ids[OWNER_KEY] == OWNER_VALUE and ids["voile.dev/endpoint"] == "default/e1"
    assert ids["iface-id"] == "uid-1" and ids["attached-mac"] == ep.mac
    host = state.local_endpoint(
        endpoint(status=ALLOCATED, target={"host": {"interface": "vhost0"}}), {}
    )
    assert not isinstance(host, state.Waiting)
    assert state.desired_port(host).kind == PortKind.INTERNAL
    assert state.desired_port(host).name == "vhost0"
    parsed = state.parse(endpoint(target={"host": {"interface": "vhost0"}}))
    assert parsed is not None and state.desired_port_name(parsed) == "vhost0"


def _observed(
    name: str, uid: str | None, owned: bool = True, role: str = "endpoint"
) -> ObservedPort:
    ids = {"voile.dev/role": role}
    if owned:
        ids[OWNER_KEY] = OWNER_VALUE
    if uid:
        ids["voile.dev/endpoint-uid"] = uid
    return ObservedPort(name=name, ofport=5, external_ids=tuple(sorted(ids.items())))


def test_stale_ports_are_only_owned_endpoint_ports_nobody_wants() -> None:
    ep = state.local_endpoint(endpoint(status=ALLOCATED), {})
    assert not isinstance(ep, state.Waiting)
    wanted = [state.desired_port(ep)]
    observed = [
        _observed(wanted[0].name, "uid-1"),  # wanted
        _observed("vo00000000000", "gone"),  # stale
        _observed("foreign", None, owned=False),  # not ours
        _observed("vxlan-voile", None, role="tunnel"),  # ours, not an endpoint port
        _observed(wanted[0].name + "x", "uid-1"),  # right uid, wrong name: stale
    ]
    assert state.stale_ports(observed, wanted) == sorted(["vo00000000000", wanted[0].name + "x"])


def test_ready_condition_keeps_transition_time_while_status_holds() -> None:
    cond = state.ready(c.Reason.READY.value, "plumbed")
    assert cond.status == "True"
    same = cond.as_api(
        now="T2", previous={"status": "True", "lastTransitionTime": "T1"}, generation=3
    )
    assert same["lastTransitionTime"] == "T1" and same["observedGeneration"] == 3
    flipped = cond.as_api(
        now="T2", previous={"status": "False", "lastTransitionTime": "T1"}, generation=3
    )
    assert flipped["lastTransitionTime"] == "T2"
    bad = state.ready(c.Reason.NAMESPACE_NOT_FOUND.value, "gone")
    assert bad.status == "False" and bad.reason == "NamespaceNotFound"


def test_status_is_current_only_when_vtep_and_condition_match() -> None:
    cond = state.ready(c.Reason.READY.value, "plumbed")
    obj = endpoint(
        status={
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
    )
    assert state.status_is_current(obj, vtep="198.18.0.1", cond=cond)
    assert not state.status_is_current(obj, vtep="198.18.0.2", cond=cond)
    assert not state.status_is_current(
        obj, vtep="198.18.0.1", cond=state.ready("PlumbingFailed", "x")
    )
    obj["metadata"]["generation"] = 2
    assert not state.status_is_current(obj, vtep="198.18.0.1", cond=cond)


def test_without_finalizer_keeps_the_others() -> None:
    assert state.without_finalizer(["a", c.AGENT_FINALIZER, "b"], c.AGENT_FINALIZER) == ["a", "b"]
