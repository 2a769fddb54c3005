"""kopf handlers: OverlayNetworks only.

Importing this module registers the handlers in kopf's default registry. The shared
``Reconciler`` is in ``memo.reconciler`` (set by main). Endpoints and IPClaims are not kopf's:
the reconciler's own watches (warm on standby replicas) feed its work queue (its own retries, no
kopf state on them). OverlayNetworks, a handful of objects, keep kopf's change handlers, whose
``kopf.TemporaryError`` retries a VNI conflict until it clears; kopf starts with leadership, and
its initial list is one object per network.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from voile import kube
from voile.api import constants as c
from voile_operator import metrics
from voile_operator.appliers.reconcile import Reconciler

G, V = c.GROUP, c.VERSION
VNI_RETRY_SECONDS = 5.0
_TRANSIENT_API = (kube.ApiError, OSError, TimeoutError)


def _reconciler(memo: Any) -> Reconciler:
    rec: Reconciler = memo.reconciler
    return rec


def _delay(retry: int, cap: float = 8.0) -> float:
    return float(min(1 + retry, cap))


# -- OverlayNetwork ------------------------------------------------------------------------


@kopf.on.resume(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.create(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.update(G, V, c.OVERLAY_NETWORKS, id="network", field="spec")
async def network(body: Mapping[str, Any], name: str, memo: Any, retry: int, **kwargs: Any) -> None:
    rec = _reconciler(memo)
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
        remaining = await _reconciler(memo).network_deleted(body)
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    if remaining:
        raise kopf.TemporaryError(
            f"{c.Reason.ENDPOINTS_REMAIN.value}: {remaining} endpoint(s) still reference this "
            "network",
            delay=min(2 + retry, 5),
        )
    try:
        await _reconciler(memo).drop_legacy_network_finalizer(body)
    except _TRANSIENT_API as exc:  # a Conflict too: kopf retries with the fresh object
        raise kopf.TemporaryError(f"finalizer: {exc}", delay=1) from exc
    logger.info("released the VNI of network %s", (body.get("metadata") or {}).get("name"))
