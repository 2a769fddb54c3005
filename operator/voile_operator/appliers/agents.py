"""Node agents as the operator sees them: heartbeat Leases and the agent's Endpoint finalizer."""

from __future__ import annotations

from collections.abc import Sequence

from voile import kube
from voile.api import constants as c
from voile_operator.planning import lease as plan


async def agent_lease(client: kube.KubeClient, namespace: str, node: str) -> plan.LeaseState | None:
    obj = await client.get(
        kube.path(
            "coordination.k8s.io",
            "v1",
            "leases",
            namespace=namespace,
            name=f"{c.AGENT_LEASE_PREFIX}{node}",
        )
    )
    return plan.parse_lease(obj) if obj else None


async def remove_agent_finalizer(
    client: kube.KubeClient,
    *,
    namespace: str,
    name: str,
    finalizers: Sequence[str],
    resource_version: str,
) -> bool:
    """Drop ``voile.dev/agent`` from an Endpoint, guarded by its resourceVersion (so a finalizer
    list that changed meanwhile is never overwritten). Idempotent: False if it was not there;
    raises ``kube.Conflict`` when the object changed (retry with a fresh read)."""
    if c.AGENT_FINALIZER not in finalizers:
        return False
    remaining = [f for f in finalizers if f != c.AGENT_FINALIZER]
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name)
    try:
        await client.patch(
            url,
            {"metadata": {"resourceVersion": resource_version, "finalizers": remaining}},
            kind="merge",
        )
    except kube.NotFound:
        return False
    return True
