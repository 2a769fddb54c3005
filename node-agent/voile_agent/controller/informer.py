"""The agent's informers: ``voile.informer`` (list + watch, parsed once as each event arrives,
waking the agent only when what it depends on moved) counted under the agent's metric names
(``voile_agent_watch_*``, ``voile_agent_invalid_objects_total``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from voile import informer as shared
from voile import kube
from voile.informer import Obj, Restart, restart_after
from voile_agent import metrics

__all__ = ["METRICS", "Cache", "Informer", "Obj", "Restart", "restart_after"]

T = TypeVar("T")

METRICS = shared.WatchMetrics(
    events=metrics.WATCH_EVENTS,
    wakes=metrics.WATCH_WAKES,
    invalid=metrics.INVALID_OBJECTS,
    restarts=metrics.WATCH_RESTARTS,
)


class Cache(shared.Cache[T]):
    def __init__(
        self,
        parse: Callable[[Obj], T],
        *,
        project: Callable[[T], Hashable] | None = None,
        name: str = "",
    ) -> None:
        super().__init__(parse, project=project, name=name, metrics=METRICS)


class Informer(shared.Informer[T]):
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
        super().__init__(
            client,
            url_path,
            parse=parse,
            on_change=on_change,
            project=project,
            field_selector=field_selector,
            label_selector=label_selector,
            watch_timeout=watch_timeout,
            kind=kind,
            name=name,
            metrics=METRICS,
        )
