"""List + watch of one collection with a selector, kept in memory, telling the agent when it moved.

Watches resume from the last resourceVersion (bookmarks keep it fresh), also after a failure:
``restart_after`` decides. A connection that failed (``kube.Unreachable``: refused, reset, cut
mid-stream, timed out) or an API server that answered "try later" (429, 5xx) said nothing about
the resourceVersion, so the watch is opened again from it after a bounded backoff, and nothing
is listed. Only a 410 Gone (the resourceVersion is older than the server's watch window, e.g.
after a kube-apiserver restart, whose watch cache starts at etcd's current revision) or an answer
that something else changed (403 after an RBAC change, 404 after a CRD re-install) lists again,
as client-go's reflector and kopf do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any

from voile import kube
from voile_agent import metrics

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MAX_BACKOFF = 10.0


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Restart(str, enum.Enum):
    RESUME = "resume"  # watch again from the last resourceVersion seen
    RELIST = "relist"  # list again, then watch from the list's resourceVersion


def restart_after(exc: BaseException) -> Restart:
    """How a watch goes on after it failed with ``exc``. Pure.

    No answer (connection refused, reset, cut, timed out) and "try later" (429, 5xx: e.g. etcd
    is down behind the API server) leave the resourceVersion valid as far as anyone knows: resume.
    410 Gone says it is not: list. Any other answer (400, 401, 403, 404, garbage) lists too: the
    collection or our right to it changed, and a list is the only way to learn what is there."""
    if isinstance(exc, kube.Gone):
        return Restart.RELIST
    if isinstance(exc, kube.ApiError):
        return Restart.RESUME if exc.status == 429 or exc.status >= 500 else Restart.RELIST
    if isinstance(exc, kube.Unreachable | OSError | TimeoutError):
        return Restart.RESUME
    return Restart.RELIST


class Informer:
    def __init__(
        self,
        client: kube.KubeClient,
        url_path: str,
        *,
        on_change: Callable[[], None],
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 240,
        name: str = "",
    ) -> None:
        self.client = client
        self.url_path = url_path
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.name = name or url_path
        self.store: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.lists = 0  # lists done (the first included)
        self.resumes = 0  # watches opened again from the last resourceVersion after a failure
        self.rv = ""  # the last resourceVersion seen (list, event or bookmark)
        self._task: asyncio.Task[None] | None = None

    def items(self) -> list[Obj]:
        return list(self.store.values())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _list(self) -> str:
        items, rv = await self.client.list(
            self.url_path, field_selector=self.field_selector, label_selector=self.label_selector
        )
        self.store = {_key(o): o for o in items}
        self.lists += 1
        metrics.WATCH_RESTARTS.labels(how="list").inc()
        log.info("listed informer=%s items=%d resource_version=%s", self.name, len(items), rv)
        self.synced.set()
        self.on_change()
        return rv

    async def _watch(self) -> None:
        """One watch call from ``self.rv`` until the server ends it. Each event moves
        ``self.rv`` at once, so that a failure mid-stream resumes after the last one seen."""
        async for kind, obj in self.client.watch(
            self.url_path,
            resource_version=self.rv,
            field_selector=self.field_selector,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_timeout,
        ):
            self.rv = str((obj.get("metadata") or {}).get("resourceVersion") or self.rv)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self.store.pop(_key(obj), None)
            else:
                self.store[_key(obj)] = obj
            self.on_change()

    async def run(self) -> None:
        backoff = 0.5
        listed = False
        while True:
            try:
                if not listed:
                    self.rv = await self._list()
                    listed = True
                await self._watch()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except kube.Gone:
                log.debug("watch expired, listing again informer=%s", self.name)
                listed = False
            except Exception as exc:
                how = restart_after(exc) if listed else Restart.RELIST
                log.warning(
                    "watch failed informer=%s error=%s then=%s retry_in=%.1fs",
                    self.name,
                    exc,
                    how.value,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                listed = how is Restart.RESUME
                if listed:
                    self.resumes += 1
                    metrics.WATCH_RESTARTS.labels(how="resume").inc()
                    log.info("watch resuming informer=%s resource_version=%s", self.name, self.rv)
