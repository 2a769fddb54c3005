"""The agent's writes to the Kubernetes API: its finalizer, its part of Endpoint status, and its
heartbeat Lease.

Status is written with server-side apply under the field manager ``voile-agent``: the agent owns
``status.vtep`` and the ``Ready`` entry of the conditions list-map, the operator owns the rest, and
neither can clobber the other. Finalizer changes carry a resourceVersion precondition so that
finalizers added concurrently by others are never lost (a conflict is retried on the next pass).
Every verb is idempotent.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from voile import kube
from voile.api import constants as c
from voile_agent.planning.state import Condition, previous_condition, status_is_current

log = logging.getLogger(__name__)

FIELD_MANAGER = "voile-agent"


def endpoint_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return kube.path(
        c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name, subresource=subresource
    )


def now_rfc3339(micro: bool = False) -> str:
    t = datetime.datetime.now(datetime.UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeWriter:
    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client

    async def add_finalizer(self, obj: Mapping[str, Any]) -> bool:
        """Add ``voile.dev/agent`` keeping every other finalizer. Idempotent; False if present."""
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if c.AGENT_FINALIZER in finalizers:
            return False
        body = {
            "metadata": {
                "finalizers": [*finalizers, c.AGENT_FINALIZER],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        await self.client.patch(endpoint_path(meta["namespace"], meta["name"]), body)
        log.info("finalizer added endpoint=%s/%s", meta["namespace"], meta["name"])
        return True

    async def remove_finalizer(self, obj: Mapping[str, Any]) -> bool:
        """Remove only ``voile.dev/agent``. Idempotent: False if absent or the object is gone."""
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if c.AGENT_FINALIZER not in finalizers:
            return False
        body = {
            "metadata": {
                "finalizers": [f for f in finalizers if f != c.AGENT_FINALIZER],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        try:
            await self.client.patch(endpoint_path(meta["namespace"], meta["name"]), body)
        except kube.NotFound:
            return False
        log.info("finalizer removed endpoint=%s/%s", meta["namespace"], meta["name"])
        return True

    async def write_status(
        self, obj: Mapping[str, Any], *, vtep: str | None, cond: Condition
    ) -> bool:
        """Apply vtep and the Ready condition; skipped when already current. Idempotent."""
        if status_is_current(obj, vtep=vtep, cond=cond):
            return False
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation", 0) or 0)
        status: dict[str, Any] = {
            "conditions": [
                cond.as_api(
                    now=now_rfc3339(),
                    previous=previous_condition(obj, cond.type),
                    generation=generation,
                )
            ]
        }
        if vtep is not None:
            status["vtep"] = vtep
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": status,
        }
        try:
            await self.client.patch(
                endpoint_path(meta["namespace"], meta["name"], "status"), body, kind="apply"
            )
        except kube.NotFound:
            return False
        log.info(
            "status written endpoint=%s/%s ready=%s reason=%s",
            meta["namespace"],
            meta["name"],
            cond.status,
            cond.reason,
        )
        return True

    async def heartbeat(self, *, namespace: str, node: str, vtep: str, duration: int = 40) -> None:
        """Create or renew ``voile-agent-<node>`` (server-side apply). Idempotent."""
        name = f"{c.AGENT_LEASE_PREFIX}{node}"
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {c.ANNOTATION_VTEP: vtep},
                "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
            },
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": duration,
                "renewTime": now_rfc3339(micro=True),
            },
        }
        await self.client.patch(
            kube.path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=name),
            body,
            kind="apply",
        )
