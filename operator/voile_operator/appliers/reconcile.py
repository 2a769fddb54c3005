"""observe -> plan -> apply for one Endpoint or one OverlayNetwork.

Endpoints: the operator's own watches (``watches.Watches``, warm on standby replicas too) feed a
work queue (``queue.WorkQueue``), whose workers reconcile one Endpoint at a time each, from the
latest body and the watch caches (``cache``): no list, no kopf state on the object. Networks
(few) keep kopf's handlers. Each reconcile is idempotent:
rerunning it after a crash or a restart reuses the claims it finds (by the Endpoint's uid) and
applies status only when it differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from voile import clock, kube
from voile.api import constants as c
from voile.api.model import Endpoint, OverlayNetwork, parse_endpoint, parse_overlay_network
from voile.errors import ValidationError
from voile.informer import Change, object_key
from voile_operator import metrics
from voile_operator.appliers import agents
from voile_operator.appliers.cache import BodyStore, ClaimView, EndpointRef, slim
from voile_operator.appliers.claims import Allocator, VNIAllocator, VNIResult
from voile_operator.appliers.collector import ClaimCache
from voile_operator.appliers.events import post_event
from voile_operator.appliers.health import Sources
from voile_operator.appliers.queue import WorkQueue
from voile_operator.appliers.status import (
    apply_endpoint_status,
    apply_network_status,
    now_rfc3339,
)
from voile_operator.appliers.watches import BY_ENDPOINT, BY_NETWORK, Watches
from voile_operator.planning import agents as agent_plan
from voile_operator.planning import ipam
from voile_operator.planning import status as plan
from voile_operator.planning.ipam import IPClaimInfo
from voile_operator.planning.vni import mtu_for

log = logging.getLogger(__name__)

Body = Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    namespace: str = c.DEFAULT_NAMESPACE
    underlay_mtu: int = c.DEFAULT_UNDERLAY_MTU
    agent_dead_after: float = 300.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DeletionStep:
    """What an Endpoint deletion is waiting for (``done`` when the claim is released)."""

    done: bool
    message: str = ""
    agent_gone: bool = False


Key = tuple[str, str]  # (namespace, name) of an Endpoint
WAITING_SWEEP = 30.0  # an Endpoint waiting for an address is also retried this often
_TRANSIENT = (kube.ApiError, OSError, TimeoutError)


class _Gone(Exception):
    """The Endpoint was deleted (or re-created) while it was being reconciled."""


class Reconciler:
    """The operator's state: watch caches, the Endpoint work queue, the waiting Endpoints.

    Its watches feed it (``watches``: started with the process, on every replica); the queue's
    workers (started with leadership) reconcile one Endpoint at a time each (``process``).
    Nothing here lists the world in a loop: a network's change re-queues only the Endpoints that
    show a different VNI or MTU, and a release wakes only the Endpoints waiting in that network.
    """

    def __init__(self, client: kube.KubeClient, settings: Settings, *, workers: int = 64) -> None:
        self.client = client
        self.settings = settings
        self.watches = Watches(
            client,
            on_endpoint=self._endpoint_changed,
            on_claim=self._claim_changed,
            on_network=self._network_changed_event,
        )
        self.claims = ClaimView()
        self.claims.bind(
            self.watches.claims.cache.index(BY_ENDPOINT),
            self.watches.claims.cache.index(BY_NETWORK),
        )
        self.ips = Allocator(client, self.claims, on_release=self.wake)
        self.vnis = VNIAllocator(client)
        self.bodies = BodyStore()
        self.queue: WorkQueue[Key] = WorkQueue(self.process, workers=workers)
        self.network_bodies: dict[str, dict[str, Any]] = {}
        # Endpoints without an address, per network: re-queued when something changes in their
        # network (a release, the network appearing or getting its VNI), else every sweep.
        self.waiting: dict[str, set[Key]] = {}
        self._failures: dict[Key, int] = {}
        self._dirty_networks: set[str] = set()
        self._network_wakeup = asyncio.Event()

    @property
    def synced(self) -> bool:
        """The watch caches hold their first complete lists."""
        return self.watches.synced

    # -- what the watches say ---------------------------------------------------------------

    def _endpoint_changed(self, change: Change[EndpointRef]) -> None:
        """Every change of an Endpoint queues its key with its latest body: on a standby too,
        whose queue starts with leadership (then each Endpoint is checked once, those waiting
        for an address or a release first)."""
        ref = change.new or change.old
        namespace, _, name = change.key.partition("/")
        key = (namespace, name)
        self._network_changed(ref.network if ref else "")
        if change.kind == "DELETED":
            self.bodies.drop(key)
            self.queue.forget(key)
            self.forget(*key)
            return
        body = change.obj or {}
        if self.bodies.offer(key, body):
            meta = body.get("metadata") or {}
            urgent = bool(meta.get("deletionTimestamp")) or not (ref and ref.allocated)
            self.queue.add(key, urgent=urgent)

    def _claim_changed(self, change: Change[IPClaimInfo]) -> None:
        claim = change.new or change.old
        network = claim.network if claim else ""
        self._network_changed(network)
        if change.kind == "DELETED":
            self.wake(network)  # someone may wait for this address (or for any address)

    def _network_changed_event(self, change: Change[OverlayNetwork | str]) -> None:
        name = change.key.partition("/")[2]
        if change.kind == "DELETED":
            self.network_bodies.pop(name, None)
            self.vnis.forget(name)
        elif change.obj is not None:
            self.network_bodies[name] = slim(change.obj)
        self.wake(name)

    def wake(self, network: str) -> None:
        """Re-queue the endpoints waiting in ``network`` (something there changed)."""
        for key in self.waiting.get(network, ()):
            self.queue.add(key)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._failures.pop(key, None)
        for network in [n for n, keys in self.waiting.items() if key in keys]:
            self.waiting[network].discard(key)
            if not self.waiting[network]:
                del self.waiting[network]

    def _track(self, key: Key, network: str, outcome: plan.EndpointOutcome) -> None:
        self.forget(*key)
        if outcome.ip is None and outcome.reason is not c.Reason.INVALID_SPEC:
            self.waiting.setdefault(network, set()).add(key)

    def _network_changed(self, network: str) -> None:
        if network:
            self._dirty_networks.add(network)
            self._network_wakeup.set()

    def network_of(self, name: str) -> OverlayNetwork | str | None:
        return self.watches.networks.cache.get(object_key(None, name))

    def claim_cache(self) -> ClaimCache:
        """What the claim collector's cached rounds read: these caches, instead of lists."""

        def ip_claims() -> list[ipam.IPClaimInfo]:
            return self.watches.claims.items()

        def owner_uids() -> set[str]:
            uids = {ref.uid for ref in self.watches.endpoints.items()}
            uids.update(
                net.uid for net in self.watches.networks.items() if isinstance(net, OverlayNetwork)
            )
            return uids

        return ClaimCache(ip_claims=ip_claims, owner_uids=owner_uids, ready=lambda: self.synced)

    def health_sources(self) -> Sources:
        """What the health loop reads instead of listing: these caches."""
        return Sources(
            networks=lambda: list(self.network_bodies.values()),
            endpoints=lambda: [ref.health_view for ref in self.watches.endpoints.items()],
        )

    def endpoint_count(self, network: str) -> int:
        return len(self.watches.endpoints.cache.by(BY_NETWORK, network))

    # -- the queue's worker -------------------------------------------------------------------

    async def process(self, key: Key) -> float | None:
        """Reconcile one Endpoint from its latest body; None when done, or seconds until the
        next try. Never raises for API errors: it backs off per key."""
        started = time.monotonic()
        try:
            delay = await self._process(key)
            self._failures.pop(key, None)
        except _TRANSIENT as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = float(min(2 ** (failures - 1), 16))
            log.warning("endpoint %s/%s: API error, retrying in %.0f s: %s", *key, delay, exc)
        finally:
            took = time.monotonic() - started
            metrics.RECONCILE_SECONDS.labels("endpoint").observe(took)
            if took > 0.5:
                log.info("endpoint %s/%s reconciled in %.2f s", *key, took)
        if delay is None and not self.queue.pending(key):
            self.bodies.done(key)
        return delay

    async def _process(self, key: Key) -> float | None:
        body: Body | None = self.bodies.get(key)
        if body is None:  # re-queued without an event (a sweep, a network change): read it
            body = await self.client.get(
                kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=key[0], name=key[1])
            )
            if body is None:
                self.forget(*key)
                return None
            self.bodies.offer(key, body)
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return await self._deleting(key, body)
        gate = None
        if c.OPERATOR_FINALIZER not in (meta.get("finalizers") or ()):
            # in parallel with the claim (one round trip less), awaited before the report
            gate = asyncio.ensure_future(self._add_finalizer(body))
        network = str((body.get("spec") or {}).get("network", ""))
        try:
            outcome = await self._endpoint(body, self.network_of(network), gate=gate)
        except _Gone:
            return None  # deleted meanwhile: its deletion event brings it back
        finally:
            if gate is not None and not gate.done():
                gate.cancel()
        if outcome.ip is not None:
            return None
        if outcome.reason is c.Reason.INVALID_SPEC:
            return None
        if outcome.reason is c.Reason.WAITING_FOR_ALLOCATION:
            return 1.0
        log.info("endpoint %s/%s waits: %s", *key, outcome.message)
        return WAITING_SWEEP

    async def _add_finalizer(self, body: Body) -> dict[str, Any] | None:
        """Add ``voile.dev/operator`` before anything is claimed, so that a deletion waits for
        the release. By server-side apply: ``metadata.finalizers`` is a set there, so the entry
        is ours alone and the agent adding its own at the same moment is no conflict (a merge
        patch guarded by resourceVersion lost that race about every other time)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name)
        document = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(meta.get("uid", "")),  # this incarnation only
                "finalizers": [c.OPERATOR_FINALIZER],
            },
        }
        try:
            return await self.client.patch(url, document, kind="apply")
        except (kube.NotFound, kube.Conflict, kube.Invalid):
            return None  # gone (an apply would create it, but without spec the schema refuses)

    async def _remove_finalizer(self, body: Body) -> bool:
        meta = body.get("metadata") or {}
        url = kube.path(
            c.GROUP,
            c.VERSION,
            c.ENDPOINTS,
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
        )
        remaining = [f for f in meta.get("finalizers") or () if f != c.OPERATOR_FINALIZER]
        patch = {
            "metadata": {
                "finalizers": remaining,
                "resourceVersion": str(meta.get("resourceVersion", "")),
            }
        }
        try:
            await self.client.patch(url, patch, kind="merge")
        except kube.NotFound:
            return True
        except kube.Conflict:
            return False
        return True

    async def _deleting(self, key: Key, body: Body) -> float | None:
        meta = body.get("metadata") or {}
        self.forget(*key)
        if c.OPERATOR_FINALIZER not in (meta.get("finalizers") or ()):
            return None  # not ours (never allocated by us, or already released)
        started = time.monotonic()
        try:
            step = await self.endpoint_deleted(body)
        finally:
            metrics.RECONCILE_SECONDS.labels("release").observe(time.monotonic() - started)
        if step.agent_gone:
            await post_event(
                self.client,
                body,
                reason=c.Reason.AGENT_GONE.value,
                message=f"removed finalizer {c.AGENT_FINALIZER}: {step.message}",
                type_="Warning",
            )
            return 0.5  # the finalizer list changed: finish with the next body
        if not step.done:
            return 2.0
        if not await self._remove_finalizer(body):
            return 0.5  # changed meanwhile (the agent's finalizer went): with the next body
        log.debug("endpoint %s/%s: %s", *key, step.message)
        return None

    # -- Endpoint ------------------------------------------------------------------------------

    async def endpoint(
        self, body: Body, network: OverlayNetwork | str | None
    ) -> plan.EndpointOutcome:
        """Allocate (or keep) the Endpoint's address and report it. ``network`` is the parsed
        network from the index, an error string if its spec is invalid, or None if absent.
        Serialised per Endpoint by the work queue."""
        return await self._endpoint(body, network)

    async def _passed(self, gate: asyncio.Future[dict[str, Any] | None] | None, uid: str) -> None:
        """Wait for the finalizer; if the Endpoint went meanwhile, release what was claimed for
        it and raise ``_Gone``."""
        if gate is None:
            return
        added = await gate
        if added is None:
            await self.ips.release_endpoint(uid)
            raise _Gone(uid)
        meta = added.get("metadata") or {}
        self.bodies.offer((str(meta.get("namespace")), str(meta.get("name"))), added)

    async def _endpoint(
        self,
        body: Body,
        network: OverlayNetwork | str | None,
        *,
        gate: asyncio.Future[dict[str, Any] | None] | None = None,
    ) -> plan.EndpointOutcome:
        meta = body.get("metadata") or {}
        existing = body.get("status") or {}
        try:
            ep = parse_endpoint(body)
        except ValidationError as exc:
            outcome = plan.EndpointOutcome(reason=c.Reason.INVALID_SPEC, message=str(exc))
            await self._passed(gate, str(meta.get("uid", "")))
            await self._report_endpoint(meta, existing, outcome, None, None)
            return outcome
        net = network if isinstance(network, OverlayNetwork) else None
        if network is None:
            outcome = plan.EndpointOutcome(
                reason=c.Reason.NETWORK_NOT_FOUND,
                message=f"OverlayNetwork {ep.spec.network} does not exist (yet)",
            )
        elif isinstance(network, str):
            outcome = plan.EndpointOutcome(
                reason=c.Reason.NETWORK_NOT_READY,
                message=f"OverlayNetwork {ep.spec.network} is invalid: {network}",
            )
        elif network.vni is None:
            outcome = plan.EndpointOutcome(
                reason=c.Reason.NETWORK_NOT_READY,
                message=f"OverlayNetwork {ep.spec.network} has no VNI yet (see its conditions)",
            )
        elif network.deleting and ep.status.ip is None:
            outcome = plan.EndpointOutcome(
                reason=c.Reason.NETWORK_DELETING,
                message=f"OverlayNetwork {ep.spec.network} is being deleted",
            )
        else:
            outcome = await self.ips.allocate(ep, network)
        await self._passed(gate, ep.uid)
        written = await self._report_endpoint(meta, existing, outcome, ep, net)
        key = (ep.namespace, ep.name)
        if written is not None:
            self.bodies.offer(key, written)
        self._track(key, ep.spec.network, outcome)
        if outcome.ip is None:
            metrics.ALLOCATION_FAILURES.labels(str(getattr(outcome.reason, "value", ""))).inc()
        elif ep.status.ip is not None and ep.status.ip != outcome.ip:
            # an address change is news (a first allocation is in the Allocated condition)
            await post_event(
                self.client,
                {"kind": c.ENDPOINT, **dict(body)},
                reason=c.Reason.ALLOCATED.value,
                message=f"allocated {outcome.ip} in network {ep.spec.network} (was {ep.status.ip})",
            )
        return outcome

    async def _report_endpoint(
        self,
        meta: Body,
        existing: Body,
        outcome: plan.EndpointOutcome,
        ep: Endpoint | None,
        net: OverlayNetwork | None,
    ) -> dict[str, Any] | None:
        mtu = None
        if net is not None:
            mtu = net.mtu or mtu_for(net.spec.mtu, self.settings.underlay_mtu)
        desired = plan.endpoint_status(
            generation=int(meta.get("generation") or 0),
            outcome=outcome,
            spec_mac=ep.spec.mac if ep else None,
            network=net.spec if net else None,
            vni=net.vni if net else None,
            mtu=mtu,
            existing=existing,
            now=now_rfc3339(),
        )
        return await apply_endpoint_status(
            self.client,
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            existing=existing,
            desired=desired,
        )

    async def endpoint_deleted(self, body: Body) -> DeletionStep:
        """Release the address once the node agent's finalizer is gone (or the agent is dead,
        then drop its finalizer first). Idempotent."""
        meta = body.get("metadata") or {}
        self.forget(str(meta.get("namespace")), str(meta.get("name")))
        finalizers = list(meta.get("finalizers") or [])
        uid = str(meta.get("uid", ""))
        node = str((body.get("spec") or {}).get("node", ""))
        if c.AGENT_FINALIZER in finalizers:
            lease = await agents.agent_lease(self.client, self.settings.namespace, node)
            gone = agent_plan.agent_gone(
                lease,
                deletion_requested=clock.parse_rfc3339(meta.get("deletionTimestamp")),
                now=datetime.datetime.now(datetime.UTC),
                dead_after=self.settings.agent_dead_after,
            )
            if not gone:
                return DeletionStep(
                    done=False, message=f"waiting for the agent of node {node} to unplumb"
                )
            await agents.remove_agent_finalizer(
                self.client,
                namespace=str(meta.get("namespace")),
                name=str(meta.get("name")),
                finalizers=finalizers,
                resource_version=str(meta.get("resourceVersion", "")),
            )
            released = await self.ips.release_endpoint(uid)
            return DeletionStep(
                done=True,
                agent_gone=True,
                message=f"agent of node {node} is gone; released {released}",
            )
        released = await self.ips.release_endpoint(uid)
        return DeletionStep(done=True, message=f"released {released} address claim(s)")

    # -- OverlayNetwork ------------------------------------------------------------------------

    async def network(
        self, body: Body, endpoints: int, *, ensure_vni: bool = True
    ) -> plan.NetworkOutcome:
        """Hold the network's VNI, compute MTU and counts, and report them. Idempotent.
        ``ensure_vni=False`` (the count refresh) trusts a VNI that status already shows."""
        meta = body.get("metadata") or {}
        existing = body.get("status") or {}
        gen = int(meta.get("generation") or 0)
        try:
            net = parse_overlay_network(body)
        except ValidationError as exc:
            outcome = plan.NetworkOutcome(
                vni=None,
                mtu=self.settings.underlay_mtu - 50,
                vni_reason=c.Reason.INVALID_SPEC,
                vni_message=str(exc),
            )
            await self._report_network(meta, existing, gen, outcome)
            return outcome
        if not ensure_vni and net.vni is not None and gen == existing.get("observedGeneration"):
            vni = VNIResult(vni=net.vni)
        else:
            async with self.vnis.lock(net.name):
                vni = await self.vnis.ensure(net)
        if vni.reason is c.Reason.VNI_CONFLICT:
            metrics.VNI_CONFLICTS.inc()
        claims = self.ips.network_claims(net.name)
        pool = ipam.Pool.from_spec(net.name, net.spec)
        allocated = sum(1 for cl in claims if pool.allowed(int(cl.ip)))
        metrics.POOL_ALLOCATED.labels(net.name).set(len(claims))
        metrics.POOL_CAPACITY.labels(net.name).set(pool.capacity)
        outcome = plan.NetworkOutcome(
            vni=vni.vni,
            mtu=mtu_for(net.spec.mtu, self.settings.underlay_mtu),
            vni_reason=vni.reason,
            vni_message=vni.message,
            endpoints=endpoints,
            allocated=allocated,
            capacity=pool.capacity,
        )
        if net.deleting and endpoints:
            outcome = dataclasses.replace(
                outcome,
                ready_reason=c.Reason.ENDPOINTS_REMAIN,
                ready_message=f"deletion waits for {endpoints} endpoint(s) of this network",
            )
        await self._report_network(meta, existing, gen, outcome)
        if outcome.vni_reason is None:
            self.wake(net.name)  # endpoints waiting for this network (to exist, or its VNI)
            self._refresh_endpoints(dataclasses.replace(net, vni=outcome.vni, mtu=outcome.mtu))
        return outcome

    def _refresh_endpoints(self, net: OverlayNetwork) -> int:
        """Re-queue the endpoints of a network whose status shows another VNI or MTU (e.g.
        spec.mtu edited), from the index: only those, and no list. Returns how many."""
        stale = [
            ref
            for ref in self.watches.endpoints.cache.by(BY_NETWORK, net.name)
            if ref.allocated and (ref.vni, ref.mtu) != (net.vni, net.mtu)
        ]
        for ref in stale:
            self.queue.add((ref.namespace, ref.name))
        if stale:
            log.info(
                "network=%s vni=%s mtu=%s: refreshing %d endpoint(s)",
                net.name,
                net.vni,
                net.mtu,
                len(stale),
            )
        return len(stale)

    async def run_network_counts(self, *, period: float = 2.0) -> None:
        """Forever: the counts in the status of networks whose endpoints or claims changed, at
        most once per ``period`` each (cancelled with leadership). From the caches: no list."""
        while True:
            await self._network_wakeup.wait()
            await asyncio.sleep(period)  # debounce: a burst becomes one status write
            self._network_wakeup.clear()
            dirty, self._dirty_networks = self._dirty_networks, set()
            for name in sorted(dirty):
                body = self.network_bodies.get(name)
                if body is None:
                    continue
                try:
                    await self.network(body, self.endpoint_count(name), ensure_vni=False)
                except _TRANSIENT as exc:
                    log.warning("network=%s: count refresh failed: %s", name, exc)
                    self._network_changed(name)

    async def _report_network(
        self, meta: Body, existing: Body, gen: int, outcome: plan.NetworkOutcome
    ) -> bool:
        desired = plan.network_status(
            generation=gen, outcome=outcome, existing=existing, now=now_rfc3339()
        )
        return await apply_network_status(
            self.client, name=str(meta.get("name")), existing=existing, desired=desired
        )

    async def endpoints_of(self, network: str) -> int:
        """How many Endpoints reference a network (quorum list across namespaces)."""
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
        try:
            items, _ = await self.client.list(url, field_selector=f"spec.network={network}")
        except kube.ApiError as exc:
            if exc.status != 400:
                raise
            items, _ = await self.client.list(url)  # CRD without selectableFields
        return sum(1 for i in items if (i.get("spec") or {}).get("network") == network)

    async def network_deleted(self, body: Body) -> int:
        """Release the VNI once no Endpoint references the network; return how many remain."""
        name = str((body.get("metadata") or {}).get("name"))
        remaining = await self.endpoints_of(name)
        if remaining:
            await self.network(body, remaining)  # Ready=False EndpointsRemain with the count
            return remaining
        try:
            net = parse_overlay_network(body)
        except ValidationError:
            return 0  # never valid, so it never held a VNI
        released = await self.vnis.release(net)
        log.info("network=%s deleted, released %d VNI claim(s)", name, released)
        return 0

    async def drop_legacy_network_finalizer(self, body: Body) -> bool:
        """Until issue 17, kopf's finalizer was ``voile.dev/operator`` on networks too; a network
        created then still carries it besides kopf's ``voile.dev/kopf``: drop it on deletion
        (guarded by resourceVersion). Idempotent: False when it is not there."""
        meta = body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        if c.OPERATOR_FINALIZER not in finalizers:
            return False
        url = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=str(meta.get("name")))
        patch = {
            "metadata": {
                "finalizers": [f for f in finalizers if f != c.OPERATOR_FINALIZER],
                "resourceVersion": str(meta.get("resourceVersion", "")),
            }
        }
        try:
            await self.client.patch(url, patch, kind="merge")
        except kube.NotFound:
            return False
        return True
