"""observe -> plan -> apply for one Endpoint or one OverlayNetwork.

Handlers call these and translate the outcome into kopf's retry language. Each reconcile is
idempotent: rerunning it after a crash or a restart reuses the claims it finds (by uid label) and
applies status only when it differs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from voile import clock, kube
from voile.api import constants as c
from voile.api.model import Endpoint, OverlayNetwork, parse_endpoint, parse_overlay_network
from voile.errors import ValidationError
from voile_operator import metrics
from voile_operator.appliers import agents
from voile_operator.appliers.claims import Allocator, VNIAllocator
from voile_operator.appliers.events import post_event
from voile_operator.appliers.status import (
    apply_endpoint_status,
    apply_network_status,
    now_rfc3339,
)
from voile_operator.planning import agents as agent_plan
from voile_operator.planning import ipam
from voile_operator.planning import status as plan
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


class Reconciler:
    def __init__(self, client: kube.KubeClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.ips = Allocator(client, on_release=self.wake)
        self.vnis = VNIAllocator(client)
        # Endpoints without an address, per network: retried by ``run_waiters`` when something
        # changes in their network (a release, the network appearing or getting its VNI) and on
        # a slow sweep, instead of by kopf retries (each retry is an annotation write per object).
        self.waiting: dict[str, dict[tuple[str, str], str]] = collections.defaultdict(dict)
        self._dirty: set[str] = set()
        self._wakeup = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}

    def wake(self, network: str) -> None:
        """Retry the endpoints waiting in ``network`` soon (something there changed)."""
        if self.waiting.get(network):
            self._dirty.add(network)
            self._wakeup.set()

    def _track(self, key: tuple[str, str], network: str, outcome: plan.EndpointOutcome) -> None:
        for waiters in self.waiting.values():
            waiters.pop(key, None)
        if outcome.ip is None and outcome.reason is not c.Reason.INVALID_SPEC:
            self.waiting[network][key] = str(getattr(outcome.reason, "value", outcome.reason))

    def forget(self, namespace: str, name: str) -> None:
        for waiters in self.waiting.values():
            waiters.pop((namespace, name), None)

    async def run_waiters(self, *, sweep: float = 5.0, concurrency: int = 16) -> None:
        """Forever: retry waiting endpoints of woken networks at once, all of them every
        ``sweep`` seconds. Cancelled with leadership."""
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=sweep)
                woken = True
            self._wakeup.clear()
            networks = set(self._dirty) if woken else {n for n, w in self.waiting.items() if w}
            self._dirty.clear()
            await asyncio.gather(
                *(self._retry_network(n, concurrency) for n in sorted(networks)),
                return_exceptions=True,
            )

    async def _retry_network(self, network: str, concurrency: int) -> None:
        obj = await self.client.get(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=network))
        net: OverlayNetwork | str | None = None
        if obj is not None:
            try:
                net = parse_overlay_network(obj)
            except ValidationError as exc:
                net = str(exc)
        sem = asyncio.Semaphore(concurrency)

        async def one(key: tuple[str, str]) -> None:
            async with sem:
                body = await self.client.get(
                    kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=key[0], name=key[1])
                )
                if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                    self.forget(*key)
                    return
                try:
                    outcome = await self.endpoint(body, net)
                    if outcome.ip is not None:
                        await post_event(
                            self.client,
                            body,
                            reason=c.Reason.ALLOCATED.value,
                            message=f"allocated {outcome.ip} in network {network}",
                        )
                except (kube.ApiError, OSError, TimeoutError) as exc:
                    log.warning("retry of endpoint %s/%s failed: %s", *key, exc)

        await asyncio.gather(*(one(k) for k in list(self.waiting.get(network, {}))))

    # -- Endpoint ------------------------------------------------------------------------------

    async def endpoint(
        self, body: Body, network: OverlayNetwork | str | None
    ) -> plan.EndpointOutcome:
        """Allocate (or keep) the Endpoint's address and report it. ``network`` is the parsed
        network from the index, an error string if its spec is invalid, or None if absent.
        Serialised per Endpoint (kopf and the waiter loop may both get to it)."""
        uid = str((body.get("metadata") or {}).get("uid", ""))
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            return await self._endpoint(body, network)

    async def _endpoint(
        self, body: Body, network: OverlayNetwork | str | None
    ) -> plan.EndpointOutcome:
        meta = body.get("metadata") or {}
        existing = body.get("status") or {}
        try:
            ep = parse_endpoint(body)
        except ValidationError as exc:
            outcome = plan.EndpointOutcome(reason=c.Reason.INVALID_SPEC, message=str(exc))
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
        await self._report_endpoint(meta, existing, outcome, ep, net)
        self._track((ep.namespace, ep.name), ep.spec.network, outcome)
        if outcome.ip is None:
            metrics.ALLOCATION_FAILURES.labels(str(getattr(outcome.reason, "value", ""))).inc()
        return outcome

    async def _report_endpoint(
        self,
        meta: Body,
        existing: Body,
        outcome: plan.EndpointOutcome,
        ep: Endpoint | None,
        net: OverlayNetwork | None,
    ) -> bool:
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
        self._locks.pop(str(meta.get("uid", "")), None)  # the Endpoint is going away
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

    async def network(self, body: Body, endpoints: int) -> plan.NetworkOutcome:
        """Hold the network's VNI, compute MTU and counts, and report them. Idempotent."""
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
        async with self.vnis.lock(net.name):
            vni = await self.vnis.ensure(net)
        if vni.reason is c.Reason.VNI_CONFLICT:
            metrics.VNI_CONFLICTS.inc()
        claims = await self.ips.network_claims(net.name)
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
            changed = existing.get("mtu") not in (None, outcome.mtu) or existing.get("vni") not in (
                None,
                outcome.vni,
            )
            if changed:  # e.g. spec.mtu edited: every endpoint's status carries the new value
                await self._refresh_endpoints(
                    dataclasses.replace(net, vni=outcome.vni, mtu=outcome.mtu)
                )
        return outcome

    async def _refresh_endpoints(self, net: OverlayNetwork) -> None:
        """Re-reconcile the endpoints of a network whose VNI or MTU changed. Idempotent."""
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
        items, _ = await self.client.list(url, field_selector=f"spec.network={net.name}")
        for body in items:
            if not (body.get("metadata") or {}).get("deletionTimestamp"):
                await self.endpoint(body, net)
        log.info(
            "network=%s vni=%s mtu=%s: refreshed %d endpoint(s)",
            net.name,
            net.vni,
            net.mtu,
            len(items),
        )

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
