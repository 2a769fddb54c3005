"""Leader election on the coordination.k8s.io Lease ``voile-operator`` (see planning.lease).

``acquire`` blocks until this replica holds the Lease; ``hold`` renews it and returns (raising
``LeadershipLost``) as soon as it cannot prove it still holds it within the renew deadline, so
that main can stop kopf before another replica's Lease wait could have ended. Writes carry the
Lease's resourceVersion: two replicas cannot both win one expired Lease.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from voile import kube
from voile_operator import metrics
from voile_operator.planning import lease as plan

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """This replica no longer holds (or cannot prove it holds) the leader Lease."""


class LeaderElector:
    def __init__(
        self,
        client: kube.KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: int = 15,
        retry: float = 2.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.retry = retry
        self.url = kube.path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=name)
        self.collection = kube.path("coordination.k8s.io", "v1", "leases", namespace=namespace)

    @staticmethod
    def _now() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    async def _observe(self) -> tuple[dict[str, object] | None, plan.LeaseState | None]:
        obj = await self.client.get(self.url)
        return obj, (plan.parse_lease(obj) if obj else None)

    async def try_acquire(self) -> bool:
        """One attempt. Idempotent: holding it already counts as success."""
        obj, state = await self._observe()
        now = self._now()
        action = plan.decide(state, me=self.identity, now=now)
        body = plan.lease_body(
            name=self.name,
            namespace=self.namespace,
            me=self.identity,
            now=now,
            duration=self.duration,
            resource_version=state.resource_version if state else None,
            acquired=True,
        )
        try:
            if action is plan.LeaseAction.CREATE:
                await self.client.create(self.collection, body)
            elif action is plan.LeaseAction.TAKE:
                spec: Mapping[str, Any] = (obj or {}).get("spec") or {}  # type: ignore[assignment]
                transitions = int(spec.get("leaseTransitions") or 0)
                if state is not None and state.holder != self.identity:
                    transitions += 1
                body["spec"]["leaseTransitions"] = transitions
                await self.client.patch(self.url, body, kind="merge")
            else:
                return False
        except kube.Conflict:
            return False  # someone else wrote first: observe again
        log.info("acquired lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
        return True

    async def _vacate(self, state: plan.LeaseState) -> None:
        """No holder any more, if the Lease is still the version we read (else: Conflict)."""
        await self.client.patch(
            self.url,
            {
                "metadata": {"resourceVersion": state.resource_version},
                "spec": {"holderIdentity": None},
            },
            kind="merge",
        )

    async def acquire(self, poll: float | None = None) -> None:
        """Wait until this replica leads, trying every ``poll`` (default ``retry``) seconds.
        Unbounded on purpose: a standby waits for as long as the leader lives; each iteration
        is bounded and logged at DEBUG."""
        poll = self.retry if poll is None else poll
        while True:
            try:
                if await self.try_acquire():
                    metrics.LEADER.set(1)
                    return
            except (TimeoutError, kube.ApiError, OSError) as exc:
                log.warning("lease acquire failed: %s", exc)
            log.debug("standing by: lease %s is held by another replica", self.name)
            await asyncio.sleep(poll)

    async def renew(self) -> None:
        """Renew once; raise LeadershipLost when another identity holds it now."""
        _obj, state = await self._observe()
        if state is None or state.holder != self.identity:
            raise LeadershipLost(f"lease {self.name} is now held by {state and state.holder}")
        patch = {
            "metadata": {"resourceVersion": state.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "renewTime": plan.micro_time(self._now()),
                "leaseDurationSeconds": self.duration,
            },
        }
        await self.client.patch(self.url, patch, kind="merge")

    async def hold(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Renew every ``retry`` seconds (client-go's RetryPeriod, 2 s); raise LeadershipLost
        when the last successful renewal is older than 2/3 of the duration (client-go's renew
        deadline, 10 s of 15)."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        period, deadline = min(self.retry, self.duration / 3), self.duration * 2 / 3
        wait = period
        while not stopped():
            wake = loop.time() + wait
            while not stopped() and loop.time() < wake:  # noqa: ASYNC110 - a thread's flag
                await asyncio.sleep(0.2)
            if stopped():
                return
            try:
                # an attempt may take until the deadline (client-go bounds the whole renewal by
                # it): on a loaded API server one renewal can take longer than the period
                remaining = deadline - (loop.time() - last_ok)
                await asyncio.wait_for(self.renew(), timeout=max(remaining, 0.5))
                last_ok, wait = loop.time(), period
            except LeadershipLost:
                metrics.LEADER.set(0)
                raise
            except (TimeoutError, kube.ApiError, OSError) as exc:
                log.warning("lease renew failed: %r", exc)
                if loop.time() - last_ok > deadline:
                    metrics.LEADER.set(0)
                    raise LeadershipLost(f"could not renew lease {self.name} in time") from exc
                wait = 0.5  # try again soon, well inside the deadline

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once. Idempotent."""
        metrics.LEADER.set(0)
        try:
            _obj, state = await self._observe()
            if state is None or state.holder != self.identity:
                return
            await self._vacate(state)
        except (TimeoutError, kube.ApiError, OSError) as exc:
            log.warning("lease release failed: %s", exc)
