"""metav1.Condition-shaped conditions, and the status documents the operator server-side applies.

The operator owns only some conditions (Allocated/Reconciling/Stalled on Endpoints; Ready,
VNIAllocated, Reconciling, Stalled on OverlayNetworks); the agent owns Endpoint ``Ready``. The
list is a map keyed by ``type``, so each field manager's apply touches only its own entries.

``lastTransitionTime`` changes only when a condition's status changes (as Kubernetes requires),
so the previous conditions are an input. ``Reconciling``/``Stalled`` follow kstatus: Stalled=True
when progress needs a change in the world (a conflict, an exhausted pool), Reconciling=True while
work is in progress and may finish by itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voile.api import constants as c


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    type: str
    status: c.ConditionStatus
    reason: str
    message: str
    observed_generation: int

    def to_dict(self, last_transition_time: str) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": last_transition_time,
        }


def render_conditions(
    wanted: Iterable[Condition], existing: Sequence[Mapping[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    """Condition dicts for ``wanted``, keeping each one's lastTransitionTime while its status is
    unchanged (``now`` otherwise). ``now`` is RFC 3339 with second precision."""
    previous = {str(e.get("type")): e for e in existing or () if isinstance(e, Mapping)}
    out: list[dict[str, Any]] = []
    for cond in wanted:
        old = previous.get(cond.type)
        ltt = now
        if (
            old is not None
            and old.get("status") == cond.status.value
            and old.get("lastTransitionTime")
        ):
            ltt = str(old["lastTransitionTime"])
        out.append(cond.to_dict(ltt))
    return out


def true(kind: c.ConditionType, reason: c.Reason | str, message: str, gen: int) -> Condition:
    return Condition(
        type=kind.value,
        status=c.ConditionStatus.TRUE,
        reason=str(getattr(reason, "value", reason)),
        message=message,
        observed_generation=gen,
    )


def false(kind: c.ConditionType, reason: c.Reason | str, message: str, gen: int) -> Condition:
    return Condition(
        type=kind.value,
        status=c.ConditionStatus.FALSE,
        reason=str(getattr(reason, "value", reason)),
        message=message,
        observed_generation=gen,
    )


# Reasons where waiting alone may fix it (another object goes away or appears) -> Reconciling;
# the rest need the user to change the spec -> Stalled. Both retry: a "stalled" endpoint still
# recovers by itself when, say, the holder of its static address is deleted.
_TRANSIENT = frozenset(
    {
        c.Reason.PENDING,
        c.Reason.NETWORK_NOT_FOUND,
        c.Reason.NETWORK_NOT_READY,
        c.Reason.WAITING_FOR_ALLOCATION,
        c.Reason.ENDPOINTS_REMAIN,
    }
)


def kstatus(reason: c.Reason | None, gen: int) -> list[Condition]:
    """Reconciling and Stalled for an outcome (None = done)."""
    if reason is None:
        return [
            false(c.ConditionType.RECONCILING, c.Reason.READY, "up to date", gen),
            false(c.ConditionType.STALLED, c.Reason.READY, "not stalled", gen),
        ]
    if reason in _TRANSIENT:
        return [
            true(c.ConditionType.RECONCILING, reason, "waiting; retried automatically", gen),
            false(c.ConditionType.STALLED, reason, "not stalled", gen),
        ]
    return [
        false(c.ConditionType.RECONCILING, reason, "cannot progress without a change", gen),
        true(
            c.ConditionType.STALLED, reason, "retried automatically; see the other conditions", gen
        ),
    ]
