"""List + watch of one collection with a selector, parsed once as each event arrives, telling
the agent when something it depends on moved.

``Cache`` is the store and its rules, without I/O: every object is parsed when its event arrives
(``parse``, e.g. into ``voile.api.model.Endpoint``) and only the parsed value is kept, so a pass
reads frozen values and never parses again. ``project`` says what of an object the agent's work
depends on (for the Endpoints of other hosts: what forwarding uses); an event that leaves the
projection as it was is counted and kept but wakes nobody. Without ``project`` every event
wakes (this host's own Endpoints: their status is the agent's to keep true).

An object that fails to parse is reported (a WARNING once per resourceVersion, the
``voile_agent_invalid_objects_total`` metric, and ``invalid`` for the caller to show in the
object's condition); its last parsed version, if any, stays in the store: a bad write is not
read as the object going away, so nothing is unplumbed because of it.

``Informer`` runs the list and the watch. Watches resume from the last resourceVersion (bookmarks
keep it fresh), also after a failure: ``restart_after`` decides. A connection that failed
(``kube.Unreachable``: refused, reset, cut mid-stream, timed out) or an API server that answered
"try later" (429, 5xx) said nothing about the resourceVersion, so the watch is opened again from it
after a bounded backoff, and nothing is listed. Only a 410 Gone (the resourceVersion is older than
the server's watch window, e.g. after a kube-apiserver restart, whose watch cache starts at etcd's
current revision) or an answer that something else changed (403 after an RBAC change, 404 after a
CRD re-install) lists again, as client-go's reflector and kopf do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from voile import kube
from voile.errors import ValidationError
from voile_agent import metrics
from voile_agent.planning.model import Invalid

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")

# What a parser may raise on an object that breaks the schema (ours raise ValidationError; a
# type the schema would have refused surfaces as one of the others).
PARSE_ERRORS = (ValidationError, ValueError, TypeError, KeyError, AttributeError)

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


def _invalid(obj: Obj, exc: Exception) -> Invalid:
    meta = obj.get("metadata") or {}
    return Invalid(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        error=str(exc) or type(exc).__name__,
    )


class Cache(Generic[T]):
    """Parsed objects by ``namespace/name``. ``apply`` and ``replace`` return whether the change
    matters (wakes a pass). No I/O: unit tests drive it with raw objects."""

    def __init__(
        self,
        parse: Callable[[Obj], T],
        *,
        project: Callable[[T], Hashable] | None = None,
        name: str = "",
    ) -> None:
        self.parse = parse
        self.project = project
        self.name = name
        self.objects: dict[str, T] = {}
        self.invalid: dict[str, Invalid] = {}

    def _projection(self, value: T | None) -> Hashable:
        assert self.project is not None
        return None if value is None else self.project(value)

    def _matters(self, old: T | None, new: T | None) -> bool:
        return self.project is None or self._projection(old) != self._projection(new)

    def _parse(self, key: str, obj: Obj) -> T | None:
        try:
            value = self.parse(obj)
        except PARSE_ERRORS as exc:
            bad = _invalid(obj, exc)
            if self.invalid.get(key) != bad:
                metrics.INVALID_OBJECTS.labels(informer=self.name).inc()
                log.warning(
                    "object does not parse; keeping its last valid version informer=%s "
                    "object=%s resourceVersion=%s error=%s",
                    self.name,
                    key,
                    bad.resource_version,
                    bad.error,
                )
            self.invalid[key] = bad
            return None
        self.invalid.pop(key, None)
        return value

    def apply(self, kind: str, obj: Obj) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED). Whether it matters."""
        key = _key(obj)
        if kind == "DELETED":
            self.invalid.pop(key, None)
            return self._matters(self.objects.pop(key, None), None)
        new = self._parse(key, obj)
        if new is None:  # reported; the last valid version stays
            return self.project is None
        old = self.objects.get(key)
        self.objects[key] = new
        return self._matters(old, new)

    def replace(self, items: Iterable[Obj]) -> bool:
        """A complete list. Whether anything that matters differs from what was held."""
        old, self.objects = self.objects, {}
        seen = set()
        for obj in items:
            key = _key(obj)
            seen.add(key)
            new = self._parse(key, obj)
            if new is None and key in old:
                new = old[key]
            if new is not None:
                self.objects[key] = new
        self.invalid = {k: v for k, v in self.invalid.items() if k in seen}
        if self.project is None:
            return True
        keys = old.keys() | self.objects.keys()
        return any(self._matters(old.get(k), self.objects.get(k)) for k in keys)

    def values(self) -> list[T]:
        return list(self.objects.values())


class Informer(Generic[T]):
    """``Cache`` kept current by a list + watch; ``on_change`` when an event matters.

    ``kind`` labels the metrics (events received, events that woke): a bounded set such as
    ``local-endpoints``, ``remote-endpoints``, ``networks``."""

    def __init__(
        self,
        client: kube.KubeClient,
        url_path: str,
        *,
        parse: Callable[[Obj], T],
        on_change: Callable[[], None],
        project: Callable[[T], Hashable] | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 240,
        kind: str = "",
        name: str = "",
    ) -> None:
        self.client = client
        self.url_path = url_path
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.name = name or url_path
        self.kind = kind or self.name
        self.cache: Cache[T] = Cache(parse, project=project, name=self.kind)
        self.synced = asyncio.Event()
        self.lists = 0  # lists done (the first included)
        self.resumes = 0  # watches opened again from the last resourceVersion after a failure
        self.rv = ""  # the last resourceVersion seen (list, event or bookmark)
        self._task: asyncio.Task[None] | None = None
        self._events = metrics.WATCH_EVENTS.labels(informer=self.kind)
        self._wakes = metrics.WATCH_WAKES.labels(informer=self.kind)

    def items(self) -> list[T]:
        return self.cache.values()

    @property
    def invalid(self) -> list[Invalid]:
        return list(self.cache.invalid.values())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _changed(self, matters: bool) -> None:
        if matters:
            self._wakes.inc()
            self.on_change()

    async def _list(self) -> str:
        items, rv = await self.client.list(
            self.url_path, field_selector=self.field_selector, label_selector=self.label_selector
        )
        first = not self.synced.is_set()
        matters = self.cache.replace(items)
        self.lists += 1
        metrics.WATCH_RESTARTS.labels(how="list").inc()
        log.info("listed informer=%s items=%d resource_version=%s", self.name, len(items), rv)
        self.synced.set()
        self._changed(matters or first)
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
            self._events.inc()
            self._changed(self.cache.apply(kind, obj))

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
