"""The shared watch cache (voile.informer.Cache) as the operator uses it: secondary indexes kept
current through every event and list, one change reported per real change, and a re-list that
reports exactly what differs from what was held (nothing for objects whose resourceVersion is the
one held, a deletion for objects gone while no watch ran). Pure: raw objects in."""

from __future__ import annotations

from typing import Any

from voile.informer import Cache, Change
from voile_operator.appliers import watches
from voile_operator.appliers.cache import EndpointRef
from voile_operator.planning.ipam import IPClaimInfo


def claim(name: str, *, uid: str, endpoint: str, network: str = "blue", rv: str = "1") -> Any:
    return {
        "metadata": {"name": name, "uid": uid, "resourceVersion": rv,
                     "creationTimestamp": "2026-12-03T07:00:00Z"},
        "spec": {"network": network, "ip": f"198.19.1.{len(name) + 10}",
                 "endpoint": {"namespace": "default", "name": endpoint, "uid": f"ep-{endpoint}"}},
    }  # fmt: skip


def endpoint(name: str, *, network: str = "blue", rv: str = "1", ip: str | None = None) -> Any:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"ep-{name}",
                     "resourceVersion": rv},
        "spec": {"network": network, "node": "host-1"},
        "status": {"ip": ip} if ip else {},
    }  # fmt: skip


def claims_cache(seen: list[Change[IPClaimInfo]]) -> Cache[IPClaimInfo]:
    return Cache(
        watches.ip_claim,
        indexers={
            watches.BY_ENDPOINT: lambda cl: (cl.endpoint_uid,),
            watches.BY_NETWORK: lambda cl: (cl.network,),
        },
        on_event=seen.append,
    )


def names(values: list[IPClaimInfo]) -> list[str]:
    return sorted(v.name for v in values)


def test_indexes_follow_add_move_and_delete() -> None:
    seen: list[Change[IPClaimInfo]] = []
    cache = claims_cache(seen)
    cache.apply("ADDED", claim("a", uid="1", endpoint="x"))
    cache.apply("ADDED", claim("bb", uid="2", endpoint="x", network="red"))
    assert names(cache.by(watches.BY_ENDPOINT, "ep-x")) == ["a", "bb"]
    assert names(cache.by(watches.BY_NETWORK, "blue")) == ["a"]
    cache.apply("MODIFIED", claim("a", uid="1", endpoint="y", rv="2"))
    assert names(cache.by(watches.BY_ENDPOINT, "ep-x")) == ["bb"]
    assert names(cache.by(watches.BY_ENDPOINT, "ep-y")) == ["a"]
    cache.apply("DELETED", claim("bb", uid="2", endpoint="x", network="red", rv="3"))
    assert cache.by(watches.BY_ENDPOINT, "ep-x") == []
    assert "red" not in cache.index(watches.BY_NETWORK)  # empty buckets go
    assert dict(cache.index(watches.BY_NETWORK)) == {"blue": cache.by(watches.BY_NETWORK, "blue")}
    assert [(c.kind, c.key, c.old is None, c.new is None) for c in seen] == [
        ("ADDED", "/a", True, False),
        ("ADDED", "/bb", True, False),
        ("MODIFIED", "/a", False, False),
        ("DELETED", "/bb", False, True),
    ]


def test_a_relist_reports_only_what_differs() -> None:
    seen: list[Change[IPClaimInfo]] = []
    cache = claims_cache(seen)
    cache.replace([claim("a", uid="1", endpoint="x"), claim("bb", uid="2", endpoint="y")])
    assert [c.kind for c in seen] == ["ADDED", "ADDED"]
    seen.clear()
    # after a 410: "a" unchanged, "bb" gone while no watch ran, "ccc" new, "a" not re-parsed
    cache.replace([claim("a", uid="1", endpoint="x"), claim("ccc", uid="3", endpoint="z")])
    assert [(c.kind, c.key, c.obj is None) for c in seen] == [
        ("ADDED", "/ccc", False),
        ("DELETED", "/bb", True),
    ]
    assert seen[1].old is not None and seen[1].old.endpoint_uid == "ep-y"
    assert cache.by(watches.BY_ENDPOINT, "ep-y") == []
    seen.clear()
    cache.replace([claim("a", uid="1", endpoint="w", rv="9"), claim("ccc", uid="3", endpoint="z")])
    assert [(c.kind, c.key) for c in seen] == [("MODIFIED", "/a")]
    assert names(cache.by(watches.BY_ENDPOINT, "ep-w")) == ["a"]


def test_an_unreadable_claim_keeps_its_last_version_and_reports_no_change() -> None:
    seen: list[Change[IPClaimInfo]] = []
    cache = claims_cache(seen)
    cache.apply("ADDED", claim("a", uid="1", endpoint="x"))
    broken = claim("a", uid="1", endpoint="x", rv="2")
    broken["spec"]["ip"] = "not-an-address"
    cache.apply("MODIFIED", broken)
    assert names(cache.by(watches.BY_ENDPOINT, "ep-x")) == ["a"]
    assert [c.kind for c in seen] == ["ADDED"]
    assert cache.invalid["/a"].resource_version == "2"


def test_the_endpoint_cache_keeps_invalid_specs_for_the_reconciler() -> None:
    seen: list[Change[EndpointRef]] = []
    cache: Cache[EndpointRef] = Cache(
        watches.endpoint_ref,
        indexers={watches.BY_NETWORK: lambda ref: (ref.network,)},
        on_event=seen.append,
    )
    bad = endpoint("db")
    bad["spec"] = {"network": "blue", "mac": "not-a-mac"}  # the reconciler says InvalidSpec
    cache.apply("ADDED", bad)
    cache.apply("ADDED", endpoint("web", ip="198.19.1.5"))
    assert [r.name for r in cache.by(watches.BY_NETWORK, "blue")] == ["db", "web"]
    assert [(r.name, r.allocated) for r in cache.values()] == [("db", False), ("web", True)]
    assert seen[0].obj is bad  # the raw body goes on to the work queue
