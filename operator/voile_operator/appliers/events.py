"""Kubernetes Events posted outside kopf handlers (the waiter loop, the collector).

Inside handlers kopf posts Events (``kopf.event``, and the handler logger at WARNING and above);
code that runs in the leader's own tasks posts through here. Best effort: an Event that cannot be
posted is logged, never retried, and never fails the reconcile that produced it.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from voile import kube
from voile.api import constants as c

log = logging.getLogger(__name__)


async def post_event(
    client: kube.KubeClient,
    obj: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type_: str = "Normal",
    component: str = "voile-operator",
) -> None:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"voile-operator-{uuid.uuid4().hex[:12]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": c.API_VERSION,
            "kind": str(obj.get("kind") or c.ENDPOINT),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await client.create(f"/api/v1/namespaces/{namespace}/events", body)
    except (kube.ApiError, OSError, TimeoutError) as exc:
        log.debug("could not post event %s: %s", reason, exc)
