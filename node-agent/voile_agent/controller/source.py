"""What the runtime plugins (the local API, the Docker driver) read the agent's view through:
``AgentSource`` is a ``voile.attach.Source`` over the agent's watch of its own host's Endpoints,
woken by ``Pulse`` when that watch sees an event, so that waiting costs no API requests."""

from __future__ import annotations

import asyncio

from voile.api.model import Endpoint
from voile_agent.controller.agent import Agent


class Pulse:
    """Wakes every waiter when something changed (the local watch saw an event)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def fire(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(timeout, 0.0))
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


class AgentSource:
    """``voile.attach.Source`` over the agent's watch of its own host's Endpoints."""

    def __init__(self, agent: Agent, pulse: Pulse, *, poll: float = 1.0) -> None:
        self.agent = agent
        self.pulse = pulse
        self.poll = poll

    async def get(self, namespace: str, name: str) -> Endpoint | None:
        for ep in self.agent.endpoints():
            if ep.namespace == namespace and ep.name == name:
                return ep
        return None

    async def changed(self, timeout: float) -> None:
        await self.pulse.wait(min(timeout, self.poll))
