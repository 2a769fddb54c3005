"""The health aggregation loop (leader only): the agents' probe reports -> status.

Every ``interval`` s: one list of the agents' heartbeat Leases (one small object per node), and
the OverlayNetworks and Endpoints as the operator's watch caches hold them (``Sources``; lists
only without them); ``planning.health.plan_round`` decides; only what changed is applied, by
server-side apply under its own field manager (``voile-operator-health``), so it owns exactly
``status.health`` and the ``DataPathHealthy`` / ``MTUVerified`` conditions and never touches the
entries of the reconciler (``voile-operator``) or the agent. A failed list skips the round: no
status is written from a partial view. A write planned from a cache a few milliseconds behind the
previous round's own write repeats it identically (an apply that changes nothing); a NodeLost
write carries the cached resourceVersion, so a newer Endpoint refuses it (409) and the next round
decides again.

The same Lease list feeds the lost-node verdict (``planning.nodes``): each Lease's last change is
timed on this process's monotonic clock, only over healthy lists, and every live Endpoint of a
node whose Lease stood still longer than its duration gets ``Ready=Unknown NodeLost``, applied
under ``voile-operator-nodelost`` with the Endpoint's resourceVersion as precondition (the agent
owns Ready; when it reports again it takes the entry back).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from voile import clock, kube
from voile.api import constants as c
from voile_operator import metrics
from voile_operator.planning import health as plan
from voile_operator.planning import nodes as nodes_plan
from voile_operator.planning import status as status_plan

log = logging.getLogger(__name__)

# A server that closed the connection (aiohttp's ServerDisconnectedError is no OSError) must not
# end the loop: it also judges lost nodes.
_TRANSIENT = (kube.ApiError, kube.Unreachable, aiohttp.ClientError, OSError, TimeoutError)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Sources:
    """The OverlayNetworks and Endpoints (API-object shaped) from the watch caches."""

    networks: Callable[[], Iterable[Mapping[str, Any]]]
    endpoints: Callable[[], Iterable[Mapping[str, Any]]]


class HealthMonitor:
    def __init__(
        self,
        client: kube.KubeClient,
        *,
        namespace: str = c.DEFAULT_NAMESPACE,
        interval: float = 1.0,
        max_age: float = 35.0,
        sources: Sources | None = None,
    ) -> None:
        self.client = client
        self.sources = sources
        self.namespace = namespace
        self.interval = interval
        self.max_age = max_age
        self._gauged: set[str] = set()
        self._leases = nodes_plan.LeaseView()
        # Lists further apart than this are not one healthy run: the Leases get a fresh
        # duration from the next list (the API server was out of reach, or we were).
        self.max_gap = max(10.0, 5 * interval)

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except _TRANSIENT as exc:
                log.warning("health round failed error=%s", exc)
            await asyncio.sleep(self.interval)

    async def round(self) -> int:
        """One round; the number of status writes it made."""
        leases, _ = await self.client.list(
            kube.path("coordination.k8s.io", "v1", "leases", namespace=self.namespace)
        )
        seen_at = time.monotonic()
        self._leases = nodes_plan.observe(self._leases, leases, now=seen_at, max_gap=self.max_gap)
        networks, endpoints = await self._objects()
        written = await self._mark_lost(endpoints, seen_at)
        decided = plan.plan_round(
            networks=networks,
            endpoints=endpoints,
            leases=leases,
            now=clock.now(),
            max_age=self.max_age,
        )
        for network, count in decided.broken.items():
            metrics.BROKEN_PAIRS.labels(network).set(count)
        for gone in self._gauged - set(decided.broken):
            metrics.BROKEN_PAIRS.remove(gone)
        self._gauged = set(decided.broken)
        for write in decided.writes:
            await self._apply(write)
        return len(decided.writes) + written

    async def _objects(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        if self.sources is not None:
            return list(self.sources.networks()), list(self.sources.endpoints())
        networks, _ = await self.client.list(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS), managed_fields=False
        )
        endpoints, _ = await self.client.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS), managed_fields=False
        )
        return list(networks), list(endpoints)

    async def _mark_lost(self, endpoints: list[Mapping[str, Any]], seen_at: float) -> int:
        """``Ready=Unknown NodeLost`` on the Endpoints of lost nodes; the writes made."""
        lost = nodes_plan.lost(self._leases, now=seen_at)
        metrics.NODES_LOST.set(len(lost))
        writes = nodes_plan.node_lost_writes(
            endpoints, self._leases, now=seen_at, stamp=clock.now_rfc3339()
        )
        done = 0
        for write in writes:
            url = kube.path(
                c.GROUP,
                c.VERSION,
                c.ENDPOINTS,
                namespace=write.namespace,
                name=write.name,
                subresource="status",
            )
            try:
                await self.client.patch(
                    url, write.document, kind="apply", field_manager=nodes_plan.FIELD_MANAGER
                )
            except (kube.NotFound, kube.Conflict):
                continue  # deleted, or its agent (or anyone) wrote it meanwhile: next round
            done += 1
            log.info(
                "node lost node=%s endpoint=%s/%s %s",
                write.node,
                write.namespace,
                write.name,
                write.condition.message,
            )
        return done

    async def _apply(self, write: plan.StatusWrite) -> None:
        resource = c.OVERLAY_NETWORKS if write.kind == c.OVERLAY_NETWORK else c.ENDPOINTS
        url = kube.path(
            c.GROUP,
            c.VERSION,
            resource,
            namespace=write.namespace,
            name=write.name,
            subresource="status",
        )
        document = status_plan.apply_document(write.kind, write.name, write.namespace, write.status)
        try:
            await self.client.patch(url, document, kind="apply", field_manager=plan.FIELD_MANAGER)
        except kube.NotFound:
            return  # deleted meanwhile
        conds = {x["type"]: x["status"] for x in write.status["conditions"]}
        log.info(
            "data-path health kind=%s name=%s%s %s broken=%d",
            write.kind,
            f"{write.namespace}/" if write.namespace else "",
            write.name,
            " ".join(f"{k}={v}" for k, v in conds.items()),
            len(write.status["health"].get("brokenPairs") or ()),
        )
