"""Data-path health of each network, from the agents' probe reports. Pure.

Each agent probes, in every network it carries, the VTEPs of the other nodes of that network,
small and at the network's full MTU, and publishes what it sees in its heartbeat Lease
(annotation ``voile.dev/probes``; voile_agent.planning.probes). Here those reports are folded
into each OverlayNetwork's status (conditions ``DataPathHealthy`` and ``MTUVerified``, the nodes
realized out of those expected, every broken pair by name with its reason) and into each
Endpoint's conditions for its own node.

A pair is judged from both ends: A unreachable from B while B reaches A is ``OneWay``; both lost
is ``Unreachable``; small probes through but full-size lost is ``MTU``. A node that has not
reported recently, or has not realized the network's VNI, makes the result unknown rather than
healthy: an observation that is missing is never "fine".
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from voile import clock
from voile.api import conditions
from voile.api import constants as c
from voile.api.conditions import Condition

HEALTHY = "DataPathHealthy"
MTU_VERIFIED = "MTUVerified"


class PairReason(str, enum.Enum):
    UNREACHABLE = "Unreachable"
    ONE_WAY = "OneWay"
    MTU = "MTU"


class HealthReason(str, enum.Enum):
    HEALTHY = "Healthy"
    VERIFIED = "Verified"
    BROKEN_PAIRS = "BrokenPairs"
    MTU_TOO_SMALL = "MTUTooSmall"
    NOT_REALIZED = "NotRealized"
    NO_REPORT = "NoReport"
    NOT_PROBED = "NotProbedYet"
    SINGLE_NODE = "SingleNode"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NodeReport:
    node: str
    vtep: ipaddress.IPv4Address
    at: datetime.datetime
    vnis: frozenset[int]
    paths: Mapping[tuple[int, ipaddress.IPv4Address], str]  # (vni, peer VTEP) -> state


def parse_report(node: str, lease: Mapping[str, Any]) -> NodeReport | None:
    """The probe report in an agent's Lease, or None when there is none (or it is garbage)."""
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    try:
        raw = json.loads(notes.get(c.ANNOTATION_PROBES) or "null")
        if not isinstance(raw, Mapping):
            return None
        paths = {
            (int(p["vni"]), ipaddress.IPv4Address(p["vtep"])): str(p["state"])
            for p in raw.get("paths") or ()
        }
        at = clock.parse_rfc3339(raw.get("at")) or clock.parse_rfc3339(
            (lease.get("spec") or {}).get("renewTime")
        )
        return NodeReport(
            node=node,
            vtep=ipaddress.IPv4Address(raw["vtep"]),
            at=at or datetime.datetime.min.replace(tzinfo=datetime.UTC),
            vnis=frozenset(int(v) for v in raw.get("vnis") or ()),
            paths=paths,
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, order=True)
class BrokenPair:
    source: str  # the node whose probes fail
    target: str
    reason: PairReason

    def to_api(self) -> dict[str, str]:
        return {"from": self.source, "to": self.target, "reason": self.reason.value}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkHealth:
    expected: tuple[str, ...]
    realized: tuple[str, ...]
    broken: tuple[BrokenPair, ...]
    healthy: Condition
    mtu: Condition
    uncertain: frozenset[str] = frozenset()  # nodes with a path not measured yet (or no report)

    def status(self) -> dict[str, Any]:
        return {
            "nodesExpected": len(self.expected),
            "nodesRealized": len(self.realized),
            "brokenPairs": [b.to_api() for b in self.broken],
        }


def _cond(kind: str, ok: bool | None, reason: HealthReason, message: str, gen: int) -> Condition:
    status = (
        c.ConditionStatus.UNKNOWN
        if ok is None
        else (c.ConditionStatus.TRUE if ok else c.ConditionStatus.FALSE)
    )
    return Condition(
        type=kind, status=status, reason=reason.value, message=message, observed_generation=gen
    )


