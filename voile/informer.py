"""List + watch of one collection with a selector, parsed once as each event arrives: the agent's
and the operator's watch caches (client-go's reflector + indexer, in asyncio).

``Cache`` is the store and its rules, without I/O: every object is parsed when its event arrives
(``parse``, e.g. into ``voile.api.model.Endpoint``) and only the parsed value is kept, so readers
get frozen values and never parse again. ``project`` says what of an object the owner's work
depends on (for the agent, the Endpoints of other hosts: what forwarding uses); an event that
leaves the projection as it was is counted and kept but wakes nobody. Without ``project`` every
event wakes. ``indexers`` keep secondary indexes current (e.g. IPClaims by Endpoint uid and by
network), read with ``by`` or as a mapping with ``index``. ``on_event`` hears every change one by
one (the operator queues the object's key): watch events as they come, and after a list exactly
what differs from what was held (objects whose resourceVersion changed, objects gone), so a
re-list costs no work for what stayed the same.

An object that fails to parse is reported (a WARNING once per resourceVersion, the invalid-objects
counter, and ``invalid`` for the owner to show in the object's condition); its last parsed
version, if any, stays in the store: a bad write is not read as the object going away, so nothing
is deleted because of it.

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
import dataclasses
import enum
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from voile import kube
from voile.api.model import Invalid
from voile.errors import ValidationError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")

# What a parser may raise on an object that breaks the schema (ours raise ValidationError; a
# type the schema would have refused surfaces as one of the others).
PARSE_ERRORS = (ValidationError, ValueError, TypeError, KeyError, AttributeError)

MAX_BACKOFF = 10.0


class Counter(Protocol):
    """A labelled Prometheus counter (prometheus_client.Counter)."""

    def labels(self, *values: str, **labels: str) -> Any: ...


@dataclasses.dataclass(frozen=True, slots=True)
class WatchMetrics:
    """The counters an informer moves, owned by the process that runs it (each has its own
    metric names). ``events``, ``wakes`` and ``invalid`` are labelled ``informer``, ``restarts``
    ``how`` (list, resume). None: not counted."""

    events: Counter | None = None
    wakes: Counter | None = None
    invalid: Counter | None = None
    restarts: Counter | None = None


NO_METRICS = WatchMetrics()


def _inc(counter: Counter | None, **labels: str) -> None:
    if counter is not None:
        counter.labels(**labels).inc()


def object_key(namespace: str | None, name: str) -> str:
    """The store's key of an object (``namespace/name``; ``/name`` when cluster-scoped)."""
    return f"{namespace or ''}/{name}"


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return object_key(str(meta.get("namespace", "")), str(meta.get("name", "")))


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


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


@dataclasses.dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """One change of one object, as ``on_event`` hears it. ``obj`` is the raw object as the API
    server sent it (None for an object a list no longer shows: deleted while no watch ran);
    ``old`` and ``new`` are the parsed values before and after (None: absent)."""

    kind: str  # ADDED, MODIFIED, DELETED
    key: str
    obj: Obj | None
    old: T | None
    new: T | None


