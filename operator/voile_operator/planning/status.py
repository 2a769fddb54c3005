"""The status documents the operator applies (server-side apply, fieldManager voile-operator).

A server-side apply document lists every field the manager owns: a field left out is removed. So
these functions always build the operator's whole share of status, and ``needs_apply`` tells the
applier whether anything would change, which keeps idle reconciles free of writes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from voile.api import constants as c
from voile.api.model import NetworkSpec, mac_for
from voile_operator.planning import conditions as cond
from voile_operator.planning.conditions import Condition

ENDPOINT_FIELDS = ("ip", "mac", "prefixLength", "gateway", "vni", "mtu", "observedGeneration")
NETWORK_FIELDS = ("vni", "mtu", "endpoints", "allocated", "free", "observedGeneration")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EndpointOutcome:
    """The result of one Endpoint reconcile: an address, or why there is none."""

    ip: ipaddress.IPv4Address | None = None
    reason: c.Reason | None = None  # None when allocated
    message: str = ""


def endpoint_status(
    *,
    generation: int,
    outcome: EndpointOutcome,
    spec_mac: str | None,
    network: NetworkSpec | None,
    vni: int | None,
    mtu: int | None,
    existing: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The operator's share of an Endpoint's status for this outcome."""
    status: dict[str, Any] = {"observedGeneration": generation}
    conditions: list[Condition]
    if outcome.ip is not None and network is not None:
        status["ip"] = str(outcome.ip)
        status["mac"] = spec_mac or mac_for(outcome.ip)
        status["prefixLength"] = network.prefix_length
        if network.gateway is not None:
            status["gateway"] = str(network.gateway)
        if vni is not None:
            status["vni"] = vni
        if mtu is not None:
            status["mtu"] = mtu
        conditions = [
            cond.true(
                c.ConditionType.ALLOCATED,
                c.Reason.ALLOCATED,
                f"{outcome.ip}/{network.prefix_length} mac {status['mac']}",
                generation,
            ),
            *cond.kstatus(None, generation),
        ]
    else:
        reason = outcome.reason or c.Reason.PENDING
        conditions = [
            cond.false(c.ConditionType.ALLOCATED, reason, outcome.message, generation),
            *cond.kstatus(reason, generation),
        ]
    status["conditions"] = cond.render(conditions, (existing or {}).get("conditions"), now)
    return status


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkOutcome:
    vni: int | None
    mtu: int
    vni_reason: c.Reason | None = None  # None when the VNI is held
    vni_message: str = ""
    ready_reason: c.Reason | None = None  # overrides Ready (e.g. EndpointsRemain while deleting)
    ready_message: str = ""
    endpoints: int = 0
    allocated: int = 0
    capacity: int = 0


def network_status(
    *, generation: int, outcome: NetworkOutcome, existing: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "mtu": outcome.mtu,
        "endpoints": outcome.endpoints,
        "allocated": outcome.allocated,
        "free": max(0, outcome.capacity - outcome.allocated),
        "observedGeneration": generation,
    }
    if outcome.vni is not None and outcome.vni_reason is None:
        status["vni"] = outcome.vni
    conds: list[Condition] = []
    if outcome.vni_reason is None:
        conds.append(
            cond.true(
                c.ConditionType.VNI_ALLOCATED, c.Reason.ALLOCATED, f"VNI {outcome.vni}", generation
            )
        )
    else:
        conds.append(
            cond.false(
                c.ConditionType.VNI_ALLOCATED, outcome.vni_reason, outcome.vni_message, generation
            )
        )
    ready_reason = outcome.ready_reason or outcome.vni_reason
    if ready_reason is None:
        conds.append(
            cond.true(
                c.ConditionType.READY,
                c.Reason.READY,
                f"VNI {outcome.vni}, MTU {outcome.mtu}, {outcome.allocated} of "
                f"{outcome.capacity} addresses allocated",
                generation,
            )
        )
        conds.extend(cond.kstatus(None, generation))
    else:
        message = outcome.ready_message or outcome.vni_message
        conds.append(cond.false(c.ConditionType.READY, ready_reason, message, generation))
        conds.extend(cond.kstatus(ready_reason, generation))
    status["conditions"] = cond.render(conds, (existing or {}).get("conditions"), now)
    return status


def needs_apply(
    existing: Mapping[str, Any] | None, desired: Mapping[str, Any], owned: tuple[str, ...]
) -> bool:
    """True when applying ``desired`` would change the object (a field of ours differs, one of
    ours would be removed, or one of our conditions differs)."""
    existing = existing or {}
    for key in owned:
        if existing.get(key) != desired.get(key):
            return True
    current = {
        str(e.get("type")): dict(e) for e in existing.get("conditions") or () if isinstance(e, dict)
    }
    return any(current.get(wanted["type"]) != wanted for wanted in desired.get("conditions") or ())


def apply_document(
    kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": c.API_VERSION, "kind": kind, "metadata": meta, "status": dict(status)}
