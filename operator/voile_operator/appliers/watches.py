"""The operator's own watch caches: Endpoints, IPClaims and OverlayNetworks by list + watch
(``voile.informer``), on every replica from the moment it starts.

A standby keeps them warm, so that a new leader starts reconciling the moment it holds the Lease
instead of after an initial list of everything (kopf fills its indexes before it calls any
handler: more than 15 s for 2,000 Endpoints and their claims on a loaded machine, longer than a
leader lives in the chaos test). The caches keep only what reconciling reads: per Endpoint its
``EndpointRef`` (indexed by network), per IPClaim its ``IPClaimInfo`` (indexed by Endpoint uid and
by network), per network the parsed ``OverlayNetwork`` or why it is invalid. Each change is handed
on (``on_endpoint``, ``on_claim``, ``on_network``) with the raw object, which the reconciler keeps
only while the object waits to be reconciled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from voile import informer, kube
from voile.api import constants as c
from voile.api.model import OverlayNetwork, parse_overlay_network
from voile.errors import ValidationError
from voile_operator import metrics
from voile_operator.appliers.cache import EndpointRef
from voile_operator.planning.ipam import IPClaimInfo, parse_ip_claim

METRICS = informer.WatchMetrics(
    events=metrics.WATCH_EVENTS,
    invalid=metrics.INVALID_OBJECTS,
    restarts=metrics.WATCH_RESTARTS,
)

BY_NETWORK = "network"
BY_ENDPOINT = "endpoint"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_HEALTH_META = ("namespace", "name", "uid", "generation", "resourceVersion", "deletionTimestamp")


def _health_view(
    meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "metadata": {k: meta[k] for k in _HEALTH_META if k in meta},
        "spec": {k: spec[k] for k in ("network", "node") if k in spec},
        "status": {k: status[k] for k in ("conditions", "health") if k in status},
    }


def endpoint_ref(obj: informer.Obj) -> EndpointRef:
    """What the operator keeps of an Endpoint. Never refuses one: an invalid spec is the
    reconciler's to report (InvalidSpec), so it must reach the work queue."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return EndpointRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        allocated=bool(status.get("ip")),
        vni=_int(status.get("vni")),
        mtu=_int(status.get("mtu")),
        uid=str(meta.get("uid") or ""),
        network=str(spec.get("network") or ""),
        health_view=_health_view(meta, spec, status),
    )


def ip_claim(obj: informer.Obj) -> IPClaimInfo:
    claim = parse_ip_claim(obj)
    if claim is None:
        raise ValueError("not an IPClaim of Voile (no valid spec.ip)")
    return claim


def overlay_network(obj: informer.Obj) -> OverlayNetwork | str:
    """The parsed network, or why its spec is invalid (Endpoints report NetworkNotReady)."""
    try:
        return parse_overlay_network(obj)
    except ValidationError as exc:
        return str(exc)


Listener = Callable[[informer.Change[informer.T]], None]


class Watches:
    """The three informers. ``start`` at process start; ``wait_synced`` before the first
    reconcile (a half-filled claim cache would make a held address look free to its owner)."""

    def __init__(
        self,
        client: kube.KubeClient,
        *,
        on_endpoint: Listener[EndpointRef],
        on_claim: Listener[IPClaimInfo],
        on_network: Listener[OverlayNetwork | str],
        watch_timeout: int = 240,
    ) -> None:
        self.endpoints: informer.Informer[EndpointRef] = informer.Informer(
            client,
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS),
            parse=endpoint_ref,
            indexers={BY_NETWORK: lambda ref: (ref.network,)},
            on_event=on_endpoint,
            watch_timeout=watch_timeout,
            kind="endpoints",
            metrics=METRICS,
        )
        self.claims: informer.Informer[IPClaimInfo] = informer.Informer(
            client,
            kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS),
            parse=ip_claim,
            indexers={
                BY_ENDPOINT: lambda claim: (claim.endpoint_uid,),
                BY_NETWORK: lambda claim: (claim.network,),
            },
            on_event=on_claim,
            watch_timeout=watch_timeout,
            kind="ipclaims",
            metrics=METRICS,
        )
        self.networks: informer.Informer[OverlayNetwork | str] = informer.Informer(
            client,
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            parse=overlay_network,
            on_event=on_network,
            watch_timeout=watch_timeout,
            kind="networks",
            metrics=METRICS,
        )

    @property
    def all(self) -> tuple[informer.Informer[Any], ...]:
        return (self.endpoints, self.claims, self.networks)

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.all)

    def start(self) -> None:
        for one in self.all:
            one.start()

    async def stop(self) -> None:
        for one in self.all:
            await one.stop()

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.all))

    def count(self) -> None:
        """Refresh the cached-objects gauge."""
        for one in self.all:
            metrics.CACHED_OBJECTS.labels(one.kind).set(len(one.cache))
