"""Address planning: which addresses of a network may be handed out, and which one is next.

Pure: the set of taken addresses comes in (from IPClaim objects, plus the allocator's in-flight
reservations), a decision comes out. Uniqueness itself is not decided here: the API server
enforces it, because an IPClaim's name is derived from (network, address) and names are unique.
This module only has to never *propose* an address that is not allowed (network, broadcast,
gateway, excluded, outside the CIDR), and to propose the lowest free one, so that allocations are
dense and predictable.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from voile import clock
from voile.api import constants as c
from voile.api.model import NetworkSpec


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Pool:
    """The allocatable addresses of one OverlayNetwork (derived from its spec)."""

    network: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    exclude: tuple[tuple[int, int], ...] = ()  # inclusive integer ranges

    @classmethod
    def from_spec(cls, network: str, spec: NetworkSpec) -> Pool:
        ranges = tuple(sorted((int(r.first), int(r.last)) for r in spec.exclude))
        return cls(network=network, cidr=spec.cidr, gateway=spec.gateway, exclude=ranges)

    @property
    def first_host(self) -> int:
        return int(self.cidr.network_address) + 1

    @property
    def last_host(self) -> int:
        return int(self.cidr.broadcast_address) - 1

    def is_excluded(self, ip: int) -> bool:
        return any(lo <= ip <= hi for lo, hi in self.exclude)

    def is_reserved(self, ip: int) -> bool:
        """Network, broadcast or gateway address: never handed to an Endpoint."""
        return ip in (int(self.cidr.network_address), int(self.cidr.broadcast_address)) or (
            self.gateway is not None and ip == int(self.gateway)
        )

    def allowed(self, ip: int) -> bool:
        return (
            self.first_host <= ip <= self.last_host
            and not self.is_reserved(ip)
            and not (self.is_excluded(ip))
        )

    @property
    def capacity(self) -> int:
        """How many addresses can be handed out (hosts minus gateway minus excluded)."""
        count = 0
        for low, high in _merge(self.exclude):
            lo, hi = max(low, self.first_host), min(high, self.last_host)
            if lo <= hi:
                count += hi - lo + 1
        gateway = 0
        if self.gateway is not None and not self.is_excluded(int(self.gateway)):
            gateway = 1
        return max(0, self.last_host - self.first_host + 1 - count - gateway)

    def classify_static(self, ip: ipaddress.IPv4Address) -> c.Reason | None:
        """Why a requested static address cannot be handed out, or None when it can (if free)."""
        value = int(ip)
        if ip not in self.cidr:
            return c.Reason.ADDRESS_OUTSIDE_CIDR
        if self.is_reserved(value):
            return c.Reason.ADDRESS_RESERVED
        if self.is_excluded(value):
            return c.Reason.ADDRESS_EXCLUDED
        return None

    def lowest_free(
        self, taken: Collection[int], *, start: int | None = None
    ) -> ipaddress.IPv4Address | None:
        """The lowest allowed address not in ``taken`` (at or above ``start``), or None if full.

        Skips whole excluded ranges at once, so a /16 with a large exclusion stays cheap.
        """
        ip = self.first_host if start is None else max(start, self.first_host)
        ranges = _merge(self.exclude)
        while ip <= self.last_host:
            skipped = False
            for lo, hi in ranges:
                if lo <= ip <= hi:
                    ip = hi + 1
                    skipped = True
                    break
            if skipped:
                continue
            if not self.is_reserved(ip) and ip not in taken:
                return ipaddress.IPv4Address(ip)
            ip += 1
        return None


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


# -- claims --------------------------------------------------------------------------------------


def ip_claim_name(network: str, ip: ipaddress.IPv4Address) -> str:
    """``<network>-<a>-<b>-<c>-<d>``: the name is the lock. At most 63 + 16 characters, a valid
    DNS subdomain because network names are DNS labels."""
    return f"{network}-{str(ip).replace('.', '-')}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class IPClaimInfo:
    """An IPClaim as the planner needs it."""

    name: str
    uid: str
    network: str
    ip: ipaddress.IPv4Address
    endpoint_namespace: str
    endpoint_name: str
    endpoint_uid: str
    created: datetime.datetime | None = None


def parse_ip_claim(obj: Mapping[str, Any]) -> IPClaimInfo | None:
    """An IPClaim from its API dict; None if it is not one of ours or is malformed."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    endpoint = spec.get("endpoint") or {}
    try:
        ip = ipaddress.IPv4Address(spec.get("ip"))
    except ValueError:
        return None
    return IPClaimInfo(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        network=str(spec.get("network", "")),
        ip=ip,
        endpoint_namespace=str(endpoint.get("namespace", "")),
        endpoint_name=str(endpoint.get("name", "")),
        endpoint_uid=str(endpoint.get("uid", "")),
        created=clock.parse_rfc3339(meta.get("creationTimestamp")),
    )


def ip_claim_body(
    network: str, ip: ipaddress.IPv4Address, *, namespace: str, name: str, uid: str
) -> dict[str, Any]:
    """The IPClaim object to create. No ownerReference: a cluster-scoped object cannot be owned
    by a namespaced one; ownership is spec.endpoint.uid plus the endpoint-uid label."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.IP_CLAIM,
        "metadata": {
            "name": ip_claim_name(network, ip),
            "labels": {
                c.LABEL_NETWORK: network,
                c.LABEL_ENDPOINT_UID: uid,
                c.LABEL_MANAGED_BY: c.MANAGED_BY,
            },
        },
        "spec": {
            "network": network,
            "ip": str(ip),
            "endpoint": {"namespace": namespace, "name": name, "uid": uid},
        },
    }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ExistingClaims:
    """What to do with the claims an Endpoint already holds (found by its uid label)."""

    keep: IPClaimInfo | None
    release: tuple[IPClaimInfo, ...] = ()


def plan_existing_claims(
    claims: Sequence[IPClaimInfo],
    *,
    network: str,
    status_ip: ipaddress.IPv4Address | None,
    requested_ip: ipaddress.IPv4Address | None,
) -> ExistingClaims:
    """Reuse what an Endpoint already holds after a crash, a restart or a race of two replicas.

    Keep the claim equal to the requested static address if there is one; else the one equal to
    status.ip (what the data path may already use); else the lowest. Release the others, and any
    claim in another network (the spec's network is immutable, so those are leftovers).
    """
    mine = [cl for cl in claims if cl.network == network]
    foreign = [cl for cl in claims if cl.network != network]
    keep: IPClaimInfo | None = None
    if requested_ip is not None:
        keep = next((cl for cl in mine if cl.ip == requested_ip), None)
    elif mine:
        keep = next((cl for cl in mine if cl.ip == status_ip), None) or min(
            mine, key=lambda cl: int(cl.ip)
        )
    release = tuple(
        sorted(
            (cl for cl in [*mine, *foreign] if keep is None or cl.name != keep.name),
            key=lambda cl: cl.name,
        )
    )
    return ExistingClaims(keep=keep, release=release)
