"""What the agent does about its datapath's health, decided from one check to the next. Pure.

The watchdog (``controller/watchdog.py``) asks the backend's ``health()`` every second (faster
while it is sick) and feeds each answer here; this decides:

- ``repair``: run a full (verify) pass now: the datapath came back, or ovs-vswitchd restarted and
  lost its flows (they are re-installed before it forwards again: flow-restore-wait);
- ``report``: the fault has lasted ``report_after`` s: tell the API (this host's Endpoints
  ``Ready=False`` with the fault's reason), once per fault;
- ``changed``: healthy <-> sick, or another reason: renew the heartbeat Lease now (it carries the
  node-level datapath condition) and count it in the metrics.
"""

from __future__ import annotations

import dataclasses

from voile.api import constants as c


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    healthy: bool
    reason: str = "Healthy"
    message: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Actions:
    repair: bool = False
    report: bool = False
    changed: bool = False


@dataclasses.dataclass(kw_only=True, slots=True)
class HealthState:
    """The datapath's health as the agent last saw it."""

    report_after: float = 2.0
    current: Check = dataclasses.field(default_factory=lambda: Check(healthy=True))
    since: float = 0.0  # when the current state (healthy or this fault) began
    reported: bool = False  # the current fault has been written to the Endpoints
    faults: int = 0

    def step(self, check: Check, now: float, *, began: float | None = None) -> Actions:
        """One check's answer, found at ``now`` by a check that ``began`` then (a fault is
        dated from the start of the check that found it: a stuck daemon makes checks slow)."""
        before = self.current
        changed = before.healthy != check.healthy or before.reason != check.reason
        if changed:
            self.since = now if began is None else began
            self.current = check
            if not check.healthy and before.healthy:
                self.faults += 1
        else:
            self.current = check  # the newest message
        if check.healthy:
            was_sick = not before.healthy
            if was_sick:
                self.reported = False
            return Actions(repair=was_sick, changed=changed)
        restarted = check.reason == c.Reason.DATAPATH_RESTARTED.value
        report = not self.reported and now - self.since >= self.report_after
        if report:
            self.reported = True
        return Actions(repair=restarted, report=report, changed=changed)

    def as_annotation(self, *, wall_since: str) -> dict[str, object]:
        """The node-level condition carried by the heartbeat Lease."""
        cur = self.current
        return {
            "type": "DatapathHealthy",
            "status": c.ConditionStatus.TRUE.value
            if cur.healthy
            else c.ConditionStatus.FALSE.value,
            "reason": cur.reason,
            "message": cur.message,
            "since": wall_since,
            "faults": self.faults,
        }
