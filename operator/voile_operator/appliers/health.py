"""The health aggregation loop (leader only): the agents' probe reports -> status.

Every ``interval`` s: one list each of the agents' heartbeat Leases, the OverlayNetworks and the
Endpoints; ``planning.health.plan_round`` decides; only what changed is applied, by server-side
apply under its own field manager (``voile-operator-health``), so it owns exactly
``status.health`` and the ``DataPathHealthy`` / ``MTUVerified`` conditions and never touches the
entries of the reconciler (``voile-operator``) or the agent. A failed list skips the round: no
status is written from a partial view.
"""

from __future__ import annotations

import asyncio
import logging

from voile import clock, kube
from voile.api import constants as c
from voile_operator import metrics
from voile_operator.planning import health as plan
from voile_operator.planning import status as status_plan

log = logging.getLogger(__name__)

_TRANSIENT = (kube.ApiError, OSError, TimeoutError)


class HealthMonitor:
    def __init__(
        self,
        client: kube.KubeClient,
        *,
        namespace: str = c.DEFAULT_NAMESPACE,
        interval: float = 1.0,
        max_age: float = 35.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.interval = interval
        self.max_age = max_age
        self._gauged: set[str] = set()

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
        networks, _ = await self.client.list(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS))
        endpoints, _ = await self.client.list(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS))
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
        return len(decided.writes)

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
