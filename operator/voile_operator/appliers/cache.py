"""The operator's watch caches: what it knows without asking the API server again.

``ClaimView`` answers "which IPClaims does this Endpoint hold" and "which addresses of this
network are taken" from kopf's indexes of IPClaims (kept current by one watch), plus an overlay of
what this process itself created or deleted in the last minute, because its own writes reach the
index a few milliseconds later than the next reconcile may look. Uniqueness never depends on this
view: the API server refuses a second claim of one address (the claim's name is the lock), and a
stale view only costs a 409 and another candidate.

``BodyStore`` holds the latest body of each Endpoint that waits to be reconciled, ordered by
resourceVersion, so that an event older than what the operator already wrote (its own finalizer
patch arriving after its status apply's response) never causes a second write.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from voile_operator.planning.ipam import IPClaimInfo

OVERLAY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointRef:
    """What the Endpoint index keeps per Endpoint: enough to count and to find stale ones."""

    namespace: str
    name: str
    allocated: bool
    vni: int | None
    mtu: int | None
    uid: str = ""
    network: str = ""
    # What the health loop reads of it (metadata, spec.network/node, status.conditions/health),
    # in the shape of the API object: it plans from the cache instead of listing every second.
    health_view: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


# kopf.Index: key -> a collection of values (one per object that produced the key).
Index = Mapping[str, Iterable[object]]


def _claims(index: Index | None, key: str) -> list[IPClaimInfo]:
    if index is None:
        return []
    store = index.get(key)
    return [v for v in store or () if isinstance(v, IPClaimInfo)]


class ClaimView:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.by_endpoint: Index | None = None
        self.by_network: Index | None = None
        self._created: dict[str, IPClaimInfo] = {}  # claim uid -> claim
        self._deleted: set[str] = set()  # claim uids
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()

    def bind(self, by_endpoint: Index, by_network: Index) -> None:
        self.by_endpoint, self.by_network = by_endpoint, by_network

    @property
    def bound(self) -> bool:
        return self.by_endpoint is not None and self.by_network is not None

    def _prune(self) -> None:
        limit = self._clock() - OVERLAY_SECONDS
        while self._expiry and self._expiry[0][0] < limit:
            _, uid = self._expiry.popleft()
            self._created.pop(uid, None)
            self._deleted.discard(uid)

    def created(self, claim: IPClaimInfo) -> None:
        """A claim this process created or read (so it is seen before its watch event)."""
        self._prune()
        self._created[claim.uid] = claim
        self._deleted.discard(claim.uid)
        self._expiry.append((self._clock(), claim.uid))

    def deleted(self, claim: IPClaimInfo) -> None:
        self._prune()
        self._created.pop(claim.uid, None)
        self._deleted.add(claim.uid)
        self._expiry.append((self._clock(), claim.uid))

    def _merge(self, indexed: list[IPClaimInfo], extra: Iterable[IPClaimInfo]) -> list[IPClaimInfo]:
        seen: dict[str, IPClaimInfo] = {}
        for claim in [*indexed, *extra]:
            if claim.uid not in self._deleted:
                seen.setdefault(claim.uid, claim)
        return sorted(seen.values(), key=lambda cl: cl.name)

    def of_endpoint(self, uid: str) -> list[IPClaimInfo]:
        self._prune()
        extra = (cl for cl in self._created.values() if cl.endpoint_uid == uid)
        return self._merge(_claims(self.by_endpoint, uid), extra)

    def of_network(self, network: str) -> list[IPClaimInfo]:
        self._prune()
        extra = (cl for cl in self._created.values() if cl.network == network)
        return self._merge(_claims(self.by_network, network), extra)

    def taken(self, network: str) -> set[int]:
        return {int(cl.ip) for cl in self.of_network(network)}


def resource_version(body: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as a number (etcd's revision), or None if it is not one."""
    value = str((body.get("metadata") or {}).get("resourceVersion", ""))
    return int(value) if value.isdigit() else None


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of what reconciling needs (no managedFields: most of an object's bytes)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    out = {k: body[k] for k in ("apiVersion", "kind", "spec", "status") if k in body}
    out["metadata"] = meta
    return out


class BodyStore:
    """Latest bodies by key, newest resourceVersion wins; bodies are dropped once reconciled."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self._versions: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def offer(self, key: tuple[str, str], body: Mapping[str, Any]) -> bool:
        """Keep ``body`` if it is newer than anything seen for ``key``; True when kept."""
        version = resource_version(body)
        known = self._versions.get(key)
        if version is not None and known is not None and version <= known:
            return False
        if version is not None:
            self._versions[key] = version
        self._bodies[key] = slim(body)
        return True

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return self._bodies.get(key)

    def done(self, key: tuple[str, str]) -> None:
        """Reconciled: drop the body, remember its version (a late older event is ignored)."""
        self._bodies.pop(key, None)

    def drop(self, key: tuple[str, str]) -> None:
        """The object is gone."""
        self._bodies.pop(key, None)
        self._versions.pop(key, None)
