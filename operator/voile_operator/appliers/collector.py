"""The two-phase claim collector (run by the leader only); decisions in planning.collector.

A *full* round (the first after start-up, then every ``full_every``-th) lists every IPClaim and
VNIClaim first, then every Endpoint and OverlayNetwork, all completely (following continue
tokens). The other rounds are *cached*: IPClaims and the owners' uids come from the operator's
watch caches (``ClaimCache``), VNIClaims (one per network) from a list, and each claim the plan
would collect is confirmed by a GET of its owner by name (a quorum read) before it is deleted.
Any failure aborts the round and forgets the previous candidates; a failed GET confirms nothing.
Deletions carry the claim's uid as a precondition, so a claim re-created under the same name
since it was read is never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable

from voile import kube
from voile.api import constants as c
from voile_operator import metrics
from voile_operator.appliers.claims import IP_CLAIMS, VNI_CLAIMS, ip_claim_path, vni_claim_path
from voile_operator.planning import collector as plan
from voile_operator.planning import ipam, vni

log = logging.getLogger(__name__)

_TRANSIENT = (TimeoutError, kube.ApiError, OSError)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ClaimCache:
    """What the operator's watch caches know: every IPClaim, the uids of every Endpoint and
    OverlayNetwork, and whether those caches are filled yet."""

    ip_claims: Callable[[], Iterable[ipam.IPClaimInfo]]
    owner_uids: Callable[[], set[str]]
    ready: Callable[[], bool]


def _ip_ref(ipc: ipam.IPClaimInfo) -> plan.ClaimRef:
    return plan.ClaimRef(
        kind=c.IP_CLAIM,
        name=ipc.name,
        uid=ipc.uid,
        owner_uid=ipc.endpoint_uid,
        created=ipc.created,
        owner_namespace=ipc.endpoint_namespace,
        owner_name=ipc.endpoint_name,
    )


def _vni_ref(vc: vni.VNIClaimInfo) -> plan.ClaimRef:
    return plan.ClaimRef(
        kind=c.VNI_CLAIM,
        name=vc.name,
        uid=vc.uid,
        owner_uid=vc.network_uid,
        created=vc.created,
        owner_name=vc.network,
    )


class ClaimCollector:
    def __init__(
        self,
        client: kube.KubeClient,
        *,
        interval: float = 30.0,
        grace: float = 120.0,
        cache: ClaimCache | None = None,
        full_every: int = 10,
    ) -> None:
        self.client = client
        self.interval = interval
        self.grace = datetime.timedelta(seconds=grace)
        self.cache = cache
        self.full_every = full_every
        self.previous: frozenset[str] = frozenset()
        self.rounds = 0  # complete rounds so far (full or cached)

    async def _vni_refs(self) -> list[plan.ClaimRef]:
        items, _ = await self.client.list(VNI_CLAIMS, managed_fields=False)
        return [_vni_ref(vc) for vc in map(vni.parse_vni_claim, items) if vc is not None]

    async def _listed_refs(self) -> tuple[list[plan.ClaimRef], set[str]]:
        ip_items, _ = await self.client.list(IP_CLAIMS, managed_fields=False)
        vni_refs = await self._vni_refs()
        endpoints, _ = await self.client.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS), managed_fields=False
        )
        networks, _ = await self.client.list(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS), managed_fields=False
        )
        owners = {str((o.get("metadata") or {}).get("uid", "")) for o in [*endpoints, *networks]}
        refs = [_ip_ref(ipc) for ipc in map(ipam.parse_ip_claim, ip_items) if ipc is not None]
        owners.discard("")
        return [*refs, *vni_refs], owners

    async def _cached_refs(self, cache: ClaimCache) -> tuple[list[plan.ClaimRef], set[str]]:
        refs = [_ip_ref(ipc) for ipc in cache.ip_claims()]
        vni_refs = await self._vni_refs()
        owners = set(cache.owner_uids())
        owners.discard("")
        return [*refs, *vni_refs], owners

    async def _owner_uid(self, ref: plan.ClaimRef) -> str | None:
        """The uid of the claim's owner as etcd has it now; None when it does not exist.
        Raises on a failed read (which must confirm nothing)."""
        if ref.kind == c.IP_CLAIM:
            url = kube.path(
                c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ref.owner_namespace, name=ref.owner_name
            )
        else:
            url = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=ref.owner_name)
        owner = await self.client.get(url)
        return None if owner is None else str((owner.get("metadata") or {}).get("uid", ""))

    async def _confirmed(self, ref: plan.ClaimRef) -> bool:
        try:
            return plan.orphan_confirmed(ref, await self._owner_uid(ref))
        except _TRANSIENT as exc:
            log.warning("collector could not read the owner of %s: %s", ref.name, exc)
            return False

    async def run_round(self) -> list[plan.ClaimRef]:
        """One round; returns what it deleted. Idempotent."""
        cache = self.cache
        if cache is not None and (
            not cache.ready() or plan.full_round_due(self.rounds, self.full_every)
        ):
            cache = None  # this round lists everything
        cached = cache is not None
        try:
            if cache is not None:
                refs, owners = await self._cached_refs(cache)
            else:
                refs, owners = await self._listed_refs()
        except _TRANSIENT as exc:
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
        self.rounds += 1
        deleted: list[plan.ClaimRef] = []
        for ref in decision.collect:
            if cached and not await self._confirmed(ref):
                continue
            if await self._delete(ref):
                deleted.append(ref)
        metrics.COLLECTOR_ROUNDS.labels("complete").inc()
        return deleted

    async def _delete(self, ref: plan.ClaimRef) -> bool:
        url = ip_claim_path(ref.name) if ref.kind == c.IP_CLAIM else vni_claim_path(ref.name)
        try:
            if not await self.client.delete(url, uid=ref.uid):
                return False
        except kube.Conflict:
            return False  # another incarnation under that name: not this orphan
        except _TRANSIENT as exc:
            log.warning("collector could not delete %s: %s", ref.name, exc)
            return False
        metrics.CLAIMS_COLLECTED.labels(ref.kind).inc()
        log.info("collected orphaned %s %s (owner %s gone)", ref.kind, ref.name, ref.owner_uid)
        return True

    async def run(self) -> None:
        """Rounds forever, every ``interval`` seconds (cancelled when leadership ends)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.run_round()
