"""The operator's work queue and watch caches (no API server): a key is never reconciled twice at
once, a burst of events becomes one run, retries wait without a worker, the claim view sees this
process's own writes before the watch does, and a stale event never replaces a newer body."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from voile_operator.appliers.cache import BodyStore, ClaimView
from voile_operator.appliers.queue import WorkQueue
from voile_operator.planning.ipam import IPClaimInfo


async def _run_until(queue: WorkQueue[str], done: asyncio.Event, timeout: float = 10) -> None:
    task = asyncio.create_task(queue.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_burst_of_adds_is_one_run_and_never_concurrent() -> None:
    runs: list[str] = []
    active: set[str] = set()
    overlap: list[str] = []
    done = asyncio.Event()
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(key: str) -> float | None:
        if key in active:
            overlap.append(key)
        active.add(key)
        runs.append(key)
        started.set()
        await release.wait()
        active.discard(key)
        if runs.count("a") == 2:
            done.set()
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=4)
    for _ in range(10):
        queue.add("a")  # ten events while it waits: one run
    task = asyncio.create_task(queue.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    for _ in range(10):
        queue.add("a")  # events while it runs: exactly one more run afterwards
    assert queue.pending("a")
    release.set()
    await asyncio.wait_for(done.wait(), timeout=10)
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert runs == ["a", "a"]
    assert not overlap


async def test_retry_after_delay_and_failure_does_not_kill_worker() -> None:
    calls: list[str] = []
    done = asyncio.Event()

    async def handler(key: str) -> float | None:
        calls.append(key)
        if calls.count(key) == 1:
            if key == "boom":
                raise RuntimeError("a bug")
            return 0.05  # come back soon
        done.set()
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.add("boom")
    queue.add("x")
    await _run_until(queue, done)
    assert calls == ["boom", "x", "x"]  # the one worker survived the bug
    assert queue.delayed == 0  # boom's slow retry was cancelled with the workers


async def test_urgent_keys_run_first_and_a_promoted_key_runs_once() -> None:
    calls: list[str] = []
    done = asyncio.Event()

    async def handler(key: str) -> float | None:
        calls.append(key)
        if len(calls) == 5:
            done.set()
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    for key in ("settled-1", "settled-2", "new-1", "settled-3"):
        queue.add(key)
    queue.add("new-1", urgent=True)  # queued already: promoted
    queue.add("new-2", urgent=True)
    queue.add("new-2", urgent=True)  # idempotent
    await _run_until(queue, done)
    # a second run of the promoted key would come before settled-3
    assert calls == ["new-1", "new-2", "settled-1", "settled-2", "settled-3"]
    assert len(queue) == 0


async def test_add_after_keeps_the_earlier_deadline() -> None:
    calls: list[str] = []
    done = asyncio.Event()

    async def handler(key: str) -> float | None:
        calls.append(key)
        done.set()
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    task = asyncio.create_task(queue.run())
    queue.add_after("k", 0.05)
    queue.add_after("k", 60)  # later: ignored
    await asyncio.wait_for(done.wait(), timeout=10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert calls == ["k"]


def _claim(uid: str, ip: str, endpoint: str, network: str = "n") -> IPClaimInfo:
    return IPClaimInfo(
        name=f"{network}-{ip.replace('.', '-')}",
        uid=uid,
        network=network,
        ip=ipaddress.IPv4Address(ip),
        endpoint_namespace="ns",
        endpoint_name=endpoint,
        endpoint_uid=f"ep-{endpoint}",
    )


def test_claim_view_merges_own_writes_until_they_expire() -> None:
    now = [0.0]
    view = ClaimView(clock=lambda: now[0])
    indexed = _claim("c1", "198.18.40.1", "a")
    by_endpoint: dict[str, list[object]] = {"ep-a": [indexed]}
    by_network: dict[str, list[object]] = {"n": [indexed]}
    view.bind(by_endpoint, by_network)
    mine = _claim("c2", "198.18.40.2", "b")
    view.created(mine)  # not in the index yet
    assert view.of_endpoint("ep-b") == [mine]
    assert view.taken("n") == {int(indexed.ip), int(mine.ip)}
    view.deleted(indexed)  # deleted by us; the index still shows it
    assert view.of_endpoint("ep-a") == []
    assert view.taken("n") == {int(mine.ip)}
    now[0] = 120.0  # the overlay expires: the index is the truth again
    assert view.of_endpoint("ep-b") == []
    assert view.of_endpoint("ep-a") == [indexed]


def test_body_store_keeps_the_newest_version() -> None:
    store = BodyStore()
    key = ("ns", "a")

    def body(rv: str, ip: str | None = None) -> dict[str, object]:
        meta = {"name": "a", "namespace": "ns", "resourceVersion": rv, "managedFields": [{}]}
        return {"metadata": meta, "status": {"ip": ip} if ip else {}}

    assert store.offer(key, body("10"))
    assert store.offer(key, body("12", "198.18.40.1"))
    assert not store.offer(key, body("11"))  # an older event arriving late
    got = store.get(key)
    assert got is not None and got["status"] == {"ip": "198.18.40.1"}
    assert "managedFields" not in got["metadata"]
    store.done(key)
    assert store.get(key) is None
    assert not store.offer(key, body("12"))  # still known: a replayed event is no news
    store.drop(key)
    assert store.offer(key, body("5"))  # deleted and re-created: a new object