class IndexView(Mapping[str, list[T]]):
    """One secondary index of a ``Cache`` as a read-only mapping: value -> the objects."""

    def __init__(self, index: dict[str, dict[str, T]]) -> None:
        self._index = index

    def __getitem__(self, value: str) -> list[T]:
        return list(self._index[value].values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class Cache(Generic[T]):
    """Parsed objects by ``namespace/name``. ``apply`` and ``replace`` return whether the change
    matters (wakes the owner). No I/O: unit tests drive it with raw objects."""

    def __init__(
        self,
        parse: Callable[[Obj], T],
        *,
        project: Callable[[T], Hashable] | None = None,
        name: str = "",
        indexers: Mapping[str, Callable[[T], Iterable[str]]] | None = None,
        on_event: Callable[[Change[T]], None] | None = None,
        metrics: WatchMetrics = NO_METRICS,
    ) -> None:
        self.parse = parse
        self.project = project
        self.name = name
        self.objects: dict[str, T] = {}
        self.invalid: dict[str, Invalid] = {}
        self.versions: dict[str, str] = {}  # key -> the last resourceVersion applied
        self.indexers = dict(indexers or {})
        self._indexes: dict[str, dict[str, dict[str, T]]] = {n: {} for n in self.indexers}
        self.on_event = on_event
        self.metrics = metrics

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, key: str) -> T | None:
        return self.objects.get(key)

    def by(self, index: str, value: str) -> list[T]:
        """The objects whose indexer ``index`` yields ``value``."""
        return list(self._indexes[index].get(value, {}).values())

    def index(self, index: str) -> IndexView[T]:
        return IndexView(self._indexes[index])

    def _projection(self, value: T | None) -> Hashable:
        assert self.project is not None
        return None if value is None else self.project(value)

    def _matters(self, old: T | None, new: T | None) -> bool:
        return self.project is None or self._projection(old) != self._projection(new)

    def _set(self, key: str, old: T | None, new: T | None) -> None:
        for name, indexer in self.indexers.items():
            index = self._indexes[name]
            if old is not None:
                for value in indexer(old):
                    bucket = index.get(value)
                    if bucket is not None:
                        bucket.pop(key, None)
                        if not bucket:
                            del index[value]
            if new is not None:
                for value in indexer(new):
                    index.setdefault(value, {})[key] = new
        if new is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = new

    def _emit(self, kind: str, key: str, obj: Obj | None, old: T | None, new: T | None) -> None:
        if self.on_event is not None:
            self.on_event(Change(kind, key, obj, old, new))

    def _parse(self, key: str, obj: Obj) -> T | None:
        try:
            value = self.parse(obj)
        except PARSE_ERRORS as exc:
            bad = _invalid(obj, exc)
            if self.invalid.get(key) != bad:
                _inc(self.metrics.invalid, informer=self.name)
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
            self.versions.pop(key, None)
            old = self.objects.get(key)
            self._set(key, old, None)
            self._emit(kind, key, obj, old, None)
            return self._matters(old, None)
        self.versions[key] = _version(obj)
        new = self._parse(key, obj)
        if new is None:  # reported; the last valid version stays
            return self.project is None
        old = self.objects.get(key)
        self._set(key, old, new)
        self._emit(kind, key, obj, old, new)
        return self._matters(old, new)

    def replace(self, items: Iterable[Obj]) -> bool:
        """A complete list. Whether anything that matters differs from what was held. An object
        whose resourceVersion is the one held is neither parsed again nor reported."""
        matters = False
        seen: set[str] = set()
        for obj in items:
            key = _key(obj)
            seen.add(key)
            version = _version(obj)
            if version and self.versions.get(key) == version:
                continue  # unchanged (also an invalid one: reported already)
            self.versions[key] = version
            new = self._parse(key, obj)
            if new is None:
                continue  # reported; the last valid version (if any) stays
            old = self.objects.get(key)
            self._set(key, old, new)
            self._emit("ADDED" if old is None else "MODIFIED", key, obj, old, new)
            matters = matters or self._matters(old, new)
        for key in [k for k in self.objects if k not in seen]:
            old = self.objects[key]
            self._set(key, old, None)
            self._emit("DELETED", key, None, old, None)
            matters = matters or self._matters(old, None)
        self.invalid = {k: v for k, v in self.invalid.items() if k in seen}
        self.versions = {k: v for k, v in self.versions.items() if k in seen}
        return matters or self.project is None

    def values(self) -> list[T]:
        return list(self.objects.values())


def _nothing() -> None:
    return None


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
        on_change: Callable[[], None] = _nothing,
        project: Callable[[T], Hashable] | None = None,
        indexers: Mapping[str, Callable[[T], Iterable[str]]] | None = None,
        on_event: Callable[[Change[T]], None] | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 240,
        kind: str = "",
        name: str = "",
        metrics: WatchMetrics = NO_METRICS,
    ) -> None:
        self.client = client
        self.url_path = url_path
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.name = name or url_path
        self.kind = kind or self.name
        self.metrics = metrics
        self.cache: Cache[T] = Cache(
            parse,
            project=project,
            name=self.kind,
            indexers=indexers,
            on_event=on_event,
            metrics=metrics,
        )
        self.synced = asyncio.Event()
        self.lists = 0  # lists done (the first included)
        self.resumes = 0  # watches opened again from the last resourceVersion after a failure
        self.rv = ""  # the last resourceVersion seen (list, event or bookmark)
        self._task: asyncio.Task[None] | None = None

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
            _inc(self.metrics.wakes, informer=self.kind)
            self.on_change()

    async def _list(self) -> str:
        items, rv = await self.client.list(
            self.url_path,
            field_selector=self.field_selector,
            label_selector=self.label_selector,
            managed_fields=False,
        )
        first = not self.synced.is_set()
        matters = self.cache.replace(items)
        self.lists += 1
        _inc(self.metrics.restarts, how="list")
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
            _inc(self.metrics.events, informer=self.kind)
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
                    _inc(self.metrics.restarts, how="resume")
                    log.info("watch resuming informer=%s resource_version=%s", self.name, self.rv)
