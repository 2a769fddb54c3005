"""The agent's writes to the Kubernetes API: its finalizer, its part of Endpoint status, and its
heartbeat Lease.

Status is written with server-side apply under the field manager ``voile-agent``: the agent owns
``status.vtep`` and the ``Ready`` entry of the conditions list-map, the operator owns the rest, and
neither can clobber the other. The finalizer is added by server-side apply too (a set entry of its
own) and removed by a merge patch with a resourceVersion precondition, so that finalizers added
concurrently by others are never lost (a conflict is retried on the next pass).
Every verb is idempotent. Errors are ``voile.kube.ApiError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from voile import clock, kube
from voile.api import conditions
from voile.api import constants as c
from voile.api.conditions import Condition
from voile.api.model import Endpoint, Invalid

log = logging.getLogger(__name__)

FIELD_MANAGER = "voile-agent"


def endpoint_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return kube.path(
        c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name, subresource=subresource
    )


class KubeWriter:
    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client

    async def _set_finalizers(self, ep: Endpoint, finalizers: list[str]) -> None:
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": ep.resource_version}}
        await self.client.patch(endpoint_path(ep.namespace, ep.name), body)

    async def add_finalizer(self, ep: Endpoint, *, vtep: str) -> bool:
        """Add ``voile.dev/agent`` keeping every other finalizer, and announce this host's VTEP
        in the same write (annotation ``voile.dev/vtep``): the other hosts can forward to the
        Endpoint before it is plumbed. Idempotent; False if present."""
        if c.AGENT_FINALIZER in ep.finalizers:
            return False
        await self.apply_finalizer(ep, vtep=vtep)
        log.info("finalizer added endpoint=%s", ep.key)
        return True

    async def apply_finalizer(self, ep: Endpoint, *, vtep: str) -> None:
        """By server-side apply: ``metadata.finalizers`` is a set there, so the entry is the
        agent's alone and the operator adding its own at the same moment is no conflict (the
        resourceVersion-guarded merge patch lost that race for most new Endpoints). The uid
        makes it this incarnation's only."""
        document = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {
                "name": ep.name,
                "namespace": ep.namespace,
                "uid": ep.uid,
                "finalizers": [c.AGENT_FINALIZER],
                "annotations": {c.ANNOTATION_VTEP: vtep},
            },
        }
        await self.client.patch(endpoint_path(ep.namespace, ep.name), document, kind="apply")

    async def remove_finalizer(self, ep: Endpoint) -> bool:
        """Remove only ``voile.dev/agent``. Idempotent: False if absent or the object is gone."""
        if c.AGENT_FINALIZER not in ep.finalizers:
            return False
        try:
            await self._set_finalizers(ep, [f for f in ep.finalizers if f != c.AGENT_FINALIZER])
        except kube.NotFound:
            return False
        log.info("finalizer removed endpoint=%s", ep.key)
        return True

    async def write_status(self, ep: Endpoint, *, vtep: str | None, cond: Condition) -> bool:
        """Apply vtep and one condition (Ready); the caller checks whether it is current.
        Idempotent. False when the Endpoint is gone."""
        previous = conditions.find(ep.status.conditions, cond.type)
        status: dict[str, Any] = {
            "conditions": [cond.to_api(now=clock.now_rfc3339(), previous=previous)]
        }
        if vtep is not None:
            status["vtep"] = vtep
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {"name": ep.name, "namespace": ep.namespace},
            "status": status,
        }
        try:
            await self.client.patch(
                endpoint_path(ep.namespace, ep.name, "status"), body, kind="apply"
            )
        except kube.NotFound:
            return False
        log.info(
            "status written endpoint=%s ready=%s reason=%s",
            ep.key,
            cond.status.value,
            cond.reason,
        )
        return True

    async def write_invalid(self, obj: Invalid, cond: Condition) -> bool:
        """Apply the Ready condition of an Endpoint the agent cannot parse (only its name is
        known). Idempotent. False when the Endpoint is gone."""
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {"name": obj.name, "namespace": obj.namespace},
            "status": {"conditions": [cond.to_api(now=clock.now_rfc3339())]},
        }
        try:
            await self.client.patch(
                endpoint_path(obj.namespace, obj.name, "status"), body, kind="apply"
            )
        except kube.NotFound:
            return False
        log.warning("invalid endpoint reported endpoint=%s error=%s", obj.key, obj.error)
        return True

    async def heartbeat(
        self,
        *,
        namespace: str,
        node: str,
        vtep: str,
        datapath: str,
        duration: int = 40,
        probes: Mapping[str, object] | None = None,
        health: Mapping[str, object] | None = None,
    ) -> None:
        """Create or renew ``voile-agent-<node>`` (server-side apply), with the probe report
        and the datapath's health (the node-level condition) when there are. Idempotent."""
        name = f"{c.AGENT_LEASE_PREFIX}{node}"
        annotations = {c.ANNOTATION_VTEP: vtep, c.ANNOTATION_DATAPATH: datapath}
        if probes is not None:
            annotations[c.ANNOTATION_PROBES] = json.dumps(probes, separators=(",", ":"))
        if health is not None:
            annotations[c.ANNOTATION_DATAPATH_HEALTH] = json.dumps(health, separators=(",", ":"))
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": annotations,
                "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
            },
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": duration,
                "renewTime": clock.now_rfc3339(micro=True),
            },
        }
        await self.client.patch(
            kube.path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=name),
            body,
            kind="apply",
        )
