"""The operator's folding of the agents' probe reports into network and endpoint health. Pure:
reports in, conditions and broken pairs out."""

from __future__ import annotations

import datetime
import ipaddress
import json
from typing import Any

import pytest

from voile.api import constants as c
from voile_operator.planning import health
from voile_operator.planning.health import NodeReport, PairReason

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
VNI = 4096
VTEP = {"h1": "198.18.0.1", "h2": "198.18.0.2", "h3": "198.18.0.3"}


def report(node: str, states: dict[str, str], *, vnis: tuple[int, ...] = (VNI,),
           age: float = 1.0) -> NodeReport:  # fmt: skip
    return NodeReport(
        node=node,
        vtep=ipaddress.IPv4Address(VTEP[node]),
        at=NOW - datetime.timedelta(seconds=age),
        vnis=frozenset(vnis),
        paths={(VNI, ipaddress.IPv4Address(VTEP[p])): s for p, s in states.items()},
    )


def all_ok() -> dict[str, NodeReport]:
    return {n: report(n, {p: "ok" for p in VTEP if p != n}) for n in VTEP}


def judge(reports: dict[str, NodeReport], nodes: tuple[str, ...] = ("h1", "h2", "h3")) -> Any:
    return health.network_health(
        vni=VNI, nodes=nodes, reports=reports, now=NOW, max_age=30, generation=3
    )


def test_every_path_answering_is_healthy_and_verified() -> None:
    h = judge(all_ok())
    assert h.healthy.status == c.ConditionStatus.TRUE and h.mtu.status == c.ConditionStatus.TRUE
    assert h.status() == {"nodesExpected": 3, "nodesRealized": 3, "brokenPairs": []}
    assert h.healthy.observed_generation == 3


def test_a_blocked_pair_is_named_from_both_ends_and_only_it() -> None:
    reports = all_ok()
    reports["h1"] = report("h1", {"h2": "unreachable", "h3": "ok"})
    reports["h2"] = report("h2", {"h1": "unreachable", "h3": "ok"})
    h = judge(reports)
    assert h.healthy.status == c.ConditionStatus.FALSE and h.healthy.reason == "BrokenPairs"
    assert [(b.source, b.target, b.reason) for b in h.broken] == [
        ("h1", "h2", PairReason.UNREACHABLE),
        ("h2", "h1", PairReason.UNREACHABLE),
    ]
    assert h.mtu.status == c.ConditionStatus.UNKNOWN
    ok, _ = health.endpoint_health(h, "h3", 1)
    assert ok.status == c.ConditionStatus.TRUE, "h3's own paths answer"
    bad, _ = health.endpoint_health(h, "h1", 1)
    assert bad.status == c.ConditionStatus.FALSE and "h1->h2" in bad.message


def test_one_way_loss_is_told_apart() -> None:
    reports = all_ok()
    reports["h1"] = report("h1", {"h2": "unreachable", "h3": "ok"})
    h = judge(reports)
    assert [(b.source, b.target, b.reason) for b in h.broken] == [("h1", "h2", PairReason.ONE_WAY)]


def test_an_mtu_fault_fails_mtu_verified_but_not_reachability() -> None:
    reports = all_ok()
    reports["h1"] = report("h1", {"h2": "mtu", "h3": "mtu"})
    h = judge(reports)
    assert h.healthy.status == c.ConditionStatus.TRUE
    assert h.mtu.status == c.ConditionStatus.FALSE and h.mtu.reason == "MTUTooSmall"
    assert {b.reason for b in h.broken} == {PairReason.MTU}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.pop("h3"), "NoReport"),
        (lambda r: r.__setitem__("h3", report("h3", {}, age=300)), "NoReport"),
        (lambda r: r.__setitem__("h3", report("h3", {}, vnis=())), "NotRealized"),
        (lambda r: r.__setitem__("h3", report("h3", {"h1": "unknown", "h2": "ok"})),
         "NotProbedYet"),
    ],
    ids=["no-report", "stale", "not-realized", "not-probed"],
)  # fmt: skip
def test_missing_observations_are_unknown_never_healthy(change: Any, reason: str) -> None:
    reports = all_ok()
    change(reports)
    h = judge(reports)
    assert h.healthy.status == c.ConditionStatus.UNKNOWN and h.healthy.reason == reason


def test_one_node_has_nothing_to_probe() -> None:
    h = judge({"h1": report("h1", {})}, nodes=("h1",))
    assert h.healthy.status == c.ConditionStatus.TRUE and h.healthy.reason == "SingleNode"


def test_reports_are_parsed_from_the_lease_and_garbage_is_no_report() -> None:
    body = {"v": 1, "at": "2026-12-01T11:59:59Z", "vtep": "198.18.0.1", "vnis": [VNI],
            "paths": [{"vni": VNI, "vtep": "198.18.0.2", "state": "ok"}]}  # fmt: skip
    lease: dict[str, Any] = {"metadata": {"annotations": {c.ANNOTATION_PROBES: json.dumps(body)}}}
    parsed = health.parse_report("h1", lease)
    assert parsed is not None and parsed.vnis == {VNI}
    assert parsed.paths == {(VNI, ipaddress.IPv4Address("198.18.0.2")): "ok"}
    lease["metadata"]["annotations"][c.ANNOTATION_PROBES] = "{not json"
    assert health.parse_report("h1", lease) is None
    assert health.parse_report("h1", {"metadata": {}}) is None


