"""kopf handlers for OverlayNetwork and Endpoint. Thin: parse, call one reconcile, translate.

Importing this module registers the handlers in kopf's default registry. The shared
``Reconciler`` is in ``memo.reconciler`` (set by main). Retries use ``kopf.TemporaryError`` with a
delay, so a missing network, a taken or excluded address, an exhausted pool and a VNI conflict
recover by themselves when the cause goes away, without a crash loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from voile import kube
from voile.api import constants as c
from voile.api.model import OverlayNetwork, parse_overlay_network
from voile.errors import ValidationError
from voile_operator import metrics
from voile_operator.appliers.reconcile import Reconciler

G, V = c.GROUP, c.VERSION
NETWORK_REFRESH_SECONDS = 5.0
_TRANSIENT_API = (kube.ApiError, OSError, TimeoutError)


def _reconciler(memo: Any) -> Reconciler:
    rec: Reconciler = memo.reconciler
    return rec


def _delay(retry: int, cap: float = 8.0) -> float:
    return float(min(1 + retry, cap))


# -- indexes (in-memory views kopf keeps current from its watches) ---------------------------


@kopf.index(G, V, c.OVERLAY_NETWORKS)
def network_index(name: str, body: Mapping[str, Any], **_: Any) -> dict[str, object]:
    """name -> parsed OverlayNetwork (or the validation error): Endpoints resolve their network
    here instead of with one GET each."""
    try:
        return {name: parse_overlay_network(body)}
    except ValidationError as exc:
        return {name: str(exc)}


@kopf.index(G, V, c.ENDPOINTS)
def endpoints_by_network(spec: Mapping[str, Any], uid: str, **_: Any) -> dict[str, str]:
    return {str(spec.get("network", "")): uid}


def _lookup(index: Mapping[str, Any], name: str) -> OverlayNetwork | str | None:
    store = index.get(name)
    if not store:
        return None
    value = next(iter(store), None)
    return value if isinstance(value, (OverlayNetwork, str)) else None


# -- Endpoint ------------------------------------------------------------------------------


@kopf.on.resume(G, V, c.ENDPOINTS, id="allocate")
@kopf.on.create(G, V, c.ENDPOINTS, id="allocate")
@kopf.on.update(G, V, c.ENDPOINTS, id="allocate", field="spec")
async def allocate(
    body: Mapping[str, Any],
    spec: Mapping[str, Any],
    memo: Any,
    logger: kopf.Logger,
    retry: int,
    **kwargs: Any,
) -> None:
    started = time.monotonic()
    network = _lookup(kwargs["network_index"], str(spec.get("network", "")))
    try:
        outcome = await _reconciler(memo).endpoint(body, network)
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    finally:
        metrics.RECONCILE_SECONDS.labels("endpoint").observe(time.monotonic() - started)
    if outcome.ip is None:
        reason = getattr(outcome.reason, "value", str(outcome.reason))
        if outcome.reason is c.Reason.INVALID_SPEC:
            raise kopf.PermanentError(f"{reason}: {outcome.message}")
        # Not a kopf retry: the reconciler's waiter loop retries it when its network changes
        # (a release, the network appearing) and on a sweep; the condition says why it waits.
        logger.warning("%s: %s", reason, outcome.message)
        return
    if str(outcome.ip) != (body.get("status") or {}).get("ip"):
        kopf.event(
            body,  # type: ignore[arg-type]
            type="Normal",
            reason=c.Reason.ALLOCATED.value,
            message=f"allocated {outcome.ip} in network {spec.get('network')}",
        )
    logger.debug("allocated ip=%s", outcome.ip)  # no return value: kopf would write it to status


@kopf.on.delete(G, V, c.ENDPOINTS, id="release")
async def release(
    body: Mapping[str, Any], memo: Any, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    started = time.monotonic()
    try:
        step = await _reconciler(memo).endpoint_deleted(body)
    except kube.Conflict as exc:
        raise kopf.TemporaryError("endpoint changed meanwhile; retrying", delay=1) from exc
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    finally:
        metrics.RECONCILE_SECONDS.labels("release").observe(time.monotonic() - started)
    if step.agent_gone:
        kopf.warn(
            body,  # type: ignore[arg-type]
            reason=c.Reason.AGENT_GONE.value,
            message=f"removed finalizer {c.AGENT_FINALIZER}: {step.message}",
        )
    if not step.done:
        raise kopf.TemporaryError(step.message, delay=min(2 + retry, 5))
    logger.debug("%s", step.message)


# -- OverlayNetwork ------------------------------------------------------------------------


async def _network(
    body: Mapping[str, Any],
    name: str,
    memo: Any,
    retry: int,
    endpoints_by_network: Mapping[str, Any],
) -> None:
    started = time.monotonic()
    count = len(endpoints_by_network.get(name) or ())
    try:
        await _reconciler(memo).network(body, count)
    except _TRANSIENT_API as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=_delay(retry)) from exc
    finally:
        metrics.RECONCILE_SECONDS.labels("network").observe(time.monotonic() - started)


@kopf.on.resume(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.create(G, V, c.OVERLAY_NETWORKS, id="network")
@kopf.on.update(G, V, c.OVERLAY_NETWORKS, id="network", field="spec")
async def network(body: Mapping[str, Any], name: str, memo: Any, retry: int, **kwargs: Any) -> None:
    await _network(body, name, memo, retry, kwargs["endpoints_by_network"])


@kopf.timer(
    G,
    V,
    c.OVERLAY_NETWORKS,
    id="refresh",
    interval=NETWORK_REFRESH_SECONDS,
    initial_delay=NETWORK_REFRESH_SECONDS,
)
async def refresh(body: Mapping[str, Any], name: str, memo: Any, **kwargs: Any) -> None:
    """Counts, pool gauges, and the retry of a VNI conflict, every few seconds."""
    await _network(body, name, memo, 0, kwargs["endpoints_by_network"])


@kopf.on.delete(G, V, c.OVERLAY_NETWORKS, id="network-release")
async def network_release(
    body: Mapping[str, Any], memo: Any, logger: kopf.Logger, retry: int, **_: Any
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
    logger.info("released the VNI of network %s", (body.get("metadata") or {}).get("name"))