def network_health(
    *,
    vni: int,
    nodes: Iterable[str],
    reports: Mapping[str, NodeReport],
    now: datetime.datetime,
    max_age: float,
    generation: int,
) -> NetworkHealth:
    """The health of one network whose endpoints live on ``nodes``."""
    expected = tuple(sorted(set(nodes)))
    fresh = {
        n: r
        for n, r in reports.items()
        if n in expected and (now - r.at).total_seconds() <= max_age
    }
    realized = tuple(n for n in expected if n in fresh and vni in fresh[n].vnis)
    broken: list[BrokenPair] = []
    unknown_pairs = 0
    mtu_pairs = 0
    uncertain: set[str] = set()
    for a in realized:
        for b in realized:
            if a == b:
                continue
            ab = fresh[a].paths.get((vni, fresh[b].vtep))
            ba = fresh[b].paths.get((vni, fresh[a].vtep))
            if ab == "unreachable":
                reason = PairReason.ONE_WAY if ba in ("ok", "mtu") else PairReason.UNREACHABLE
                broken.append(BrokenPair(source=a, target=b, reason=reason))
            elif ab == "mtu":
                mtu_pairs += 1
                broken.append(BrokenPair(source=a, target=b, reason=PairReason.MTU))
            elif ab != "ok":
                unknown_pairs += 1
                uncertain.update((a, b))
    missing = [n for n in expected if n not in realized]
    if missing:
        uncertain.update(expected)  # every node's path to a missing one is unmeasured
    unreachable = [b for b in broken if b.reason != PairReason.MTU]
    names = ", ".join(f"{b.source}->{b.target} {b.reason.value}" for b in broken[:8])
    if len(expected) <= 1 and not missing:
        why = f"{len(expected)} node(s): no path to probe"
        healthy = _cond(HEALTHY, True, HealthReason.SINGLE_NODE, why, generation)
        mtu = _cond(MTU_VERIFIED, True, HealthReason.SINGLE_NODE, why, generation)
    else:
        if unreachable:
            healthy = _cond(HEALTHY, False, HealthReason.BROKEN_PAIRS, names, generation)
        elif missing:
            stale = [n for n in missing if n not in fresh]
            why = HealthReason.NO_REPORT if stale else HealthReason.NOT_REALIZED
            healthy = _cond(
                HEALTHY,
                None,
                why,
                f"no fresh report of VNI {vni} from {', '.join(missing)}",
                generation,
            )
        elif unknown_pairs:
            healthy = _cond(
                HEALTHY,
                None,
                HealthReason.NOT_PROBED,
                f"{unknown_pairs} pair(s) not probed yet",
                generation,
            )
        else:
            pairs = len(realized) * (len(realized) - 1)
            healthy = _cond(
                HEALTHY, True, HealthReason.HEALTHY, f"{pairs} path(s) answer", generation
            )
        if mtu_pairs:
            mtu = _cond(MTU_VERIFIED, False, HealthReason.MTU_TOO_SMALL, names, generation)
        elif unreachable or missing or unknown_pairs:
            mtu = _cond(
                MTU_VERIFIED, None, HealthReason.NOT_PROBED, "not every path answers", generation
            )
        else:
            mtu = _cond(
                MTU_VERIFIED,
                True,
                HealthReason.VERIFIED,
                "full-size probes pass with DF",
                generation,
            )
    return NetworkHealth(
        expected=expected,
        realized=realized,
        broken=tuple(sorted(broken)),
        healthy=healthy,
        mtu=mtu,
        uncertain=frozenset(uncertain),
    )


def endpoint_health(
    health: NetworkHealth, node: str, generation: int
) -> tuple[Condition, Condition]:
    """An Endpoint's two conditions: the network's paths from and to its node only. A pair
    elsewhere that is broken does not make it unhealthy; a path of its node not measured yet
    leaves it as unknown as the network."""
    mine = [b for b in health.broken if node in (b.source, b.target)]
    unreachable = [b for b in mine if b.reason != PairReason.MTU]
    mtu = [b for b in mine if b.reason == PairReason.MTU]
    text = ", ".join(f"{b.source}->{b.target} {b.reason.value}" for b in mine[:8])
    unsure = node in health.uncertain or len(health.expected) <= 1
    if unreachable:
        h = _cond(HEALTHY, False, HealthReason.BROKEN_PAIRS, text, generation)
    elif unsure:
        h = dataclasses.replace(health.healthy, observed_generation=generation)
    else:
        h = _cond(HEALTHY, True, HealthReason.HEALTHY, "this node's paths answer", generation)
    if mtu:
        m = _cond(MTU_VERIFIED, False, HealthReason.MTU_TOO_SMALL, text, generation)
    elif unsure:
        m = dataclasses.replace(health.mtu, observed_generation=generation)
    elif unreachable:
        m = _cond(MTU_VERIFIED, None, HealthReason.NOT_PROBED, "not every path answers", generation)
    else:
        m = _cond(MTU_VERIFIED, True, HealthReason.VERIFIED, "this node's paths pass", generation)
    return h, m


