"""Which nodes are lost, and what their Endpoints then say. Pure.

A node is lost when its agent's heartbeat Lease (``voile-agent-<node>``) has not changed for
longer than the Lease's own ``leaseDurationSeconds``, judged as kube's node lifecycle controller
judges a Node (its ``probeTimestamp``): by the observer's own monotonic clock, since it last saw
``renewTime`` change, never by comparing ``renewTime`` with the local wall clock (skew), and only
over time during which the observer's own view of the Leases was healthy. A list that failed is
no observation at all, and after a gap in the observations (the API server down or paused, this
operator just elected) every Lease gets a full duration again from the first list that works: an
API server outage makes no host look lost, since nobody could renew anything. A Lease that does
not exist judges nothing (an agent not started yet, or uninstalled, is not a lost one).

Each Endpoint of a lost node then shows ``Ready=Unknown`` with reason ``NodeLost`` (kube's
``NodeStatusUnknown`` for a Node whose kubelet stopped posting): the other nodes' agents stop
forwarding to it (voile_agent.planning.state.remote_endpoint) and flood nothing to its VTEP, until
the node's agent, back, reports Ready again by itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from voile.api import conditions
from voile.api import constants as c
from voile.api.conditions import Condition
from voile_operator.planning import status as status_plan

FIELD_MANAGER = "voile-operator-nodelost"  # only ever applies the Ready entry of a lost node
DEFAULT_DURATION = 40.0  # a Lease without leaseDurationSeconds: kubelet's node lease duration


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Seen:
    renew: str  # the Lease's renewTime as last seen (compared, never parsed as a time)
    since: float  # the observer's clock when it first saw this renewTime
    duration: float


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LeaseView:
    """What the observer knows of the agents' Leases, on its own monotonic clock."""

    seen: Mapping[str, Seen] = dataclasses.field(default_factory=dict)
    healthy_since: float | None = None  # first list of the current run of healthy lists
    last_ok: float | None = None  # the latest list that worked


def observe(
    view: LeaseView, leases: Iterable[Mapping[str, Any]], *, now: float, max_gap: float
) -> LeaseView:
    """The view after a list of the Leases that worked, finished at ``now``. A list more than
    ``max_gap`` s after the previous one that worked starts a new healthy run."""
    continuous = view.last_ok is not None and now - view.last_ok <= max_gap
    healthy_since = view.healthy_since if continuous and view.healthy_since is not None else now
    seen: dict[str, Seen] = {}
    for lease in leases:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        name = str(meta.get("name", ""))
        if not name.startswith(c.AGENT_LEASE_PREFIX):
            continue
        node = name.removeprefix(c.AGENT_LEASE_PREFIX)
        renew = str(spec.get("renewTime") or "")
        try:
            duration = float(spec.get("leaseDurationSeconds") or DEFAULT_DURATION)
        except (TypeError, ValueError):
            duration = DEFAULT_DURATION
        old = view.seen.get(node)
        since = old.since if old is not None and old.renew == renew else now
        seen[node] = Seen(renew=renew, since=since, duration=max(duration, 1.0))
    return LeaseView(seen=seen, healthy_since=healthy_since, last_ok=now)


def lost(view: LeaseView, *, now: float) -> dict[str, float]:
    """Node -> seconds its Lease has been seen unchanged (healthy time only), for each node
    whose Lease has been unchanged longer than its duration."""
    if view.healthy_since is None:
        return {}
    result = {}
    for node, s in view.seen.items():
        silent = now - max(s.since, view.healthy_since)
        if silent > s.duration:
            result[node] = silent
    return result


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LostWrite:
    """The Ready entry to apply to one Endpoint of a lost node. ``document`` carries the
    Endpoint's resourceVersion: an agent that reported meanwhile wins (409), nothing is undone."""

    namespace: str
    name: str
    node: str
    condition: Condition
    document: dict[str, Any]


def lost_message(node: str, silent: float, duration: float) -> str:
    return (
        f"node {node} lost: its agent has not renewed its heartbeat Lease for {silent:.0f}s "
        f"(duration {duration:.0f}s); other nodes do not forward to it until it reports again"
    )


def node_lost_writes(
    endpoints: Iterable[Mapping[str, Any]], view: LeaseView, *, now: float, stamp: str
) -> list[LostWrite]:
    """``Ready=Unknown NodeLost`` for every live Endpoint of a lost node not showing it yet."""
    gone = lost(view, now=now)
    writes = []
    for ep in endpoints:
        meta, spec = ep.get("metadata") or {}, ep.get("spec") or {}
        node = str(spec.get("node") or "")
        if node not in gone or meta.get("deletionTimestamp"):
            continue
        raw = (ep.get("status") or {}).get("conditions")
        have = conditions.parse_conditions(raw)
        ready = conditions.find(have, c.ConditionType.READY)
        if ready is not None and ready.reason == c.Reason.NODE_LOST.value:
            continue
        cond = Condition(
            type=c.ConditionType.READY.value,
            status=c.ConditionStatus.UNKNOWN,
            reason=c.Reason.NODE_LOST.value,
            message=lost_message(node, gone[node], view.seen[node].duration),
            observed_generation=int(meta.get("generation") or 0),
        )
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        document = status_plan.apply_document(
            c.ENDPOINT, name, namespace, {"conditions": conditions.render([cond], raw, stamp)}
        )
        document["metadata"]["resourceVersion"] = str(meta.get("resourceVersion", ""))
        writes.append(
            LostWrite(namespace=namespace, name=name, node=node, condition=cond, document=document)
        )
    return writes
