"""The prober: rounds of data-path probes to every VTEP that shares a network with this host,
in that network's segment, at a modest rate with jitter (``planning.probes`` says what a probe
is and what its results mean; the datapath sends them).

Its report goes into the heartbeat Lease (annotation ``voile.dev/probes``), written at once when
a path's state changes and otherwise with the heartbeat, and the operator folds the reports of
all nodes into each OverlayNetwork's and Endpoint's conditions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from voile import clock
from voile.errors import DatapathError
from voile_agent import metrics
from voile_agent.datapath.base import Datapath
from voile_agent.planning import probes
from voile_agent.planning.model import HostPlan
from voile_agent.planning.probes import HealthTracker, PathHealth, PathState

log = logging.getLogger(__name__)


class Prober:
    def __init__(
        self,
        datapath: Datapath,
        plan: Callable[[], HostPlan | None],
        *,
        interval: float = 2.0,
        timeout: float = 1.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.datapath = datapath
        self.plan = plan
        self.interval = interval
        self.timeout = min(timeout, interval * 0.8)
        self.on_change = on_change
        self.tracker = HealthTracker()
        self.supported = True
        self._names: dict[int, str] = {}

    def report(self) -> dict[str, object] | None:
        """The current report, or None before the first round (or without probes)."""
        plan = self.plan()
        if plan is None or not self.supported:
            return None
        return probes.report(
            at=clock.now_rfc3339(),
            vtep=plan.vtep,
            realized=[seg.vni for seg in plan.segments],
            paths=self.tracker.states(),
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.25))
            try:
                await self.round()
            except DatapathError as exc:
                log.warning("probe round failed error=%s", exc)

    async def round(self) -> list[PathHealth]:
        """One round: every target once; the states after it."""
        plan = self.plan()
        if plan is None:
            return []
        self._names = {seg.vni: seg.segment.network for seg in plan.segments}
        targets = probes.targets_for((s.vni, s.segment.mtu, s.flood) for s in plan.segments)
        before = {(p.vni, p.vtep): p.state for p in self.tracker.states()}
        results = await self.datapath.probe(targets, timeout=self.timeout) if targets else {}
        if results is None:
            self.supported = False
            return []
        self.tracker.update(results)
        self._record(results)
        states = self.tracker.states()
        after = {(p.vni, p.vtep): p.state for p in states}
        if after != before:
            changed = {k: v for k, v in after.items() if before.get(k) != v}
            log.info(
                "data-path health changed %s",
                " ".join(
                    f"vni={vni} peer={vtep} state={s.value}" for (vni, vtep), s in changed.items()
                ),
            )
            self.on_change()
        metrics.BROKEN_PATHS.set(
            sum(1 for p in states if p.state in (PathState.UNREACHABLE, PathState.MTU))
        )
        return states

    def _record(self, results: dict[probes.ProbeTarget, float | None]) -> None:
        for target, rtt in results.items():
            labels = {
                "network": self._names.get(target.vni, str(target.vni)),
                "peer": str(target.vtep),
                "size": "full" if target.full else "small",
            }
            metrics.PROBES_SENT.labels(**labels).inc()
            if rtt is None:
                metrics.PROBES_LOST.labels(**labels).inc()
            else:
                metrics.PROBE_RTT.labels(**labels).observe(rtt)
