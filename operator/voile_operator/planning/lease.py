"""Leader election on a coordination.k8s.io Lease: the decision, given the observed Lease.

One operator acts at a time. A replica restarted with the same identity takes the Lease back at
once (it is the same holder: nobody else can be acting on it); another identity waits until the
holder has not renewed for ``leaseDurationSeconds``. Writes use the Lease's resourceVersion as a
precondition, so two replicas that decide "acquire" at the same moment cannot both win.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping
from typing import Any

from voile import clock


class LeaseAction(str, enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # ours already, or expired: update it with us as holder
    WAIT = "wait"  # someone else holds a live Lease


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LeaseState:
    holder: str | None
    renewed: datetime.datetime | None
    duration: int
    resource_version: str


def parse_lease(obj: Mapping[str, Any]) -> LeaseState:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    return LeaseState(
        holder=spec.get("holderIdentity") or None,
        renewed=clock.parse_rfc3339(spec.get("renewTime"))
        or clock.parse_rfc3339(spec.get("acquireTime")),
        duration=int(spec.get("leaseDurationSeconds") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def decide(lease: LeaseState | None, *, me: str, now: datetime.datetime) -> LeaseAction:
    if lease is None:
        return LeaseAction.CREATE
    if lease.holder is None or lease.holder == me:
        return LeaseAction.TAKE
    if lease.renewed is None or now - lease.renewed > datetime.timedelta(seconds=lease.duration):
        return LeaseAction.TAKE
    return LeaseAction.WAIT


def expired(lease: LeaseState | None, *, now: datetime.datetime, dead_after: float) -> bool:
    """Whether a heartbeat Lease (an agent's) has not been renewed for ``dead_after`` seconds."""
    if lease is None or lease.renewed is None:
        return True
    return (now - lease.renewed).total_seconds() > dead_after


def micro_time(now: datetime.datetime) -> str:
    """metav1.MicroTime, as Leases want it."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    *,
    name: str,
    namespace: str,
    me: str,
    now: datetime.datetime,
    duration: int,
    resource_version: str | None,
    acquired: bool,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": duration,
        "renewTime": micro_time(now),
    }
    if acquired:
        spec["acquireTime"] = micro_time(now)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
