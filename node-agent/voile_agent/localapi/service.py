"""What the local API does, behind its HTTP edge: attach, detach, check, list, gc and status,
through ``voile.attach`` and the agent's own watch cache (waiting costs no API requests)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection
from typing import Any

from voile import attach as lib
from voile import kube
from voile.api import attach as plan
from voile.api import constants as c
from voile.api.attach import AttachmentRef, AttachRequest, OwnerKind, Realized
from voile.api.model import TargetKind
from voile.errors import PlumbingError
from voile_agent.controller.agent import Agent
from voile_agent.controller.source import AgentSource, Pulse

log = logging.getLogger(__name__)

# Checks a namespace path against the agent's policy (raises PlumbingError); injected by main,
# so that the socket refuses a forbidden target before anything is created.
NetnsCheck = Callable[[str], object]
SYNC_WAIT = 10.0  # seconds a request waits for the agent's first lists


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """One attachment of this host as ``list`` shows it."""

    namespace: str
    name: str
    network: str
    owner_kind: str
    owner_id: str
    interface: str
    ready: bool
    realized: Realized | None

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": {"namespace": self.namespace, "name": self.name},
            "network": self.network,
            "owner": {"kind": self.owner_kind, "id": self.owner_id},
            "interface": self.interface,
            "ready": self.ready,
            "realized": self.realized.to_json() if self.realized else None,
        }


class AttachService:
    def __init__(
        self,
        *,
        agent: Agent,
        client: kube.KubeClient,
        node: str,
        namespace: str,
        check_netns: NetnsCheck,
        pulse: Pulse,
    ) -> None:
        self.agent = agent
        self.client = client
        self.node = node
        self.namespace = namespace
        self.check_netns = check_netns
        self.source = AgentSource(agent, pulse)

    async def _require_synced(self, timeout: float = SYNC_WAIT) -> None:
        """Wait (bounded) for the agent's first lists: right after a restart a request waits a
        moment instead of failing; a request still too early is told to come back."""
        if self.agent.view.synced:
            return
        try:
            await asyncio.wait_for(self.agent.view.wait_synced(), timeout)
        except TimeoutError:
            raise lib.AttachError(
                "NotSynced", "the agent has not listed its Endpoints yet", temporary=True
            ) from None

    async def attach(self, request: AttachRequest) -> Realized:
        await self._require_synced(min(request.timeout, SYNC_WAIT))
        if request.target.kind == TargetKind.NETNS:
            assert request.target.netns_path is not None
            try:
                await asyncio.to_thread(self.check_netns, request.target.netns_path)
            except PlumbingError as exc:
                raise lib.AttachError(exc.reason, exc.message) from exc
        request = await lib.choose_network(self.client, request)
        return await lib.attach(self.client, self.source, request, node=self.node)

    async def detach(self, ref: AttachmentRef) -> bool:
        """Detach every attachment of this identity (on whatever network). Idempotent."""
        await self._require_synced(min(ref.timeout, SYNC_WAIT))
        deleted = False
        for each in await self._resolve(ref):
            deleted |= await lib.detach(self.client, self.source, each)
        return deleted

    async def check(self, ref: AttachmentRef) -> Realized:
        await self._require_synced(min(ref.timeout, SYNC_WAIT))
        found = await self._resolve(ref)
        if len(found) > 1:
            names = ", ".join(r.name for r in found)
            raise lib.AttachError(lib.ATTACHMENT_CONFLICT, f"more than one attachment: {names}")
        return await lib.check(self.source, found[0])

    async def _resolve(self, ref: AttachmentRef) -> list[AttachmentRef]:
        """CNI DEL and CHECK name the conflist's network; the ADD may have joined the one the
        Pod chose. Other runtimes name what they attached."""
        if ref.owner.kind != OwnerKind.CNI:
            return [ref]
        return await lib.resolve(self.client, ref, node=self.node)

    def attachments(self, owner_kind: OwnerKind | None = None) -> list[Summary]:
        result = []
        for ep in self.agent.endpoints():
            kind = ep.labels.get(c.LABEL_OWNER_KIND)
            if kind is None or (owner_kind is not None and kind != owner_kind.value):
                continue
            done = plan.realized(ep)
            result.append(
                Summary(
                    namespace=ep.namespace,
                    name=ep.name,
                    network=ep.spec.network,
                    owner_kind=kind,
                    owner_id=ep.annotations.get(c.ANNOTATION_OWNER_ID, ""),
                    interface=ep.annotations.get(c.ANNOTATION_INTERFACE, ""),
                    ready=done is not None,
                    realized=done,
                )
            )
        return sorted(result, key=lambda s: (s.namespace, s.name))

    async def gc(
        self, *, network: str, owner_kind: OwnerKind, keep: Collection[tuple[str, str]]
    ) -> list[str]:
        """Detach every attachment of this host on ``network`` made by ``owner_kind`` whose
        (owner id, interface) is not in ``keep``; the names removed."""
        await self._require_synced()
        doomed = [
            s
            for s in self.attachments(owner_kind)
            if s.network == network and (s.owner_id, s.interface) not in set(keep)
        ]
        removed = []
        for s in doomed:
            ref = AttachmentRef(
                network=s.network,
                owner=plan.Owner(kind=owner_kind, id=s.owner_id),
                interface=s.interface,
                namespace=s.namespace,
            )
            if ref.name != s.name:
                continue  # not made by the local API under this identity: leave it
            await lib.detach(self.client, self.source, ref)
            log.info("attachment collected endpoint=%s/%s", s.namespace, s.name)
            removed.append(f"{s.namespace}/{s.name}")
        return removed

    async def status(self) -> dict[str, Any]:
        health = await self.agent.datapath.health()
        synced = self.agent.synced
        return {
            "node": self.node,
            "vtep": self.agent.vtep,
            "synced": synced,
            "datapath": {
                "kind": self.agent.datapath.kind,
                "healthy": health.healthy,
                "reason": health.reason,
                "message": health.message,
            },
            "ready": synced and health.healthy,
        }
