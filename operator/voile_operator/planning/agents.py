"""Whether the operator may remove a node agent's finalizer from a deleted Endpoint itself.

Only when the agent is gone for good: its heartbeat Lease has not been renewed for
``dead_after`` seconds. A missing Lease counts only once the Endpoint has been waiting for
deletion longer than ``dead_after`` too, so that an agent that is just starting (finalizer added,
Lease not yet written) is never overtaken.
"""

from __future__ import annotations

import datetime

from voile_operator.planning.lease import LeaseState, expired


def agent_gone(
    lease: LeaseState | None,
    *,
    deletion_requested: datetime.datetime | None,
    now: datetime.datetime,
    dead_after: float,
) -> bool:
    if lease is not None:
        return expired(lease, now=now, dead_after=dead_after)
    if deletion_requested is None:
        return False
    return (now - deletion_requested).total_seconds() > dead_after
