"""The operator's conditions: kstatus's Reconciling/Stalled for an outcome. The Condition type
itself is the shared one (voile.api.conditions).

The operator owns only some conditions (Allocated/Reconciling/Stalled on Endpoints; Ready,
VNIAllocated, Reconciling, Stalled on OverlayNetworks); the agent owns Endpoint ``Ready``. The
list is a map keyed by ``type``, so each field manager's apply touches only its own entries.

``lastTransitionTime`` changes only when a condition's status changes (as Kubernetes requires),
so the previous conditions are an input. ``Reconciling``/``Stalled`` follow kstatus: Stalled=True
when progress needs a change in the world (a conflict, an exhausted pool), Reconciling=True while
work is in progress and may finish by itself.
"""

from __future__ import annotations

from voile.api import constants as c
from voile.api.conditions import Condition, false, render, true

__all__ = ["Condition", "false", "kstatus", "render", "true"]


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
