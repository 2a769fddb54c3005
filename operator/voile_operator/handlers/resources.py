"""kopf handlers: indexes (watch caches), events into the reconciler, OverlayNetwork handlers.

Importing this module registers the handlers in kopf's default registry. The shared
``Reconciler`` is in ``memo.reconciler`` (set by main). Endpoints go through the reconciler's
work queue (its own retries, no kopf state on them); OverlayNetworks, a handful of objects, keep
kopf's change handlers, whose ``kopf.TemporaryError`` retries a VNI conflict until it clears.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from voile import kube
from voile.api import constants as c
from voile.api.model import parse_overlay_network
from voile.errors import ValidationError
from voile_operator import metrics
from voile_operator.appliers.cache import EndpointRef
from voile_operator.appliers.reconcile import Reconciler
from voile_operator.planning.ipam import IPClaimInfo, parse_ip_claim

G, V = c.GROUP, c.VERSION
VNI_RETRY_SECONDS = 5.0
_TRANSIENT_API = (kube.ApiError, OSError, TimeoutError)


def _reconciler(memo: Any, indexes: Mapping[str, Any]) -> Reconciler:
    rec: Reconciler = memo.reconciler
    rec.bind(indexes)
    return rec


def _delay(retry: int, cap: float = 8.0) -> float:
    return float(min(1 + retry, cap))


# -- indexes (in-memory views kopf keeps current from its watches) ---------------------------
# kopf fills every index from its initial list before it calls any other handler, so the
# reconciler never sees a half-loaded cache (which could look like an Endpoint holding no claim).
# Every handler here is async: kopf runs a sync one in a thread, and the reconciler's queue and
# caches belong to the event loop.


@kopf.index(G, V, c.OVERLAY_NETWORKS)
async def network_index(name: str, body: Mapping[str, Any], **_: Any) -> dict[str, object]:
    """name -> parsed OverlayNetwork (or the validation error): Endpoints resolve their network
    here instead of with one GET each."""
    try:
        return {name: parse_overlay_network(body)}
    except ValidationError as exc:
        return {name: str(exc)}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@kopf.index(G, V, c.ENDPOINTS)
async def endpoints_by_network(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    namespace: str | None,
    name: str,
    uid: str | None,
    **_: Any,
) -> dict[str, EndpointRef]:
    return {
        str(spec.get("network", "")): EndpointRef(
            namespace=namespace or "",
            name=name,
            allocated=bool(status.get("ip")),
            vni=_int(status.get("vni")),
            mtu=_int(status.get("mtu")),
            uid=str(uid or ""),
        )
    }


@kopf.index(G, V, c.IP_CLAIMS)
async def ipclaims_by_endpoint(body: Mapping[str, Any], **_: Any) -> dict[str, IPClaimInfo]:
    claim = parse_ip_claim(body)
    return {claim.endpoint_uid: claim} if claim else {}


@kopf.index(G, V, c.IP_CLAIMS)
async def ipclaims_by_network(body: Mapping[str, Any], **_: Any) -> dict[str, IPClaimInfo]:
    claim = parse_ip_claim(body)
    return {claim.network: claim} if claim else {}


# -- events: into the reconciler's caches and work queue (no kopf state on the objects) -------


@kopf.on.event(G, V, c.ENDPOINTS, id="endpoint-event")
async def endpoint_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **kw: Any
) -> None:
    """Endpoints are reconciled by the reconciler's work queue, not by kopf's change handlers:
    no progress or diff-base annotations to write, no kopf finalizer (ours is added by the
    worker). Every event only queues the Endpoint's key with its latest body."""
    _reconciler(memo, kw).endpoint_event(event.get("type"), body)


@kopf.on.event(G, V, c.IP_CLAIMS, id="claim-event")
async def claim_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **kw: Any
) -> None:
    _reconciler(memo, kw).claim_event(event.get("type"), body)


@kopf.on.event(G, V, c.OVERLAY_NETWORKS, id="network-event")
async def network_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **kw: Any
) -> None:
    _reconciler(memo, kw).network_event(event.get("type"), body)


# -- OverlayNetwork ------------------------------------------------------------------------


@kopf.on.resume(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.create(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.update(G, V, c.OVERLAY_NETWORKS, id="network", field="spec")
async def network(body: Mapping[str, Any], name: str, memo: Any, retry: int, **kwargs: Any) -> None:
    rec = _reconciler(memo, kwargs)
    started = time.monotonic()
    try:
        outcome = await rec.network(body, rec.endpoint_count(name))
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    finally:
        metrics.RECONCILE_SECONDS.labels("network").observe(time.monotonic() - started)
    if outcome.vni_reason in (c.Reason.VNI_CONFLICT, c.Reason.PENDING, c.Reason.VNI_EXHAUSTED):
        # retried until the VNI is free (status says why meanwhile)
        raise kopf.TemporaryError(outcome.vni_message, delay=VNI_RETRY_SECONDS)


@kopf.on.delete(G, V, c.OVERLAY_NETWORKS, id="network-release")
async def network_release(
    body: Mapping[str, Any], memo: Any, logger: kopf.Logger, retry: int, **kwargs: Any
) -> None:
    try:
        remaining = await _reconciler(memo, kwargs).network_deleted(body)
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    if remaining:
        raise kopf.TemporaryError(
            f"{c.Reason.ENDPOINTS_REMAIN.value}: {remaining} endpoint(s) still reference this "
            "network",
            delay=min(2 + retry, 5),
        )
    try:
        await _reconciler(memo, kwargs).drop_legacy_network_finalizer(body)
    except _TRANSIENT_API as exc:  # a Conflict too: kopf retries with the fresh object
        raise kopf.TemporaryError(f"finalizer: {exc}", delay=1) from exc
    logger.info("released the VNI of network %s", (body.get("metadata") or {}).get("name"))
