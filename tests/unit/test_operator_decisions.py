"""Conditions, status documents, the two-phase collector and leader election (pure)."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from voile.api import constants as c
from voile.api.model import parse_network_spec
from voile_operator.planning import agents, collector, lease, status
from voile_operator.planning.conditions import render, true

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
SEC = datetime.timedelta(seconds=1)
NET = parse_network_spec({"cidr": "198.18.1.0/24", "gateway": "198.18.1.1"})


def test_transition_time_kept_while_status_unchanged() -> None:
    cond = true(c.ConditionType.ALLOCATED, c.Reason.ALLOCATED, "m", 1)
    first = render([cond], None, "t1")
    assert first[0]["lastTransitionTime"] == "t1"
    again = render([cond], first, "t2")
    assert again[0]["lastTransitionTime"] == "t1"
    flipped = render(
        [status.cond.false(c.ConditionType.ALLOCATED, c.Reason.POOL_EXHAUSTED, "m", 2)],
        again,
        "t3",
    )
    assert flipped[0]["lastTransitionTime"] == "t3"


def conditions_by_type(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(x["type"]): x for x in doc["conditions"]}  # type: ignore[attr-defined]


def test_endpoint_status_allocated() -> None:
    doc = status.endpoint_status(
        generation=3,
        outcome=status.EndpointOutcome(ip=ipaddress.IPv4Address("198.18.1.7")),
        spec_mac=None,
        network=NET,
        vni=4096,
        mtu=1450,
        existing=None,
        now="t",
    )
    assert doc["ip"] == "198.18.1.7" and doc["mac"] == "0a:58:c6:12:01:07"
    assert doc["prefixLength"] == 24 and doc["gateway"] == "198.18.1.1"
    assert doc["vni"] == 4096 and doc["mtu"] == 1450 and doc["observedGeneration"] == 3
    conds = conditions_by_type(doc)
    assert conds["Allocated"]["status"] == "True" and conds["Allocated"]["observedGeneration"] == 3
    assert conds["Stalled"]["status"] == "False" and conds["Reconciling"]["status"] == "False"
    assert not status.needs_apply(doc, doc, status.ENDPOINT_FIELDS)


@pytest.mark.parametrize(
    ("reason", "reconciling", "stalled"),
    [
        (c.Reason.POOL_EXHAUSTED, "False", "True"),
        (c.Reason.ADDRESS_TAKEN, "False", "True"),
        (c.Reason.NETWORK_NOT_FOUND, "True", "False"),
    ],
)
def test_endpoint_status_waiting(reason: c.Reason, reconciling: str, stalled: str) -> None:
    allocated = status.endpoint_status(
        generation=1,
        outcome=status.EndpointOutcome(ip=ipaddress.IPv4Address("198.18.1.7")),
        spec_mac="02:00:00:00:00:01",
        network=NET,
        vni=1,
        mtu=1450,
        existing=None,
        now="t",
    )
    assert allocated["mac"] == "02:00:00:00:00:01"
    doc = status.endpoint_status(
        generation=2,
        outcome=status.EndpointOutcome(reason=reason, message="why"),
        spec_mac=None,
        network=NET,
        vni=1,
        mtu=1450,
        existing=allocated,
        now="t2",
    )
    assert "ip" not in doc
    conds = conditions_by_type(doc)
    assert conds["Allocated"]["reason"] == reason.value
    assert conds["Reconciling"]["status"] == reconciling and conds["Stalled"]["status"] == stalled
    assert status.needs_apply(allocated, doc, status.ENDPOINT_FIELDS)


def test_needs_apply_ignores_foreign_conditions() -> None:
    doc = status.network_status(
        generation=1,
        outcome=status.NetworkOutcome(vni=5, mtu=1450, capacity=10, allocated=2),
        existing=None,
        now="t",
    )
    observed = {**doc, "conditions": [*doc["conditions"], {"type": "Probe", "status": "True"}]}
    assert not status.needs_apply(observed, doc, status.NETWORK_FIELDS)
    assert doc["free"] == 8


def test_network_status_vni_conflict() -> None:
    doc = status.network_status(
        generation=1,
        outcome=status.NetworkOutcome(
            vni=None,
            mtu=1450,
            vni_reason=c.Reason.VNI_CONFLICT,
            vni_message="VNI 7 is held by network b",
        ),
        existing=None,
        now="t",
    )
    conds = conditions_by_type(doc)
    assert "vni" not in doc
    assert conds["VNIAllocated"]["reason"] == "VNIConflict"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "VNIConflict"
    assert conds["Stalled"]["status"] == "True"


def ref(uid: str, owner: str, age: float) -> collector.ClaimRef:
    return collector.ClaimRef(
        kind="IPClaim", name=f"n-{uid}", uid=uid, owner_uid=owner, created=T0 - age * SEC
    )


@pytest.mark.parametrize(
    ("claims", "owners", "previous", "candidates", "collect"),
    [
        ([ref("a", "e1", 100)], {"e1"}, frozenset(), set(), []),
        ([ref("a", "gone", 100)], {"e1"}, frozenset(), {"a"}, []),  # first sighting only
        ([ref("a", "gone", 100)], {"e1"}, frozenset({"a"}), {"a"}, ["a"]),  # second round
        ([ref("a", "gone", 5)], {"e1"}, frozenset({"a"}), {"a"}, []),  # within grace
        ([ref("a", "e1", 100)], {"e1"}, frozenset({"a"}), set(), []),  # owner came back
        ([ref("a", "", 100)], set(), frozenset({"a"}), {"a"}, ["a"]),
    ],
)
def test_collector_round(
    claims: list[collector.ClaimRef],
    owners: set[str],
    previous: frozenset[str],
    candidates: set[str],
    collect: list[str],
) -> None:
    result = collector.collector_round(
        claims, owners, previous, now=T0, grace=datetime.timedelta(seconds=30)
    )
    assert result.candidates == candidates
    assert [r.uid for r in result.collect] == collect


@pytest.mark.parametrize(
    ("rounds_done", "full_every", "full"),
    [(0, 10, True), (1, 10, False), (9, 10, False), (10, 10, True), (3, 1, True), (0, 0, True)],
)
def test_full_round_at_start_and_every_nth(rounds_done: int, full_every: int, full: bool) -> None:
    assert collector.full_round_due(rounds_done, full_every) is full


def owned(owner_uid: str, owner_name: str = "ep") -> collector.ClaimRef:
    return collector.ClaimRef(
        kind="IPClaim", name="n-a", uid="a", owner_uid=owner_uid, created=T0,
        owner_namespace="default", owner_name=owner_name,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("claim", "read_uid", "orphan"),
    [
        (owned("e1"), None, True),  # the owner's name is not found in etcd
        (owned("e1"), "e2", True),  # re-created under its name: another incarnation
        (owned("e1"), "e1", False),  # still there: the cache lagged
        (owned("", owner_name=""), None, False),  # names no owner: left to the full rounds
    ],
)
def test_a_cached_candidate_is_collected_only_when_a_read_of_its_owner_confirms(
    claim: collector.ClaimRef, read_uid: str | None, orphan: bool
) -> None:
    assert collector.orphan_confirmed(claim, read_uid) is orphan


def lease_state(holder: str | None, age: float, duration: int = 15) -> lease.LeaseState:
    return lease.LeaseState(
        holder=holder, renewed=T0 - age * SEC, duration=duration, resource_version="1"
    )


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (None, lease.LeaseAction.CREATE),
        (lease_state("me", 1), lease.LeaseAction.TAKE),
        (lease_state("me", 100), lease.LeaseAction.TAKE),
        (lease_state("other", 1), lease.LeaseAction.WAIT),
        (lease_state("other", 14), lease.LeaseAction.WAIT),
        (lease_state("other", 16), lease.LeaseAction.TAKE),
        (lease_state(None, 1), lease.LeaseAction.TAKE),
    ],
)
def test_lease_decision(state: lease.LeaseState | None, action: lease.LeaseAction) -> None:
    assert lease.decide(state, me="me", now=T0) == action


def test_lease_roundtrip() -> None:
    body = lease.lease_body(
        name="voile-operator",
        namespace="ns",
        me="me",
        now=T0,
        duration=15,
        resource_version="7",
        acquired=True,
    )
    parsed = lease.parse_lease(body)
    assert parsed.holder == "me" and parsed.renewed == T0 and parsed.duration == 15
    assert parsed.resource_version == "7"


@pytest.mark.parametrize(
    ("state", "deletion_age", "gone"),
    [
        (lease_state("n1", 10), 1000, False),
        (lease_state("n1", 301), 1, True),
        (None, 10, False),  # agent may be starting: wait for dead_after on the deletion too
        (None, 301, True),
    ],
)
def test_agent_gone(state: lease.LeaseState | None, deletion_age: float, gone: bool) -> None:
    assert (
        agents.agent_gone(state, deletion_requested=T0 - deletion_age * SEC, now=T0, dead_after=300)
        is gone
    )
