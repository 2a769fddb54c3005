"""A keyed work queue: watch events in, a bounded pool of workers out.

The shape of client-go's workqueue: a key waits at most once (a burst of events for one object
becomes one reconcile), a key is never processed by two workers at once (an event that arrives
while its key is being processed runs it once more afterwards), and a worker may ask for a key to
come back after a delay (a retry, a slow sweep) without holding a worker while it waits.
A key added as ``urgent`` (an object that waits for its first allocation) runs before the others:
a new leader that inherits thousands of settled objects serves the new ones first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# What a worker returns: None (done, until the next event) or seconds until the key runs again.
Handler = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    def __init__(self, handler: Handler[K], *, workers: int = 32) -> None:
        self._handler = handler
        self._workers = workers
        self._order: collections.deque[K] = collections.deque()
        self._urgent: collections.deque[K] = collections.deque()
        self._urgent_keys: set[K] = set()  # queued keys that have an entry in _urgent
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()  # added while active: run once more when the worker is done
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queued) + len(self._again)

    @property
    def delayed(self) -> int:
        return len(self._timers)

    def add(self, key: K, *, urgent: bool = False) -> None:
        """Run ``key`` soon (``urgent``: before every key that is not). Idempotent while it
        waits; once more after a run in progress."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            (self._urgent if urgent else self._order).append(key)
            if urgent:
                self._urgent_keys.add(key)
            self._ready.set()
        elif urgent and key not in self._urgent_keys:
            self._urgent.append(key)  # promoted: its entry in _order is skipped later
            self._urgent_keys.add(key)

    def add_after(self, key: K, delay: float) -> None:
        """Run ``key`` in ``delay`` seconds, unless an earlier run is already planned."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._queued or key in self._again:
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def pending(self, key: K) -> bool:
        """Will ``key`` run again without a new ``add`` (queued, or re-added while active)?"""
        return key in self._queued or key in self._again

    def forget(self, key: K) -> None:
        """Drop a planned retry (the object is gone). A queued run still happens (and finds
        nothing to do)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _next(self) -> K:
        while True:
            while not (self._urgent or self._order):
                self._ready.clear()
                await self._ready.wait()
            key = (self._urgent or self._order).popleft()
            if key in self._queued:  # else: a promoted key's second entry, already run
                self._queued.discard(key)
                self._urgent_keys.discard(key)
                return key

    async def _work(self) -> None:
        while True:
            key = await self._next()
            self._active.add(key)
            delay: float | None = None
            try:
                delay = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the worker; the key is retried slowly
                log.exception("reconcile of %s failed", key)
                delay = 10.0
            finally:
                self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)

    async def run(self) -> None:
        """The workers, until cancelled (leadership ends)."""
        tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
