"""The datapath watchdog: asks the backend's ``health()`` (bounded in time) every ``interval``
seconds, faster while the datapath is sick, and acts on what ``planning.watchdog`` decides:
wake a repair pass, report the fault on this host's Endpoints, renew the heartbeat.

It never waits on the datapath without a deadline, and never on the API server from the loop
that watches the datapath: the fault's status writes run in a task of their own (on the lab's
hosts and on nodes whose underlay crosses Open vSwitch, a sick switch can also cut the API)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from voile import clock
from voile.api import constants as c
from voile_agent import metrics
from voile_agent.datapath.base import Datapath, Health
from voile_agent.planning.watchdog import Check, HealthState

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(
        self,
        datapath: Datapath,
        *,
        on_repair: Callable[[], None],
        on_report: Callable[[Check], Awaitable[None]],
        on_change: Callable[[], None],
        interval: float = 1.0,
        sick_interval: float = 0.25,
        deadline: float = 3.0,
        report_after: float = 2.0,
    ) -> None:
        self.datapath = datapath
        self.on_repair = on_repair
        self.on_report = on_report
        self.on_change = on_change
        self.interval = interval
        self.sick_interval = sick_interval
        self.deadline = deadline
        self.state = HealthState(report_after=report_after)
        self._since_wall = clock.now_rfc3339()
        self._reporting: asyncio.Task[None] | None = None
        metrics.DATAPATH_HEALTHY.set(1)

    @property
    def fault(self) -> Check | None:
        """The current fault, None while the datapath is healthy."""
        return None if self.state.current.healthy else self.state.current

    def annotation(self) -> dict[str, object]:
        return self.state.as_annotation(wall_since=self._since_wall)

    async def check(self) -> Check:
        """One health check, within ``deadline`` seconds whatever the backend does."""
        try:
            health: Health = await asyncio.wait_for(self.datapath.health(), self.deadline)
        except TimeoutError:
            return Check(
                healthy=False,
                reason=c.Reason.DATAPATH_UNAVAILABLE.value,
                message=f"the datapath's health check did not finish within {self.deadline:g}s",
            )
        except Exception as exc:  # a backend bug must not stop the watchdog
            return Check(
                healthy=False, reason=c.Reason.DATAPATH_UNAVAILABLE.value, message=str(exc)
            )
        return Check(healthy=health.healthy, reason=health.reason, message=health.message)

    async def run(self) -> None:
        while True:
            await self.tick()
            healthy = self.state.current.healthy
            await asyncio.sleep(self.interval if healthy else self.sick_interval)

    async def tick(self) -> None:
        began = time.monotonic()  # a fault is dated from the check that found it, not its end
        check = await self.check()
        actions = self.state.step(check, time.monotonic(), began=began)
        if actions.changed:
            self._since_wall = clock.now_rfc3339()
            metrics.DATAPATH_HEALTHY.set(1 if check.healthy else 0)
            if check.healthy:
                log.warning("datapath healthy again; repairing")
            else:
                metrics.DATAPATH_FAULTS.labels(reason=check.reason).inc()
                log.warning("datapath fault reason=%s message=%s", check.reason, check.message)
            self.on_change()
        if actions.repair:
            self.on_repair()
        if actions.report and (self._reporting is None or self._reporting.done()):
            self._reporting = asyncio.create_task(self._report(check), name="fault-report")

    async def _report(self, check: Check) -> None:
        try:
            await self.on_report(check)
        except Exception as exc:
            log.warning("could not report the datapath fault error=%s", exc)
