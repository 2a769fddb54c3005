"""The agent's loops: watches feed an in-memory view, one reconcile pass at a time turns it into
the datapath (``reconcile.Reconciler``), a timer re-runs the pass to repair drift, and a heartbeat
Lease tells the operator the agent is alive, where its VTEP is and which datapath it runs.

What it watches is only what the host needs: its own Endpoints (field selector ``spec.node``),
the Endpoints of the networks present on the host (``spec.network``, one watch per network,
started and stopped as local networks come and go), and the OverlayNetworks. Each object is
parsed once, when its event arrives (``informer.Cache``); an event of this host's Endpoints
always wakes a pass, one of another host's Endpoint or of a network only when it changed what
the datapath plan uses (``state.forwarding``, ``state.segment``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Sequence

from voile import kube
from voile.api import constants as c
from voile.api.model import (
    Endpoint,
    Invalid,
    OverlayNetwork,
    parse_endpoint,
    parse_overlay_network,
)
from voile.errors import DatapathError
from voile_agent import metrics
from voile_agent.controller.informer import Informer
from voile_agent.controller.probes import Prober
from voile_agent.controller.reconcile import PassResult, Reconciler
from voile_agent.controller.traces import TraceResponder
from voile_agent.controller.watchdog import Watchdog
from voile_agent.datapath.base import Datapath
from voile_agent.kubeapi import KubeWriter
from voile_agent.planning import state
from voile_agent.planning.model import Segment
from voile_agent.planning.watchdog import Check

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
MAX_BACKOFF = 30.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AgentSettings:
    node: str
    resync_period: float = 30.0
    namespace: str = c.DEFAULT_NAMESPACE
    heartbeat_interval: float = 10.0
    lease_duration: int = 40
    probe_interval: float = 2.0  # 0 = no data-path probes
    watchdog_interval: float = 1.0  # 0 = no datapath health checks
    fault_write_timeout: float = 5.0


def _record(result: PassResult) -> None:
    metrics.ENDPOINTS_PLUMBED.set(result.plumbed)
    metrics.ENDPOINTS_FAILED.set(result.failed)
    metrics.FLOWS_CHANGED.labels(op="add").inc(result.flows_added)
    metrics.FLOWS_CHANGED.labels(op="repair").inc(result.flows_repaired)
    metrics.FLOWS_CHANGED.labels(op="delete").inc(result.flows_deleted)
    metrics.PORTS_DELETED.inc(result.ports_deleted)


class ApiView:
    """The pass's view of the API (``reconcile.View``): the informers' caches, parsed once."""

    remote_informers: dict[str, Informer[Endpoint]]

    def __init__(self, client: kube.KubeClient, node: str, on_change: asyncio.Event) -> None:
        self.client = client
        self._wake = on_change
        # Also told when this host's Endpoints change (the local API's waiters).
        self.listeners: list[Callable[[], None]] = []
        ep_path = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
        self.local_informer: Informer[Endpoint] = Informer(
            client,
            ep_path,
            parse=parse_endpoint,
            on_change=self._local_changed,
            field_selector=f"spec.node={node}",
            kind="local-endpoints",
        )
        self.network_informer: Informer[OverlayNetwork] = Informer(
            client,
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            parse=parse_overlay_network,
            project=state.segment,
            on_change=on_change.set,
            kind="networks",
        )
        self.remote_informers = {}

    def _local_changed(self) -> None:
        self._wake.set()
        for listener in self.listeners:
            listener()

    @property
    def synced(self) -> bool:
        return self.local_informer.synced.is_set() and self.network_informer.synced.is_set()

    def start(self) -> None:
        self.local_informer.start()
        self.network_informer.start()

    async def stop(self) -> None:
        await self.local_informer.stop()
        await self.network_informer.stop()
        for informer in self.remote_informers.values():
            await informer.stop()

    async def wait_synced(self) -> None:
        await asyncio.gather(self.local_informer.synced.wait(), self.network_informer.synced.wait())

    def local(self) -> list[Endpoint]:
        return self.local_informer.items()

    def invalid_local(self) -> list[Invalid]:
        return self.local_informer.invalid

    def segments(self) -> dict[str, Segment]:
        return state.segments(self.network_informer.items())

    def remote(self) -> list[Endpoint]:
        return [ep for informer in self.remote_informers.values() for ep in informer.items()]

    async def watch_networks(self, networks: Collection[str]) -> None:
        wanted = set(networks)
        for name in sorted(set(self.remote_informers) - wanted):
            await self.remote_informers.pop(name).stop()
        for name in sorted(wanted - set(self.remote_informers)):
            informer = Informer(
                self.client,
                kube.path(c.GROUP, c.VERSION, c.ENDPOINTS),
                parse=state.parse_remote,
                project=state.forwarding,
                on_change=self._wake.set,
                field_selector=f"spec.network={name}",
                kind="remote-endpoints",
                name=f"network-endpoints/{name}",
            )
            self.remote_informers[name] = informer
            informer.start()

    async def remote_synced(self, *, timeout: float) -> bool:
        pending = [i.synced.wait() for i in self.remote_informers.values() if not i.synced.is_set()]
        if not pending:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except TimeoutError:
            log.warning("remote endpoint watches not synced; keeping existing forwarding")
            return False
        return True


class Agent:
    def __init__(
        self, settings: AgentSettings, client: kube.KubeClient, datapath: Datapath
    ) -> None:
        self.s = settings
        self.client = client
        self.datapath = datapath
        self.writer = KubeWriter(client)
        self.wake = asyncio.Event()
        self.view = ApiView(client, settings.node, self.wake)
        self.reconciler = Reconciler(
            node=settings.node, view=self.view, writer=self.writer, datapath=datapath
        )
        self.last_pass_ok = False
        self._beat = asyncio.Event()
        self.prober = Prober(
            datapath,
            lambda: self.reconciler.plan,
            interval=settings.probe_interval or 1.0,
            on_change=self._beat.set,
        )
        self._repair_requested = False
        self.watchdog = Watchdog(
            datapath,
            on_repair=self._request_repair,
            on_report=self._report_fault,
            on_change=self._datapath_changed,
            interval=settings.watchdog_interval or 1.0,
        )

    @property
    def vtep(self) -> str | None:
        vtep = self.reconciler.vtep
        return None if vtep is None else str(vtep)

    @property
    def synced(self) -> bool:
        """The watches have listed and the last pass went through."""
        return self.view.synced and self.last_pass_ok

    async def run(self) -> None:
        self.reconciler.vtep = await self.datapath.ensure_host()
        log.info(
            "agent starting node=%s vtep=%s datapath=%s",
            self.s.node,
            self.reconciler.vtep,
            self.datapath.kind,
        )
        tasks = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(
                TraceResponder(self.client, self.s.node, self.datapath).run(), name="traces"
            ),
        ]
        if self.s.probe_interval > 0:
            tasks.append(asyncio.create_task(self.prober.run(), name="prober"))
        if self.s.watchdog_interval > 0:
            tasks.append(asyncio.create_task(self.watchdog.run(), name="watchdog"))
        self.view.start()
        try:
            await self._wait_first_lists()
            await self._loop()
        finally:
            for task in tasks:
                task.cancel()
            await self.view.stop()

    async def _wait_first_lists(self) -> None:
        """Until the first lists arrive the agent changes nothing: the datapath keeps
        forwarding with what it has, however long the API server is out of reach."""
        synced = asyncio.ensure_future(self.view.wait_synced())
        while True:
            done, _ = await asyncio.wait({synced}, timeout=30)
            if done:
                return
            log.warning(
                "still waiting for the first list from the API server; not changing "
                "the datapath until it arrives"
            )

    async def _loop(self) -> None:
        verify_at = 0.0
        failures = 0
        while True:
            self.wake.clear()
            started = time.monotonic()
            # Comparing every entry with the plan is for drift, so once per resync period is
            # enough; passes woken by events in between stay lean.
            verify = started >= verify_at or self._repair_requested
            self._repair_requested = False
            result = await self._pass(verify=verify)
            if result is not None and verify:
                verify_at = started + self.s.resync_period
            failures = 0 if result is not None else failures + 1
            metrics.PASS_SECONDS.observe(time.monotonic() - started)
            if result is None:
                delay = min(RETRY_SECONDS * 2 ** (failures - 1), MAX_BACKOFF)
            else:
                delay = RETRY_SECONDS if result.retry else self.s.resync_period
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
                await asyncio.sleep(0.1)  # debounce bursts of events into one pass
            except TimeoutError:
                pass

    async def _pass(self, *, verify: bool) -> PassResult | None:
        try:
            result = await self.reconciler.run_pass(verify=verify)
        except DatapathError as exc:
            metrics.PASS_ERRORS.inc()
            log.warning("pass aborted: the datapath cannot be read or written error=%s", exc)
        except Exception:
            metrics.PASS_ERRORS.inc()
            log.exception("reconcile pass failed; retrying")
        else:
            _record(result)
            self.last_pass_ok = True
            return result
        self.last_pass_ok = False
        return None

    def _request_repair(self) -> None:
        """The watchdog saw the datapath come back (or lose its flows): a full pass now."""
        self._repair_requested = True
        self.wake.set()

    def _datapath_changed(self) -> None:
        if self.watchdog.fault is None:
            self.reconciler.fault = None  # passes report Ready again
        self._beat.set()

    async def _report_fault(self, check: Check) -> None:
        """``Ready=False`` with the fault's reason on every local Endpoint shown Ready or
        Pending, retried while the fault lasts (the API may be cut by the same fault). Each
        write is bounded; the watchdog's loop does not wait for this."""
        message = f"{self.s.node}: {check.message}"
        # From now on passes report the fault too (not before: a fault shorter than the
        # watchdog's report_after, such as an ovs-vswitchd restart, flips no status).
        if self.watchdog.fault is None:
            return  # already over
        self.reconciler.fault = (check.reason, message)
        shown = {c.Reason.READY.value, c.Reason.PENDING.value}
        while self.watchdog.fault is not None:
            pending = []
            for ep in self.view.local():
                ready = ep.status.condition(c.ConditionType.READY)
                if ep.deleting or ready is None or ready.reason not in shown:
                    continue
                pending.append(ep)
            try:
                for ep in pending:
                    cond = state.ready(check.reason, message, ep.generation)
                    await asyncio.wait_for(
                        # The VTEP stays: peers keep sending while the datapath may still
                        # forward (an OVSDB fault often leaves ovs-vswitchd forwarding).
                        self.writer.write_status(ep, vtep=self.vtep, cond=cond),
                        self.s.fault_write_timeout,
                    )
            except Exception as exc:  # unreachable, timed out, refused: try again while it lasts
                log.warning("datapath fault not reported yet error=%s", exc)
                await asyncio.sleep(1.0)
                continue
            return

    async def _heartbeat(self) -> None:
        """Renew the Lease every heartbeat interval, and at once when the probes' health
        changed (so the operator hears of a broken path within seconds)."""
        while True:
            self._beat.clear()
            try:
                await self.writer.heartbeat(
                    namespace=self.s.namespace,
                    node=self.s.node,
                    vtep=self.vtep or "",
                    datapath=self.datapath.kind,
                    duration=self.s.lease_duration,
                    probes=self.prober.report(),
                    health=self.watchdog.annotation(),
                )
            except Exception as exc:
                metrics.HEARTBEAT_FAILURES.inc()
                log.warning("heartbeat failed error=%s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), self.s.heartbeat_interval)

    def endpoints(self) -> Sequence[Endpoint]:
        """This host's Endpoints as the agent sees them (for the local API)."""
        return self.view.local()
