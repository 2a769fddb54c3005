"""Status by server-side apply on the status subresource (fieldManager voile-operator).

Apply, not merge-patch: the conditions list is a map keyed by ``type`` that the agent shares
(it owns the Endpoint's ``Ready``), and an apply touches only the entries this manager lists.
Idempotent: nothing is sent when the object already shows the desired status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voile import clock, kube
from voile.api import constants as c
from voile_operator.planning import status as plan

now_rfc3339 = clock.now_rfc3339


async def apply_endpoint_status(
    client: kube.KubeClient,
    *,
    namespace: str,
    name: str,
    existing: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Apply the operator's share of an Endpoint's status; the object as written, or None when
    nothing had to change (or it is gone)."""
    if not plan.needs_apply(existing, desired, plan.ENDPOINT_FIELDS):
        return None
    url = kube.path(
        c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name, subresource="status"
    )
    try:
        return await client.patch(
            url, plan.apply_document(c.ENDPOINT, name, namespace, desired), kind="apply"
        )
    except kube.NotFound:
        return None  # deleted meanwhile: nothing to report on


async def apply_network_status(
    client: kube.KubeClient,
    *,
    name: str,
    existing: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
) -> bool:
    """Apply the operator's share of an OverlayNetwork's status; False when unchanged."""
    if not plan.needs_apply(existing, desired, plan.NETWORK_FIELDS):
        return False
    url = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=name, subresource="status")
    try:
        await client.patch(
            url, plan.apply_document(c.OVERLAY_NETWORK, name, None, desired), kind="apply"
        )
    except kube.NotFound:
        return False
    return True