def unchanged(existing: Iterable[Condition], wanted: Iterable[Condition]) -> bool:
    have = list(existing)
    return all(w.same(conditions.find(have, w.type)) for w in wanted)


# -- one aggregation round: API objects in, status documents out -------------------------------

FIELD_MANAGER = "voile-operator-health"  # its own manager: only these fields, never Ready & co


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StatusWrite:
    """One status apply of the health aggregation (None namespace: an OverlayNetwork)."""

    kind: str
    namespace: str | None
    name: str
    status: dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Round:
    writes: tuple[StatusWrite, ...]
    broken: Mapping[str, int]  # network -> broken pairs (for the gauge)


def _status_doc(
    conds: tuple[Condition, Condition],
    health: dict[str, Any],
    existing: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    return {
        "health": health,
        "conditions": conditions.render(conds, existing.get("conditions"), now),
    }


def _changed(existing: Mapping[str, Any], conds: Iterable[Condition], health: Any) -> bool:
    have = conditions.parse_conditions(existing.get("conditions"))
    return existing.get("health") != health or not unchanged(have, conds)


def plan_round(
    *,
    networks: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Mapping[str, Any]],
    leases: Iterable[Mapping[str, Any]],
    now: datetime.datetime,
    max_age: float,
) -> Round:
    """Every status write that the agents' current reports call for (nothing for an object
    whose health already reads so): each network with a VNI, and each of its Endpoints."""
    reports: dict[str, NodeReport] = {}
    for lease in leases:
        name = str((lease.get("metadata") or {}).get("name", ""))
        if name.startswith(c.AGENT_LEASE_PREFIX):
            node = name.removeprefix(c.AGENT_LEASE_PREFIX)
            parsed = parse_report(node, lease)
            if parsed is not None:
                reports[node] = parsed
    by_network: dict[str, list[Mapping[str, Any]]] = {}
    for ep in endpoints:
        spec = ep.get("spec") or {}
        if spec.get("network") and spec.get("node"):
            by_network.setdefault(str(spec["network"]), []).append(ep)
    stamp = clock.rfc3339(now)
    writes: list[StatusWrite] = []
    broken: dict[str, int] = {}
    for net in networks:
        meta, st = net.get("metadata") or {}, net.get("status") or {}
        vni = st.get("vni")
        if not isinstance(vni, int) or meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name", ""))
        members = by_network.get(name, [])
        nh = network_health(
            vni=vni,
            nodes=(str(ep["spec"]["node"]) for ep in members),
            reports=reports,
            now=now,
            max_age=max_age,
            generation=int(meta.get("generation") or 0),
        )
        broken[name] = len(nh.broken)
        conds = (nh.healthy, nh.mtu)
        if _changed(st, conds, nh.status()):
            writes.append(
                StatusWrite(
                    kind=c.OVERLAY_NETWORK,
                    namespace=None,
                    name=name,
                    status=_status_doc(conds, nh.status(), st, stamp),
                )
            )
        for ep in members:
            emeta, est = ep.get("metadata") or {}, ep.get("status") or {}
            if emeta.get("deletionTimestamp"):
                continue
            node = str(ep["spec"]["node"])
            econds = endpoint_health(nh, node, int(emeta.get("generation") or 0))
            mine = [b.to_api() for b in nh.broken if node in (b.source, b.target)]
            ehealth = {"node": node, "brokenPairs": mine}
            if _changed(est, econds, ehealth):
                writes.append(
                    StatusWrite(
                        kind=c.ENDPOINT,
                        namespace=str(emeta.get("namespace", "")),
                        name=str(emeta.get("name", "")),
                        status=_status_doc(econds, ehealth, est, stamp),
                    )
                )
    return Round(writes=tuple(writes), broken=broken)
