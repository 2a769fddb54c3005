"""IPClaim and VNIClaim objects: the API server's name uniqueness is the allocation lock.

Claim before report: an address appears in an Endpoint's status only after its IPClaim exists.
Creating a claim that exists answers 409; if the existing claim names our Endpoint's uid it is
ours (we crashed after creating it) and is reused, otherwise the address is taken. Every verb
here is idempotent.

Reads come from the operator's watch cache of IPClaims (``cache.ClaimView``), not from lists:
the addresses taken in a network and the claims an Endpoint holds cost no request. The addresses
in flight (being created right now) keep concurrent Endpoints of one network from all trying the
same candidate. A stale cache costs a 409 and the next candidate, never a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Callable

from voile import kube
from voile.api import constants as c
from voile.api.model import Endpoint, OverlayNetwork
from voile_operator import metrics
from voile_operator.appliers.cache import ClaimView
from voile_operator.planning import ipam, vni
from voile_operator.planning.status import EndpointOutcome

log = logging.getLogger(__name__)

IP_CLAIMS = kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)
VNI_CLAIMS = kube.path(c.GROUP, c.VERSION, c.VNI_CLAIMS)
MAX_ATTEMPTS = 64  # candidates tried per reconcile before giving up until the next retry


def ip_claim_path(name: str) -> str:
    return kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS, name=name)


def vni_claim_path(name: str) -> str:
    return kube.path(c.GROUP, c.VERSION, c.VNI_CLAIMS, name=name)


class Allocator:
    """Addresses for Endpoints, by IPClaim. One per operator process; reads come from the watch
    cache (``ClaimView``), writes go to the API server, which decides."""

    def __init__(
        self,
        client: kube.KubeClient,
        view: ClaimView,
        on_release: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.view = view
        self._inflight: dict[str, set[int]] = {}  # network -> candidates being created now
        self._on_release = on_release

    def network_claims(self, network: str) -> list[ipam.IPClaimInfo]:
        """Every IPClaim of a network, from the watch cache."""
        return self.view.of_network(network)

    def endpoint_claims(self, uid: str) -> list[ipam.IPClaimInfo]:
        """The claims of an Endpoint (by its uid), from the watch cache."""
        return self.view.of_endpoint(uid)

    async def release(self, claim: ipam.IPClaimInfo) -> bool:
        """Delete one claim, only that incarnation (uid precondition). Idempotent."""
        try:
            deleted = await self.client.delete(ip_claim_path(claim.name), uid=claim.uid)
        except kube.Conflict:
            return False  # re-created by someone else since: not ours to delete
        self.view.deleted(claim)
        if deleted:
            metrics.RELEASES.labels(claim.network).inc()
            if self._on_release is not None:
                self._on_release(claim.network)
            log.info("released claim=%s ip=%s", claim.name, claim.ip)
        return deleted

    async def release_endpoint(self, uid: str) -> int:
        """Release every claim of an Endpoint. Idempotent: 0 when none is left."""
        count = 0
        for claim in self.endpoint_claims(uid):
            count += int(await self.release(claim))
        return count

    async def _try_claim(
        self, network: str, ip: ipaddress.IPv4Address, ep: Endpoint
    ) -> ipam.IPClaimInfo | None:
        """Create the claim; the claim if it is ours (new or from before a crash), else None."""
        body = ipam.ip_claim_body(network, ip, namespace=ep.namespace, name=ep.name, uid=ep.uid)
        try:
            created = await self.client.create(IP_CLAIMS, body)
            metrics.ALLOCATIONS.labels(network).inc()
            claim = ipam.parse_ip_claim(created)
        except kube.Conflict:
            existing = await self.client.get(ip_claim_path(body["metadata"]["name"]))
            if existing is None:
                return None  # released between our create and get: try again next round
            claim = ipam.parse_ip_claim(existing)
            if claim is not None:
                self.view.created(claim)  # seen: the cache may not have it yet
            if claim is None or claim.endpoint_uid != ep.uid:
                return None
        if claim is not None:
            self.view.created(claim)
        return claim

    async def holder_of(self, network: str, ip: ipaddress.IPv4Address) -> str:
        name = ipam.ip_claim_name(network, ip)
        claim = next((cl for cl in self.network_claims(network) if cl.name == name), None)
        if claim is None:
            return "another endpoint"
        return f"endpoint {claim.endpoint_namespace}/{claim.endpoint_name}"

    async def allocate(self, ep: Endpoint, net: OverlayNetwork) -> EndpointOutcome:
        """Make sure the Endpoint holds exactly one claim in its network; return its address or
        why it has none. Idempotent: rerunning reuses what it holds."""
        pool = ipam.Pool.from_spec(net.name, net.spec)
        held = self.endpoint_claims(ep.uid)
        plan = ipam.plan_existing_claims(
            held, network=net.name, status_ip=ep.status.ip, requested_ip=ep.spec.ip
        )
        if plan.keep is not None:
            for extra in plan.release:
                await self.release(extra)
            return EndpointOutcome(ip=plan.keep.ip)
        if ep.spec.ip is not None:
            outcome = await self._allocate_static(ep, net, pool, ep.spec.ip)
        else:
            outcome = await self._allocate_dynamic(ep, net, pool)
        if outcome.ip is not None:
            for old in plan.release:  # claims of an earlier spec.ip: only once the new is held
                await self.release(old)
        return outcome

    async def _allocate_static(
        self, ep: Endpoint, net: OverlayNetwork, pool: ipam.Pool, ip: ipaddress.IPv4Address
    ) -> EndpointOutcome:
        reason = pool.classify_static(ip)
        if reason is not None:
            messages = {
                c.Reason.ADDRESS_OUTSIDE_CIDR: f"spec.ip {ip} is outside {net.spec.cidr}",
                c.Reason.ADDRESS_RESERVED: f"spec.ip {ip} is the network, broadcast or gateway "
                f"address of {net.spec.cidr}",
                c.Reason.ADDRESS_EXCLUDED: f"spec.ip {ip} is in spec.excludeIPs of network "
                f"{net.name}",
            }
            return EndpointOutcome(reason=reason, message=messages.get(reason, str(reason)))
        if await self._try_claim(net.name, ip, ep) is not None:
            return EndpointOutcome(ip=ip)
        holder = await self.holder_of(net.name, ip)
        return EndpointOutcome(
            reason=c.Reason.ADDRESS_TAKEN,
            message=f"spec.ip {ip} is held by {holder}; retried until it is released",
        )

    async def _allocate_dynamic(
        self, ep: Endpoint, net: OverlayNetwork, pool: ipam.Pool
    ) -> EndpointOutcome:
        previous = ep.status.ip
        # status shows an address but its claim is gone: take the same one back if free
        if (
            previous is not None
            and pool.classify_static(previous) is None
            and await self._try_claim(net.name, previous, ep) is not None
        ):
            return EndpointOutcome(ip=previous)
        inflight = self._inflight.setdefault(net.name, set())
        for _ in range(MAX_ATTEMPTS):
            # no await between choosing and reserving: concurrent reconciles never pick the same
            candidate = pool.lowest_free(self.view.taken(net.name) | inflight)
            if candidate is None:
                return EndpointOutcome(
                    reason=c.Reason.POOL_EXHAUSTED,
                    message=f"all {pool.capacity} addresses of {net.spec.cidr} are taken; "
                    "waiting for one to be released",
                )
            inflight.add(int(candidate))
            try:
                if await self._try_claim(net.name, candidate, ep) is not None:
                    return EndpointOutcome(ip=candidate)
            finally:
                inflight.discard(int(candidate))
                if not inflight:
                    self._inflight.pop(net.name, None)
                    inflight = self._inflight.setdefault(net.name, set())
        return EndpointOutcome(
            reason=c.Reason.WAITING_FOR_ALLOCATION,
            message=f"{MAX_ATTEMPTS} candidates were taken concurrently; retrying",
        )


# -- VNIs ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VNIResult:
    vni: int | None
    reason: c.Reason | None = None
    message: str = ""


class VNIAllocator:
    """VNIs for OverlayNetworks, by VNIClaim. Serialised per network in-process."""

    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, network: str) -> asyncio.Lock:
        return self._locks.setdefault(network, asyncio.Lock())

    def forget(self, network: str) -> None:
        """The network is gone: drop its lock (unless someone holds it)."""
        lock = self._locks.get(network)
        if lock is not None and not lock.locked():
            del self._locks[network]

    async def held(self, net: OverlayNetwork) -> list[vni.VNIClaimInfo]:
        items, _ = await self.client.list(
            VNI_CLAIMS, label_selector=f"{c.LABEL_NETWORK}={net.name}"
        )
        return [cl for cl in map(vni.parse_vni_claim, items) if cl and cl.network_uid == net.uid]

    async def _try_claim(self, number: int, net: OverlayNetwork) -> vni.VNIClaimInfo | None:
        body = vni.vni_claim_body(number, network=net.name, network_uid=net.uid)
        try:
            return vni.parse_vni_claim(await self.client.create(VNI_CLAIMS, body))
        except kube.Conflict:
            existing = await self.client.get(vni_claim_path(vni.vni_claim_name(number)))
            claim = vni.parse_vni_claim(existing) if existing else None
            if claim is not None and claim.network_uid == net.uid:
                return claim
            return None

    async def ensure(self, net: OverlayNetwork) -> VNIResult:
        """Hold exactly one VNIClaim for the network. Idempotent."""
        plan = vni.plan_vni(await self.held(net), requested=net.spec.vni, status_vni=net.vni)
        if plan.keep is not None:
            await self._release_all(plan.release)
            return VNIResult(vni=plan.keep.vni)
        if plan.want is not None:
            if await self._try_claim(plan.want, net) is None:
                existing = await self.client.get(vni_claim_path(vni.vni_claim_name(plan.want)))
                owner = ((existing or {}).get("spec") or {}).get("network", "another network")
                return VNIResult(
                    vni=None,
                    reason=c.Reason.VNI_CONFLICT,
                    message=f"VNI {plan.want} is held by network {owner}; retried until released",
                )
            await self._release_all(plan.release)
            return VNIResult(vni=plan.want)
        if net.vni is not None and await self._try_claim(net.vni, net) is not None:
            return VNIResult(vni=net.vni)  # keep what status (and the data path) already uses
        for _ in range(MAX_ATTEMPTS):
            items, _ = await self.client.list(VNI_CLAIMS)
            taken = {cl.vni for cl in map(vni.parse_vni_claim, items) if cl}
            candidate = vni.lowest_free_vni(taken)
            if candidate is None:
                return VNIResult(vni=None, reason=c.Reason.VNI_EXHAUSTED, message="no free VNI")
            if await self._try_claim(candidate, net) is not None:
                return VNIResult(vni=candidate)
        return VNIResult(vni=None, reason=c.Reason.PENDING, message="VNI candidates raced")

    async def _release_all(self, claims: tuple[vni.VNIClaimInfo, ...]) -> None:
        for claim in claims:
            with contextlib.suppress(kube.Conflict):
                await self.client.delete(vni_claim_path(claim.name), uid=claim.uid)

    async def release(self, net: OverlayNetwork) -> int:
        """Release every VNIClaim of the network (uid preconditions). Idempotent."""
        claims = tuple(await self.held(net))
        await self._release_all(claims)
        return len(claims)
