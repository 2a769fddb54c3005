"""The informer's store (controller.informer.Cache) with the agent's real parsers and
projections: objects are parsed once as their events arrive, an event of another host's Endpoint
wakes only when what forwarding uses changed, and an object that does not parse is reported and
does not replace its last valid version. Pure: raw API objects in, no API server."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from voile.api import constants as c
from voile.api.model import Endpoint, OverlayNetwork, parse_endpoint, parse_overlay_network
from voile_agent import metrics
from voile_agent.controller.informer import Cache
from voile_agent.planning import state
from voile_agent.planning.model import Segment


def endpoint(name: str = "db", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                     "resourceVersion": "1"},
        "spec": {"network": "blue", "node": "host-2", "target": {"host": {}}},
        "status": {"ip": "198.19.1.3", "mac": "0a:58:c6:13:01:03", "prefixLength": 24,
                   "vni": 100, "vtep": "198.18.0.2", **status},
    }  # fmt: skip


def remote_cache() -> Cache[Endpoint]:
    return Cache(parse_endpoint, project=state.forwarding, name="remote-endpoints")


def changed(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = new
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    new["metadata"]["resourceVersion"] = str(int(new["metadata"]["resourceVersion"]) + 1)
    return new


def test_events_are_parsed_once_into_the_model() -> None:
    cache = remote_cache()
    assert cache.apply("ADDED", endpoint()) is True
    (ep,) = cache.values()
    assert isinstance(ep, Endpoint) and str(ep.status.ip) == "198.19.1.3"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("status.conditions", [{"type": "Healthy", "status": "False", "reason": "Lost"}]),
        ("status.observedGeneration", 7),
        ("status.mtu", 1400),
        ("metadata.labels", {"team": "a"}),
        ("metadata.annotations", {"touched": "now"}),
    ],
    ids=["condition", "observed-generation", "mtu", "label", "annotation"],
)
def test_a_remote_change_forwarding_does_not_use_wakes_nothing(path: str, value: Any) -> None:
    cache = remote_cache()
    cache.apply("ADDED", endpoint())
    assert cache.apply("MODIFIED", changed(endpoint(), path, value)) is False
    (ep,) = cache.values()
    assert ep.resource_version == "2", "the store still holds the newest version"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("status.ip", "198.19.1.9"),
        ("status.mac", "0a:58:c6:13:01:09"),
        ("status.vtep", "198.18.0.9"),
        ("status.vni", 101),
        ("spec.node", "host-3"),
        ("metadata.deletionTimestamp", "2026-01-01T00:00:00Z"),
        (
            "status.conditions",
            [{"type": "Ready", "status": "Unknown", "reason": "NodeLost", "message": "lost"}],
        ),
    ],
    ids=["ip", "mac", "vtep", "vni", "node", "deleting", "node-lost"],
)
def test_a_remote_change_forwarding_uses_wakes(path: str, value: Any) -> None:
    cache = remote_cache()
    cache.apply("ADDED", endpoint())
    assert cache.apply("MODIFIED", changed(endpoint(), path, value)) is True


def test_presence_matters_only_once_a_peer_can_forward_to_it() -> None:
    cache = remote_cache()
    bare = endpoint()
    bare["status"] = {}
    assert cache.apply("ADDED", bare) is False, "no address yet: the same as absent"
    assert cache.apply("MODIFIED", endpoint()) is True, "its VTEP and address arrived"
    assert cache.apply("DELETED", endpoint()) is True
    assert cache.values() == []
    assert cache.apply("DELETED", endpoint("never-seen")) is False


def test_the_vtep_announced_with_the_finalizer_wakes_only_until_status_has_one() -> None:
    cache = remote_cache()
    bare = endpoint()
    del bare["status"]["vtep"]
    assert cache.apply("ADDED", bare) is False, "no VTEP yet: the same as absent"
    vtep = {c.ANNOTATION_VTEP: "198.18.0.2"}
    assert cache.apply("MODIFIED", changed(bare, "metadata.annotations", vtep)) is True
    reported = changed(changed(bare, "metadata.annotations", vtep), "status.vtep", "198.18.0.2")
    assert cache.apply("MODIFIED", reported) is False, "the same VTEP, now reported"


def test_without_a_projection_every_event_wakes() -> None:
    local: Cache[Endpoint] = Cache(parse_endpoint, name="local-endpoints")
    local.apply("ADDED", endpoint())
    assert local.apply("MODIFIED", changed(endpoint(), "status.observedGeneration", 2)) is True


def test_a_network_event_wakes_only_when_its_segment_changes() -> None:
    nets: Cache[OverlayNetwork] = Cache(parse_overlay_network, project=state.segment)
    net = {"metadata": {"name": "blue", "uid": "n1", "resourceVersion": "1"},
           "spec": {"cidr": "198.19.1.0/24"}, "status": {}}  # fmt: skip
    assert nets.apply("ADDED", net) is False, "no VNI yet: nothing to forward on"
    assert nets.apply("MODIFIED", changed(net, "status.vni", 100)) is True
    counted = changed(changed(net, "status.vni", 100), "status.allocated", 12)
    assert nets.apply("MODIFIED", counted) is False, "the operator's counts change nothing"
    assert nets.apply("MODIFIED", changed(counted, "status.mtu", 1400)) is True


def test_an_object_that_does_not_parse_is_reported_and_keeps_its_last_valid_version() -> None:
    cache = remote_cache()
    cache.apply("ADDED", endpoint())
    counter = metrics.INVALID_OBJECTS.labels(informer="remote-endpoints")
    before = counter._value.get()
    broken = changed(endpoint(), "spec.network", "Not A Label!")
    assert cache.apply("MODIFIED", broken) is False
    (ep,) = cache.values()
    assert ep.spec.network == "blue" and ep.resource_version == "1"
    (bad,) = cache.invalid.values()
    assert bad.name == "db" and bad.resource_version == "2" and "spec.network" in bad.error
    assert counter._value.get() == before + 1
    cache.apply("MODIFIED", broken)
    assert counter._value.get() == before + 1, "counted once per version"
    # One bad object does not stop the others.
    assert cache.apply("ADDED", endpoint("cache", ip="198.19.1.4")) is True
    assert sorted(e.name for e in cache.values()) == ["cache", "db"]
    assert cache.apply("MODIFIED", changed(endpoint(), "status.ip", "198.19.1.5")) is True
    assert cache.invalid == {}


def test_a_new_object_that_does_not_parse_is_not_in_the_store() -> None:
    cache = remote_cache()
    assert cache.apply("ADDED", changed(endpoint(), "spec", "nonsense")) is False
    assert cache.values() == [] and list(cache.invalid) == ["default/db"]
    cache.apply("DELETED", endpoint())
    assert cache.invalid == {}


def test_a_relist_wakes_only_when_something_forwarding_uses_differs() -> None:
    cache = remote_cache()
    assert cache.replace([endpoint(), endpoint("cache", ip="198.19.1.4")]) is True
    touched = changed(endpoint(), "status.conditions", [{"type": "X", "status": "True"}])
    assert cache.replace([touched, endpoint("cache", ip="198.19.1.4")]) is False
    assert cache.replace([touched]) is True, "one went away while the watch was down"
    broken = changed(touched, "spec", "nonsense")
    assert cache.replace([broken]) is False, "a bad version is not read as the object going"
    assert [e.name for e in cache.values()] == ["db"] and list(cache.invalid) == ["default/db"]


def test_remote_endpoints_are_kept_slim_with_what_forwarding_reads() -> None:
    cache: Cache[Endpoint] = Cache(
        state.parse_remote, project=state.forwarding, name="remote-endpoints"
    )
    obj = endpoint(conditions=[
        {"type": "Allocated", "status": "True", "reason": "Allocated", "message": "a " * 40},
        {"type": "DataPathHealthy", "status": "True", "reason": "Healthy", "message": "ok"},
    ])  # fmt: skip
    obj["metadata"]["labels"] = {"team": "a"}
    obj["metadata"]["finalizers"] = [c.OPERATOR_FINALIZER]
    cache.apply("ADDED", obj)
    (ep,) = cache.values()
    assert ep.status.conditions == () and not ep.labels and not ep.finalizers
    full = parse_endpoint(obj)
    assert state.forwarding(ep) == state.forwarding(full) is not None
    segs = {
        "blue": Segment(
            network="blue", vni=100, mtu=1450, cidr=ipaddress.ip_network("198.19.1.0/24")
        )
    }
    assert state.remote_endpoint(ep, segs, node="host-1") == state.remote_endpoint(
        full, segs, node="host-1"
    )
    lost = changed(obj, "status.conditions", [
        {"type": "Ready", "status": "Unknown", "reason": c.Reason.NODE_LOST.value, "message": "x"},
    ])  # fmt: skip
    assert cache.apply("MODIFIED", lost) is True  # the verdict is kept: peers stop sending
    (ep,) = cache.values()
    assert state.node_lost(ep) and state.forwarding(ep) is None