# -- one round: API objects in, status writes out -----------------------------------------------


def _lease(node: str, states: dict[str, str]) -> dict[str, Any]:
    body = {
        "v": 1,
        "at": "2026-12-01T11:59:59Z",
        "vtep": VTEP[node],
        "vnis": [VNI],
        "paths": [{"vni": VNI, "vtep": VTEP[p], "state": s} for p, s in states.items()],
    }
    return {
        "metadata": {
            "name": c.AGENT_LEASE_PREFIX + node,
            "annotations": {c.ANNOTATION_PROBES: json.dumps(body)},
        }
    }


NETWORK = {"metadata": {"name": "blue", "generation": 4}, "status": {"vni": VNI}}


def _endpoints() -> list[dict[str, Any]]:
    return [
        {
            "metadata": {"name": f"e{i}", "namespace": "default", "generation": 1},
            "spec": {"network": "blue", "node": f"h{i}"},
        }
        for i in (1, 2, 3)
    ]


def test_a_round_writes_the_network_and_each_endpoint_and_then_nothing() -> None:
    leases = [_lease(n, {p: "ok" for p in VTEP if p != n}) for n in VTEP]
    leases[0] = _lease("h1", {"h2": "unreachable", "h3": "ok"})
    leases[1] = _lease("h2", {"h1": "unreachable", "h3": "ok"})
    leases.append({"metadata": {"name": "voile-operator"}})  # not an agent's: ignored
    rnd = health.plan_round(
        networks=[NETWORK], endpoints=_endpoints(), leases=leases, now=NOW, max_age=30
    )
    assert rnd.broken == {"blue": 2}
    by_name = {w.name: w for w in rnd.writes}
    assert sorted(by_name) == ["blue", "e1", "e2", "e3"]
    net = by_name["blue"]
    assert net.namespace is None and net.kind == c.OVERLAY_NETWORK
    assert net.status["health"]["brokenPairs"] == [
        {"from": "h1", "to": "h2", "reason": "Unreachable"},
        {"from": "h2", "to": "h1", "reason": "Unreachable"},
    ]
    kinds = {x["type"]: (x["status"], x["observedGeneration"]) for x in net.status["conditions"]}
    assert kinds == {"DataPathHealthy": ("False", 4), "MTUVerified": ("Unknown", 4)}
    assert by_name["e3"].status["health"] == {"node": "h3", "brokenPairs": []}
    assert by_name["e3"].status["conditions"][0]["status"] == "True"
    assert by_name["e1"].status["conditions"][0]["status"] == "False"
    assert by_name["e1"].namespace == "default"

    # Applied: the next round with the same reports writes nothing.
    network = {**NETWORK, "status": {**NETWORK["status"], **net.status}}
    eps = [{**e, "status": by_name[e["metadata"]["name"]].status} for e in _endpoints()]
    again = health.plan_round(networks=[network], endpoints=eps, leases=leases, now=NOW, max_age=30)
    assert again.writes == ()


def test_a_round_skips_networks_without_a_vni_or_being_deleted() -> None:
    leases = [_lease(n, {p: "ok" for p in VTEP if p != n}) for n in VTEP]
    networks = [
        {"metadata": {"name": "blue", "generation": 1}, "status": {}},
        {"metadata": {"name": "blue2", "deletionTimestamp": "x"}, "status": {"vni": VNI}},
    ]
    rnd = health.plan_round(
        networks=networks, endpoints=_endpoints(), leases=leases, now=NOW, max_age=30
    )
    assert rnd.writes == () and rnd.broken == {}


def test_an_endpoint_is_judged_by_its_own_node_paths() -> None:
    reports = all_ok()
    reports["h1"] = report("h1", {"h2": "unreachable", "h3": "ok"})
    reports["h2"] = report("h2", {"h1": "unreachable", "h3": "ok"})
    h = judge(reports)
    assert h.mtu.status == c.ConditionStatus.UNKNOWN, "the network cannot verify h1-h2"
    ok, mtu = health.endpoint_health(h, "h3", 1)
    assert (ok.status, mtu.status) == (c.ConditionStatus.TRUE, c.ConditionStatus.TRUE)
    bad, mtu1 = health.endpoint_health(h, "h1", 1)
    assert (bad.status, mtu1.status) == (c.ConditionStatus.FALSE, c.ConditionStatus.UNKNOWN)
    # A node whose report is missing leaves every node's paths unmeasured: unknown everywhere.
    reports.pop("h2")
    h = judge(reports)
    for node in ("h1", "h3"):
        got, _ = health.endpoint_health(h, node, 1)
        assert got.status == c.ConditionStatus.UNKNOWN and got.reason == "NoReport", node
