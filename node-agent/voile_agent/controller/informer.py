"""List + watch of one collection with a selector, kept in memory, telling the agent when it moved.

Watches resume from the last resourceVersion (bookmarks keep it fresh); a 410 Gone re-lists. Any
other failure backs off (bounded) and re-lists, so a restarted API server is survived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from voile import kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


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
        self.synced.set()
        self.on_change()
        return rv

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                rv = await self._list()
                while True:
                    async for kind, obj in self.client.watch(
                        self.url_path,
                        resource_version=rv,
                        field_selector=self.field_selector,
                        label_selector=self.label_selector,
                        timeout_seconds=self.watch_timeout,
                    ):
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self.store.pop(_key(obj), None)
                        else:
                            self.store[_key(obj)] = obj
                        self.on_change()
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except kube.Gone:
                log.debug("watch expired, listing again informer=%s", self.name)
            except Exception as exc:
                log.warning(
                    "watch failed informer=%s error=%s retry_in=%.1fs", self.name, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
