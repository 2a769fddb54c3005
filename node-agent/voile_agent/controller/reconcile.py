"""One reconcile pass, in small steps: observe -> plan -> apply.

    1. host       the datapath's host-level pieces; the VTEP
    2. sort       local Endpoints into wanted (allocated), waiting and deleting
    3. finalize   our finalizer on every live local Endpoint, before anything is plumbed
    4. attach     plumb what the datapath does not hold yet, or everything on a verify pass
    5. observe    the datapath as it is (a failed read aborts the pass: nothing is deleted)
    6. program    the neutral plan from what is attached and the remote endpoints
    7. prune      ports no live Endpoint wants, then the finalizers of deleted Endpoints
    8. report     vtep and Ready of each local Endpoint, only when it changed; a local
                  Endpoint that does not parse gets Ready=False reason InvalidSpec

The agent's writes per new Endpoint are two: its finalizer, which also announces the host's
VTEP (annotation ``voile.dev/vtep``, step 3, before anything is plumbed: the other hosts
program their way to the Endpoint while it is being plumbed, so its first packet has a way
back), and one status write with ``status.vtep`` and ``Ready`` once it is plumbed (step 8).
While an Endpoint waits for its allocation the agent writes nothing the operator's ``Allocated``
condition already says (``Reconciler.report_waiting``).

Each step is idempotent, so a crash anywhere is repaired by the next pass. The pass sees the API
through ``View`` (the watches' caches) and ``Writer``, and the datapath through
``voile_agent.datapath.base.Datapath`` only: unit tests drive whole passes against in-memory
fakes of all three (tests/unit/test_agent_pass.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Protocol, TypeVar

from voile import kube
from voile.api import constants as c
from voile.api import naming
from voile.api.conditions import Condition
from voile.api.model import Endpoint, Invalid
from voile.errors import DatapathError, PlumbingError
from voile_agent.datapath.base import Datapath, Observed
from voile_agent.planning import plan as planner
from voile_agent.planning import state
from voile_agent.planning.model import Attachment, HostPlan, RemoteEndpoint, Segment

log = logging.getLogger(__name__)


class View(Protocol):
    """What the pass reads from the API: the watches' caches, parsed once."""

    def local(self) -> Sequence[Endpoint]:
        """This host's Endpoints."""
        ...

    def invalid_local(self) -> Sequence[Invalid]:
        """This host's Endpoints whose last version does not parse."""
        ...

    def segments(self) -> dict[str, Segment]:
        """The OverlayNetworks with a settled VNI, by name."""
        ...

    def remote(self) -> Sequence[Endpoint]:
        """The Endpoints of the networks watched through ``watch_networks``."""
        ...

    async def watch_networks(self, networks: Collection[str]) -> None:
        """Watch the Endpoints of exactly these networks (start and stop watches). Idempotent."""
        ...

    async def remote_synced(self, *, timeout: float) -> bool:
        """Whether every network watch has listed once (waiting at most ``timeout`` s)."""
        ...


WRITES_AT_ONCE = 16  # API writes of one step in flight together (a burst: one round trip each)
WRITTEN_TTL = 15.0  # seconds a status write is trusted while the watch cache catches up
# Seconds an Endpoint without any Allocated condition waits before the agent says in Ready that
# it waits for the operator (in a burst the operator allocates most before then).
WAITING_QUIET = 15.0

T = TypeVar("T")
R = TypeVar("R")


async def each(
    items: Iterable[T], fn: Callable[[T], Awaitable[R]], *, limit: int = WRITES_AT_ONCE
) -> list[R]:
    """``fn`` over ``items``, at most ``limit`` at once, results in order: the writes of one
    step go out together instead of one round trip after the other (40 Endpoints arriving on a
    host cost one pass of ~3 round trips, not 120)."""
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


class Writer(Protocol):
    async def add_finalizer(self, ep: Endpoint, *, vtep: str) -> bool: ...

    async def remove_finalizer(self, ep: Endpoint) -> bool: ...

    async def write_status(self, ep: Endpoint, *, vtep: str | None, cond: Condition) -> bool: ...

    async def write_invalid(self, obj: Invalid, cond: Condition) -> bool: ...


@dataclasses.dataclass(kw_only=True, slots=True)
class PassResult:
    """What one pass did; for logs, metrics and to decide on an early retry."""

    plumbed: int = 0
    failed: int = 0
    flows_added: int = 0
    flows_deleted: int = 0
    flows_repaired: int = 0
    ports_deleted: int = 0
    retry: bool = False


