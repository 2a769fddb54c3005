"""The two-phase claim collector (run by the leader only); decisions in planning.collector.

One round lists every IPClaim and VNIClaim first, then every Endpoint and OverlayNetwork, all
completely (following continue tokens). Any failure aborts the round and forgets the previous
candidates. Deletions carry the claim's uid as a precondition, so a claim re-created under the
same name since the list is never touched.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

from voile import kube
from voile.api import constants as c
from voile_operator import metrics
from voile_operator.appliers.claims import IP_CLAIMS, VNI_CLAIMS, ip_claim_path, vni_claim_path
from voile_operator.planning import collector as plan
from voile_operator.planning import ipam, vni

log = logging.getLogger(__name__)


class ClaimCollector:
    def __init__(
        self, client: kube.KubeClient, *, interval: float = 30.0, grace: float = 120.0
    ) -> None:
        self.client = client
        self.interval = interval
        self.grace = datetime.timedelta(seconds=grace)
        self.previous: frozenset[str] = frozenset()

    async def _refs(self) -> tuple[list[plan.ClaimRef], set[str]]:
        ip_items, _ = await self.client.list(IP_CLAIMS)
        vni_items, _ = await self.client.list(VNI_CLAIMS)
        endpoints, _ = await self.client.list(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS))
        networks, _ = await self.client.list(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS))
        owners = {str((o.get("metadata") or {}).get("uid", "")) for o in [*endpoints, *networks]}
        refs: list[plan.ClaimRef] = []
        for item in ip_items:
            ipc = ipam.parse_ip_claim(item)
            if ipc is not None:
                refs.append(
                    plan.ClaimRef(
                        kind=c.IP_CLAIM,
                        name=ipc.name,
                        uid=ipc.uid,
                        owner_uid=ipc.endpoint_uid,
                        created=ipc.created,
                    )
                )
        for item in vni_items:
            vc = vni.parse_vni_claim(item)
            if vc is not None:
                refs.append(
                    plan.ClaimRef(
                        kind=c.VNI_CLAIM,
                        name=vc.name,
                        uid=vc.uid,
                        owner_uid=vc.network_uid,
                        created=vc.created,
                    )
                )
        owners.discard("")
        return refs, owners

    async def run_round(self) -> list[plan.ClaimRef]:
        """One round; returns what it deleted. Idempotent."""
        try:
            refs, owners = await self._refs()
        except (TimeoutError, kube.ApiError, OSError) as exc:
            self.previous = frozenset()
            metrics.COLLECTOR_ROUNDS.labels("aborted").inc()
            log.warning("collector round aborted (incomplete list): %s", exc)
            return []
        decision = plan.collector_round(
            refs,
            owners,
            self.previous,
            now=datetime.datetime.now(datetime.UTC),
            grace=self.grace,
        )
        self.previous = decision.candidates
        deleted: list[plan.ClaimRef] = []
        for ref in decision.collect:
            url = ip_claim_path(ref.name) if ref.kind == c.IP_CLAIM else vni_claim_path(ref.name)
            try:
                if await self.client.delete(url, uid=ref.uid):
                    deleted.append(ref)
                    metrics.CLAIMS_COLLECTED.labels(ref.kind).inc()
                    log.info(
                        "collected orphaned %s %s (owner %s gone)",
                        ref.kind,
                        ref.name,
                        ref.owner_uid,
                    )
            except kube.Conflict:
                pass
            except (TimeoutError, kube.ApiError, OSError) as exc:
                log.warning("collector could not delete %s: %s", ref.name, exc)
        metrics.COLLECTOR_ROUNDS.labels("complete").inc()
        return deleted

    async def run(self) -> None:
        """Rounds forever, every ``interval`` seconds (cancelled when leadership ends)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.run_round()
