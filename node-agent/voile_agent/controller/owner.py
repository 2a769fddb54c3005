"""``OwnerWatch``: what the agent knows of its DaemonSet, kept by a watch while it runs, so
that on SIGTERM it can tell an uninstall (clean the host) from a restart (leave the datapath).

The watch is opened while the agent's RBAC still holds: ``helm uninstall`` deletes the
DaemonSet, its ServiceAccount and its roles at once, and by the time the kubelet stops the pod a
fresh read may well be refused. An open watch has been authorized already and delivers the
DELETED event. At stop, one more bounded read refreshes the view when it succeeds; when it fails
the view stays what was last observed (planning/uninstall.py decides).
"""

from __future__ import annotations

import asyncio
import logging

from voile import kube
from voile_agent.planning.uninstall import OwnerView, advance, uninstalling

log = logging.getLogger(__name__)

BACKOFF = (0.5, 1, 2, 5, 10, 30)


class OwnerWatch:
    def __init__(self, client: kube.KubeClient, *, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.view = OwnerView()
        self._collection = kube.path("apps", "v1", "daemonsets", namespace=namespace)
        self._object = kube.path("apps", "v1", "daemonsets", namespace=namespace, name=name)

    def _observe(self, obj: kube.Obj | None, *, deleted: bool = False) -> None:
        before = self.view
        self.view = advance(self.view, obj, deleted=deleted)
        if self.view.state != before.state:
            log.info(
                "owner daemonset=%s/%s state=%s", self.namespace, self.name, self.view.state.value
            )

    async def run(self) -> None:
        """List, then watch, the one DaemonSet (field selector metadata.name), until cancelled.
        Errors are retried with back-off and change nothing."""
        selector = f"metadata.name={self.name}"
        failures = 0
        while True:
            try:
                items, version = await self.client.list(self._collection, field_selector=selector)
                self._observe(items[0] if items else None)
                async for kind, obj in self.client.watch(
                    self._collection, resource_version=version, field_selector=selector
                ):
                    if kind in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif kind == "DELETED":
                        self._observe(obj, deleted=True)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: no conclusion, try again
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.debug("owner watch failed error=%s retry_in=%s", exc, delay)
                await asyncio.sleep(delay)

    async def uninstalling(self, *, timeout: float = 3.0) -> bool:
        """At stop: refresh the view by one read (404 = gone) when it answers within
        ``timeout``, then decide."""
        try:
            obj = await asyncio.wait_for(self.client.get(self._object), timeout)
        except Exception as exc:
            log.info("owner daemonset not readable at stop (%s); deciding from the watch", exc)
        else:
            self._observe(obj)
        return uninstalling(self.view)
