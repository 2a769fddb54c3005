"""The lost-node verdict (voile_operator.planning.nodes): a Lease that stood still longer than its
duration, on the observer's clock, over healthy observations only; and the Endpoint writes it
calls for. Pure: API dicts and monotonic seconds in, verdicts and documents out."""

from __future__ import annotations

from typing import Any

from voile.api import constants as c
from voile_operator.planning import nodes

GAP = 10.0


def lease(node: str, renew: str, duration: int | None = 12) -> dict[str, Any]:
    spec: dict[str, Any] = {"holderIdentity": node, "renewTime": renew}
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    return {"metadata": {"name": f"{c.AGENT_LEASE_PREFIX}{node}"}, "spec": spec}


def run(rounds: list[tuple[float, list[dict[str, Any]] | None]]) -> nodes.LeaseView:
    """Observations at the given times; None is a list that failed (no observation)."""
    view = nodes.LeaseView()
    for now, leases in rounds:
        if leases is not None:
            view = nodes.observe(view, leases, now=now, max_gap=GAP)
    return view


def test_a_lease_renewed_every_round_is_never_lost() -> None:
    view = run([(float(t), [lease("h1", f"r{t}")]) for t in range(0, 60)])
    assert nodes.lost(view, now=59.0) == {}


def test_a_lease_that_stands_still_longer_than_its_duration_is_lost() -> None:
    rounds: list[tuple[float, list[dict[str, Any]] | None]] = [
        (float(t), [lease("h1", f"r{min(t, 5)}"), lease("h2", f"r{t}")]) for t in range(0, 20)
    ]
    view = run(rounds)
    assert nodes.lost(view, now=17.0) == {}  # 12 s since it changed at t=5
    assert set(nodes.lost(view, now=19.0)) == {"h1"}
    assert nodes.lost(view, now=19.0)["h1"] == 14.0


def test_the_renew_time_is_compared_not_read_as_a_clock() -> None:
    """A renewTime far in the past (a skewed clock) that keeps changing is alive."""
    view = run([(float(t), [lease("h1", f"1999-01-01T00:00:{t:02d}Z")]) for t in range(0, 40)])
    assert nodes.lost(view, now=39.0) == {}


def test_an_outage_of_the_observer_gives_every_lease_a_fresh_duration() -> None:
    """The API server paused 60 s: nobody renewed, nobody observed. The first list that works
    after it starts a new healthy run; only a Lease still standing still a duration later is
    lost."""
    before = [(float(t), [lease("h1", "r0"), lease("h2", f"r{t}")]) for t in range(0, 5)]
    outage: list[tuple[float, list[dict[str, Any]] | None]] = [
        (float(t), None) for t in range(5, 65)
    ]
    after = [(65.0, [lease("h1", "r0"), lease("h2", "r4")])]
    view = run([*before, *outage, *after])
    assert nodes.lost(view, now=65.0) == {}
    view = nodes.observe(view, [lease("h1", "r0"), lease("h2", "r66")], now=70.0, max_gap=GAP)
    assert nodes.lost(view, now=70.0) == {}
    view = nodes.observe(view, [lease("h1", "r0"), lease("h2", "r78")], now=78.0, max_gap=GAP)
    assert set(nodes.lost(view, now=78.0)) == {"h1"}  # 13 s of healthy silence since t=65


def test_a_slow_list_is_a_gap_too() -> None:
    view = run(
        [(0.0, [lease("h1", "r0")]), (5.0, [lease("h1", "r0")]), (30.0, [lease("h1", "r0")])]
    )
    assert nodes.lost(view, now=30.0) == {}  # 25 s between lists: no healthy run to judge by


def test_missing_duration_defaults_and_a_missing_lease_judges_nothing() -> None:
    view = run([(float(t), [lease("h1", "r0", duration=None)]) for t in range(0, 41)])
    assert nodes.lost(view, now=40.0) == {}
    view = nodes.observe(view, [lease("h1", "r0", duration=None)], now=41.0, max_gap=GAP)
    assert set(nodes.lost(view, now=41.0)) == {"h1"}
    view = nodes.observe(view, [], now=42.0, max_gap=GAP)
    assert nodes.lost(view, now=42.0) == {}


def test_other_leases_are_ignored() -> None:
    other = {"metadata": {"name": "voile-operator"}, "spec": {"renewTime": "x"}}
    view = run([(float(t), [other]) for t in range(0, 30)])
    assert view.seen == {}


def endpoint(name: str, node: str, *, reason: str = "Ready", deleting: bool = False,
             rv: str = "7") -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": "default", "resourceVersion": rv,
                            "generation": 2}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cond = {
        "type": "Ready",
        "status": "True" if reason == "Ready" else "False",
        "reason": reason,
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    return {"metadata": meta, "spec": {"node": node, "network": "blue"},
            "status": {"conditions": [cond]}}  # fmt: skip


def test_writes_mark_every_live_endpoint_of_a_lost_node_once() -> None:
    rounds: list[tuple[float, list[dict[str, Any]] | None]] = [
        (float(t), [lease("h1", "r0"), lease("h2", f"r{t}")]) for t in range(0, 20)
    ]
    view = run(rounds)
    eps = [
        endpoint("a", "h1"),
        endpoint("b", "h1", reason="PlumbingFailed"),
        endpoint("c", "h1", reason="NodeLost"),  # already says so
        endpoint("d", "h1", deleting=True),
        endpoint("e", "h2"),
    ]
    writes = nodes.node_lost_writes(eps, view, now=19.0, stamp="2026-01-02T00:00:00Z")
    assert [w.name for w in writes] == ["a", "b"]
    first = writes[0]
    assert first.node == "h1"
    assert first.condition.status == c.ConditionStatus.UNKNOWN
    assert first.condition.reason == "NodeLost"
    assert "19s" in first.condition.message
    doc = first.document
    assert doc["metadata"] == {"name": "a", "namespace": "default", "resourceVersion": "7"}
    (cond,) = doc["status"]["conditions"]
    assert cond["type"] == "Ready" and cond["status"] == "Unknown"
    assert cond["lastTransitionTime"] == "2026-01-02T00:00:00Z"  # True -> Unknown is a change
    assert cond["observedGeneration"] == 2