@dataclasses.dataclass(kw_only=True, slots=True)
class Work:
    """The local Endpoints of one pass, sorted by what they need."""

    wanted: list[tuple[Endpoint, Attachment]] = dataclasses.field(default_factory=list)
    waiting: list[tuple[Endpoint, state.Waiting]] = dataclasses.field(default_factory=list)
    deleting: list[Endpoint] = dataclasses.field(default_factory=list)
    held: list[Attachment] = dataclasses.field(default_factory=list)  # finalizer not added yet
    conditions: list[tuple[Endpoint, Condition]] = dataclasses.field(default_factory=list)


def sort_local(endpoints: Sequence[Endpoint], segments: dict[str, Segment]) -> Work:
    """Step 2, pure."""
    work = Work()
    for ep in endpoints:
        if ep.deleting:
            work.deleting.append(ep)
            continue
        att = state.attachment(ep, segments)
        if isinstance(att, state.Waiting):
            work.waiting.append((ep, att))
        else:
            work.wanted.append((ep, att))
    return work


class Reconciler:
    """Runs passes for one host. ``run_pass`` is the whole of it; the steps are its methods."""

    def __init__(
        self,
        *,
        node: str,
        view: View,
        writer: Writer,
        datapath: Datapath,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.clock = clock
        self.view = view
        self.writer = writer
        self.dp = datapath
        self.vtep: ipaddress.IPv4Address | None = None
        self.plan: HostPlan | None = None  # the last plan programmed (the prober's targets)
        # The attachment last plumbed per endpoint uid: unchanged and still held by the
        # datapath, it is not plumbed again until the next verify pass.
        self._attached: dict[str, Attachment] = {}
        # (reason, message) of the datapath's current fault, set by the watchdog: an endpoint
        # the pass finds plumbed is then reported with it instead of Ready.
        self.fault: tuple[str, str] | None = None
        # The status last written per endpoint uid, so that a watch cache that has not caught
        # up yet does not make every pass write it again (or flip Ready back to the Pending of
        # the announcement): under load that was five status writes per Endpoint.
        self._written: dict[str, tuple[float, str | None, Condition]] = {}
        # When the finalizer was last added per uid: while the watch cache has not caught up,
        # it is not applied again (under load that was one more write per Endpoint and pass).
        self._finalizer_added: dict[str, float] = {}
        # When this agent first saw each waiting Endpoint (uid), for WAITING_QUIET.
        self._waiting_since: dict[str, float] = {}
        # The resourceVersion last reported invalid per uid (reported once per version).
        self._invalid_shown: dict[str, str] = {}

    async def run_pass(self, *, verify: bool) -> PassResult:
        """One pass. ``verify`` re-plumbs every attachment and compares every installed entry
        with the plan (drift repair; once per resync period). Raises DatapathError when the
        datapath cannot be read or written; then nothing has been deleted."""
        result = PassResult()
        vtep = await self.dp.ensure_host()
        self.vtep = vtep
        segments = self.view.segments()
        work = sort_local(self.view.local(), segments)
        await self.finalize(work, str(vtep), result)
        before = await self.dp.observe()
        attached = await self.attach(work, before, result, verify=verify)
        await self.view.watch_networks({att.network for _, att in work.wanted})
        # Never plan from a partial view: before every remote watch has listed once, a missing
        # remote would look stale and its state would be removed (traffic lost on restart).
        complete = await self.view.remote_synced(timeout=10.0)
        result.retry |= not complete
        observed = await self.dp.observe(wait_for=[att.port for _, att in attached])
        ready = self.check_ready(attached, observed, work)
        remotes = self.remote_endpoints(segments)
        plan = planner.host_plan(
            vtep=vtep, segments=segments, local=ready, remote=remotes, complete=complete
        )
        report = await self.dp.program(plan, observed, verify=verify)
        self.plan = plan
        result.flows_added, result.flows_deleted = report.added, report.deleted
        result.flows_repaired = report.repaired
        result.retry |= not report.settled
        result.plumbed = len(ready)
        await self.prune(work, observed, result)
        await self.report(work, str(vtep), result)
        await self.report_invalid(result)
        log.debug("pass done %s", result)
        return result

    async def finalize(self, work: Work, vtep: str, result: PassResult) -> None:
        """Step 3: our finalizer first. An allocated Endpoint that cannot get it is not plumbed
        (further) in this pass, but what it has stays: it is held, not stale."""
        done = await each(work.wanted, lambda pair: self._finalized(pair[0], vtep, result))
        wanted = []
        for (ep, att), ok in zip(work.wanted, done, strict=True):
            if ok:
                wanted.append((ep, att))
            else:
                work.held.append(att)
        work.wanted = wanted
        done = await each(work.waiting, lambda pair: self._finalized(pair[0], vtep, result))
        now = self.clock()
        self._waiting_since = {
            ep.uid: self._waiting_since.get(ep.uid, now) for ep, _ in work.waiting
        }
        for (ep, waiting), ok in zip(work.waiting, done, strict=True):
            if ok and self.report_waiting(ep, now, result):
                cond = state.ready(waiting.reason, waiting.message, ep.generation)
                work.conditions.append((ep, cond))

    def report_waiting(self, ep: Endpoint, now: float, result: PassResult) -> bool:
        """Whether Ready should say that the Endpoint waits for its allocation. Always when
        Ready shows something else (it was plumbed: the change must be seen). Otherwise not
        while the operator's ``Allocated`` condition says so already (False, with its reason),
        nor in the first WAITING_QUIET seconds of an Endpoint without one (the operator has not
        looked yet): each would be a write per Endpoint that tells nobody anything new."""
        if ep.status.condition(c.ConditionType.READY) is not None:
            return True
        allocated = ep.status.condition(c.ConditionType.ALLOCATED)
        if allocated is not None:
            return allocated.is_true  # allocated, yet not usable here: only the agent knows
        if now - self._waiting_since.get(ep.uid, now) >= WAITING_QUIET:
            return True
        result.retry = True  # look again when the quiet time is over
        return False

    async def _finalized(self, ep: Endpoint, vtep: str, result: PassResult) -> bool:
        now = self.clock()
        if c.AGENT_FINALIZER in ep.finalizers:
            self._finalizer_added.pop(ep.uid, None)
            return True
        if now - self._finalizer_added.get(ep.uid, -WRITTEN_TTL) < WRITTEN_TTL:
            return True  # added a moment ago; the watch has not shown it yet
        try:
            await self.writer.add_finalizer(ep, vtep=vtep)
        except kube.ApiError as exc:
            log.info("finalizer not added yet endpoint=%s error=%s", ep.key, exc)
            result.retry = True
            return False
        if len(self._finalizer_added) > 4096:
            self._finalizer_added = {
                k: t for k, t in self._finalizer_added.items() if now - t < WRITTEN_TTL
            }
        self._finalizer_added[ep.uid] = now
        return True

    def _wrote(self, ep: Endpoint, vtep: str | None, cond: Condition) -> None:
        now = time.monotonic()
        if len(self._written) > 4096:  # forget what the cache has long caught up with
            self._written = {k: v for k, v in self._written.items() if now - v[0] < WRITTEN_TTL}
        self._written[ep.uid] = (now, vtep, cond)

    def _recently(self, ep: Endpoint, vtep: str | None, cond: Condition | None) -> bool:
        """Whether this status (this vtep; and this condition, unless None) was written for
        the Endpoint less than WRITTEN_TTL ago."""
        last = self._written.get(ep.uid)
        if last is None or time.monotonic() - last[0] > WRITTEN_TTL or last[1] != vtep:
            return False
        return cond is None or cond.same(last[2])

    async def attach(
        self, work: Work, before: Observed, result: PassResult, *, verify: bool
    ) -> list[tuple[Endpoint, Attachment]]:
        """Step 5: plumb each wanted attachment the datapath does not hold as it was last
        plumbed (all of them on a verify pass). A failure is that endpoint's: it is reported in
        its Ready condition and the pass goes on. Returns the attachments now plumbed."""
        held = {(p.port, p.uid) for p in before.ports if p.ready}
        plumbed = []
        for ep, att in work.wanted:
            unchanged = self._attached.get(att.uid) == att and (att.port, att.uid) in held
            if unchanged and not verify:
                plumbed.append((ep, att))
                continue
            try:
                await self.dp.attach(att)
            except PlumbingError as exc:
                self._fail(work, result, ep, att, exc.reason, exc.message)
                continue
            except (DatapathError, OSError) as exc:
                log.warning("plumbing failed endpoint=%s error=%s", ep.key, exc)
                self._fail(work, result, ep, att, c.Reason.PLUMBING_FAILED.value, str(exc))
                continue
            self._attached[att.uid] = att
            plumbed.append((ep, att))
        return plumbed

    def _fail(
        self, work: Work, result: PassResult, ep: Endpoint, att: Attachment, reason: str, msg: str
    ) -> None:
        self._attached.pop(att.uid, None)
        work.conditions.append((ep, state.ready(reason, msg, ep.generation)))
        result.failed += 1
        result.retry = True

    def check_ready(
        self, attached: Sequence[tuple[Endpoint, Attachment]], observed: Observed, work: Work
    ) -> list[Attachment]:
        """The attachments the datapath can forward to; the others are reported not ready."""
        ready_ids = {a.uid for a in observed.ready([att for _, att in attached])}
        ready = []
        for ep, att in attached:
            if att.uid in ready_ids:
                ready.append(att)
                message = f"plumbed on {self.node} as port {att.port}"
                work.conditions.append(
                    (ep, state.ready(c.Reason.READY.value, message, ep.generation))
                )
            else:
                self._attached.pop(att.uid, None)
                message = f"port {att.port} is not forwarding yet"
                work.conditions.append(
                    (ep, state.ready(c.Reason.PLUMBING_FAILED.value, message, ep.generation))
                )
        return ready

    def remote_endpoints(self, segments: dict[str, Segment]) -> list[RemoteEndpoint]:
        result = []
        for ep in self.view.remote():
            r = state.remote_endpoint(ep, segments, node=self.node)
            if r is not None:
                result.append(r)
        return result

    async def prune(self, work: Work, observed: Observed, result: PassResult) -> None:
        """Step 8: remove ports and veths that no live local Endpoint explains (after the
        forwarding to them is gone), then release the finalizers of deleted Endpoints whose
        port is gone. Only tagged objects are candidates; this runs only after a successful
        observation."""
        wanted = [att for _, att in work.wanted] + work.held
        present = [(p.port, p.uid) for p in observed.ports] + list(observed.links)
        for port in state.stale_ports(present, wanted):
            if await self.dp.detach(port):
                result.ports_deleted += 1
        for uid in {uid for _, uid in present} - {a.uid for a in wanted}:
            self._attached.pop(uid, None)
        if not work.deleting:
            return
        after = await self.dp.observe()
        left = {(p.port, p.uid) for p in after.ports} | set(after.links)
        for ep in work.deleting:
            port, _, _ = naming.interfaces(ep)
            if (port, ep.uid) in left:
                result.retry = True
                continue
            try:
                await self.writer.remove_finalizer(ep)
            except kube.Conflict:
                result.retry = True

    async def report(self, work: Work, vtep: str, result: PassResult) -> None:
        """Step 9: vtep and Ready, written only when they differ from what the Endpoint shows."""

        async def one(item: tuple[Endpoint, Condition]) -> None:
            ep, found = item
            cond = found
            if self.fault is not None and found.reason == c.Reason.READY.value:
                cond = state.ready(*self.fault, ep.generation)
            # A plumbed endpoint keeps its VTEP through a datapath fault: peers keep sending.
            shown_vtep = vtep if found.reason == c.Reason.READY.value else None
            if state.status_is_current(ep, vtep=shown_vtep, cond=cond):
                return
            # The operator's NodeLost verdict (our Lease stood still, e.g. the API server did
            # not hear us) is answered at once: peers do not forward to us until we do.
            if self._recently(ep, shown_vtep, cond) and not state.node_lost(ep):
                return
            try:
                await self.writer.write_status(ep, vtep=shown_vtep, cond=cond)
                self._wrote(ep, shown_vtep, cond)
            except kube.ApiError as exc:
                log.info("status not written endpoint=%s error=%s", ep.key, exc)
                result.retry = True

        await each(work.conditions, one)

    async def report_invalid(self, result: PassResult) -> None:
        """Ready=False reason InvalidSpec on each local Endpoint whose last version does not
        parse, once per version (its last valid version, if any, stays plumbed)."""
        todo = [
            bad
            for bad in self.view.invalid_local()
            if self._invalid_shown.get(bad.uid) != bad.resource_version
        ]

        async def one(bad: Invalid) -> None:
            message = f"{self.node}: the agent cannot read this Endpoint: {bad.error}"
            cond = state.ready(c.Reason.INVALID_SPEC.value, message[:1024])
            try:
                await self.writer.write_invalid(bad, cond)
            except kube.ApiError as exc:
                log.info("invalid endpoint not reported endpoint=%s error=%s", bad.key, exc)
                result.retry = True
                return
            self._invalid_shown[bad.uid] = bad.resource_version

        await each(todo, one)
        if len(self._invalid_shown) > 1024:
            live = {bad.uid for bad in self.view.invalid_local()}
            self._invalid_shown = {k: v for k, v in self._invalid_shown.items() if k in live}
