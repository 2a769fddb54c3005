"""What the Docker driver does behind its socket, one method per libnetwork call, through the
shared attach library (``voile.attach``) and the agent's own view of its host's Endpoints.

The life of one container's endpoint, in Docker's order:

    IpamDriver.RequestAddress   an Endpoint is created (owner kind docker; target handoff;
                                ``--ip`` as a static request) and waited for until Ready: the
                                operator allocated the address and its MAC (0a:58:<ip>), the
                                agent made the veth and its port. On failure nothing is left.
    NetworkDriver.CreateEndpoint  the Endpoint holding that address is bound to Docker's endpoint
                                id (annotations), which later calls carry alone, and its MAC is
                                answered. With ``--mac-address`` it is first replaced by one
                                that asks for the same address and that MAC.
    NetworkDriver.Join          the handed-off veth end, for Docker to move into the container
    NetworkDriver.Leave         nothing: Docker moves the veth back to the host
    NetworkDriver.DeleteEndpoint  the binding is dropped from memory
    IpamDriver.ReleaseAddress   the Endpoint holding the address is deleted, and waited for until
                                gone (port, veth and address claim released)

Only ReleaseAddress deletes: it is the one call that says which address goes, and while the
Endpoint holds its address no other Endpoint of the network can have it, so the address names
exactly one Endpoint. (Deleting in DeleteEndpoint would free the address first; a container
started meanwhile could get it, and the ReleaseAddress that follows would delete the new one.)
An Endpoint that no CreateEndpoint binds (dockerd or the agent died between the two calls) is
collected once it has been seen unbound for ``UNBOUND_GRACE`` seconds: Docker makes both calls
within one request, under its network lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from voile import attach as lib
from voile import kube
from voile.api import attach as plan
from voile.api import constants as c
from voile.api.attach import AttachmentRef, AttachRequest, Owner, OwnerKind, Realized
from voile.api.model import (
    Endpoint,
    OverlayNetwork,
    Target,
    TargetKind,
    parse_endpoint,
    parse_overlay_network,
)
from voile.errors import ValidationError
from voile_agent.controller.agent import Agent
from voile_agent.controller.source import AgentSource
from voile_agent.docker import networks, protocol
from voile_agent.docker.protocol import DockerError, PoolId
from voile_agent.docker.state import Binding, NetworkStore, StateError

log = logging.getLogger(__name__)

# Docker gives a plugin call 30 s before it gives up on it; answer well within that.
DEFAULT_TIMEOUT = 20.0
# A pool the IPAM handed out that no CreateNetwork has taken within this time is forgotten.
PENDING_SECONDS = 60.0
# An Endpoint of the IPAM that no CreateEndpoint has bound after this long is an orphan.
UNBOUND_GRACE = 120.0
GC_INTERVAL = 30.0


def _message(exc: lib.AttachError) -> str:
    return f"{exc.message} ({exc.reason})"


def _owner(ident: str) -> Owner:
    return Owner(kind=OwnerKind.DOCKER, id=ident)


def _new_owner() -> Owner:
    """Docker tells an IPAM driver nothing about the container: each address request is its
    own owner, bound to the Docker endpoint by CreateEndpoint."""
    return _owner(f"ipam-{secrets.token_hex(8)}")


class DockerDriver:
    def __init__(
        self,
        *,
        agent: Agent,
        client: kube.KubeClient,
        source: AgentSource,
        node: str,
        namespace: str,
        store: NetworkStore,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.agent = agent
        self.client = client
        self.source = source
        self.node = node
        self.namespace = namespace
        self.store = store
        self.timeout = timeout
        self.store_error: str | None = None
        # Pools handed out by RequestPool and not yet taken by a CreateNetwork or released.
        self._pending: dict[str, tuple[PoolId, float]] = {}
        # Docker endpoint id -> (namespace, name) of its Endpoint; rebuilt from the Endpoints'
        # annotations when the agent restarts.
        self._bound: dict[str, tuple[str, str]] = {}
        # Unbound Endpoints of the IPAM by uid, and when they were first seen unbound.
        self._unbound: dict[str, float] = {}

    def load(self) -> None:
        """Read the state file. A file that cannot be read does not stop the agent: the calls
        that need it fail with the reason, so that ``docker`` shows it."""
        try:
            self.store.load()
        except StateError as exc:
            self.store_error = str(exc)
            log.error("docker state unreadable; Docker networks fail until fixed error=%s", exc)
        else:
            log.info(
                "docker networks loaded count=%d file=%s", len(self.store.all()), self.store.path
            )

    # -- helpers -------------------------------------------------------------------------------

    async def _synced(self) -> None:
        if self.agent.view.synced:
            return
        try:
            await asyncio.wait_for(self.agent.view.wait_synced(), self.timeout)
        except TimeoutError:
            raise DockerError(
                "the Voile agent has not listed its Endpoints yet (is the API server "
                "reachable?); try again"
            ) from None

    async def _networks(self, name: str | None = None) -> list[OverlayNetwork]:
        path = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=name)
        try:
            if name is not None:
                obj = await self.client.get(path)
                objs = [obj] if obj is not None else []
            else:
                objs, _ = await self.client.list(path)
        except kube.ApiError as exc:
            raise DockerError(f"the API server did not answer: {exc}") from exc
        parsed = []
        for obj in objs:
            try:
                parsed.append(parse_overlay_network(obj))
            except ValidationError:
                continue
        return parsed

    async def _network(self, name: str) -> OverlayNetwork:
        return networks.pool_network(
            protocol.RequestPool(address_space="", pool=None, network=name),
            await self._networks(name),
        )

    def _binding(self, network_id: str) -> Binding:
        if self.store_error is not None:
            raise DockerError(self.store_error)
        binding = self.store.get(network_id)
        if binding is None:
            raise DockerError(
                f"Docker network {network_id[:12]} is not known to the Voile driver of this "
                f"host ({self.store.path} has no entry): remove it and create it again"
            )
        return binding

    def _expire_pending(self) -> list[PoolId]:
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if now - v[1] < PENDING_SECONDS}
        return [pool for pool, _ in self._pending.values()]

    def _docker_endpoints(self) -> Sequence[Endpoint]:
        return [
            ep
            for ep in self.agent.endpoints()
            if ep.labels.get(c.LABEL_OWNER_KIND) == OwnerKind.DOCKER.value
        ]

    async def _endpoint_of(self, endpoint_id: str) -> Endpoint:
        await self._synced()
        key = self._bound.get(endpoint_id)
        for ep in self._docker_endpoints():
            if ep.deleting:
                continue
            if (ep.namespace, ep.name) == key or ep.annotations.get(
                c.ANNOTATION_DOCKER_ENDPOINT
            ) == endpoint_id:
                return ep
        raise DockerError(f"Docker endpoint {endpoint_id[:12]} has no Voile Endpoint on this host")

    async def _ready(self, ep: Endpoint) -> Realized:
        """The Endpoint's realized attachment, waiting (bounded) while it is not Ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        current: Endpoint | None = ep
        while True:
            if current is not None and current.uid == ep.uid:
                done = plan.realized(current)
                if done is not None:
                    return done
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DockerError(f"Endpoint {ep.key} is not Ready within {self.timeout:.0f}s")
            await self.source.changed(remaining)
            current = await self.source.get(ep.namespace, ep.name)

    # -- IpamDriver ----------------------------------------------------------------------------

    async def request_pool(self, req: protocol.RequestPool) -> dict[str, Any]:
        net = networks.pool_network(req, await self._networks(req.network))
        pool = PoolId(network=net.name, cidr=net.spec.cidr, nonce=secrets.token_hex(4))
        pending = self._expire_pending()
        if req.pool is None and any(
            (p.network, p.cidr) == (net.name, net.spec.cidr) for p in pending
        ):
            # Docker asks again when a pool it did not choose overlaps a route or a name server
            # of the host, and would do so for ever: the same network comes back every time.
            raise DockerError(
                f"Docker asked for a second pool for OverlayNetwork {net.name!r}: its CIDR "
                f"{net.spec.cidr} overlaps a route or name server of this host. Give --subnet "
                f"{net.spec.cidr} to use it anyway"
            )
        self._pending[str(pool)] = (pool, time.monotonic())
        log.info("docker pool given network=%s cidr=%s", net.name, net.spec.cidr)
        return protocol.pool_answer(pool, net.spec.gateway)

    async def release_pool(self, req: protocol.ReleasePool) -> dict[str, Any]:
        """Idempotent: pools hold nothing but the pending marker."""
        self._pending.pop(str(req.pool), None)
        return {}

    async def request_address(self, req: protocol.RequestAddress) -> dict[str, Any]:
        if req.gateway:
            net = await self._network(req.pool.network)
            return {"Address": networks.gateway_address(req, net), "Data": {}}
        if str(req.pool) in self._pending:
            # Addresses asked for while the network is being created are --aux-address ones.
            raise DockerError(
                "--aux-address is not supported: keep addresses out of a Voile network with "
                "its spec.excludeIPs"
            )
        networks.check_static(req)
        await self._synced()
        done = await self._attach(req.pool.network, req.address, None)
        log.info("docker address given endpoint=%s/%s ip=%s", done.namespace, done.name, done.ip)
        return {"Address": f"{done.ip}/{done.prefix_length}", "Data": {}}

    async def _attach(
        self, network: str, ip: ipaddress.IPv4Address | None, mac: str | None
    ) -> Realized:
        request = AttachRequest(
            network=network,
            owner=_new_owner(),
            target=Target(kind=TargetKind.HANDOFF, interface=""),
            namespace=self.namespace,
            ip=ip,
            mac=mac,
            timeout=self.timeout,
        )
        try:
            done = await lib.attach(self.client, self.source, request, node=self.node)
        except lib.AttachError as exc:
            raise DockerError(_message(exc)) from exc
        self._unbound[done.uid] = time.monotonic()
        return done

    def _holders(self, network: str, ip: ipaddress.IPv4Address) -> list[Endpoint]:
        """The Docker Endpoints of this host that hold (or ask for) ``ip`` on ``network``."""
        return [
            ep
            for ep in self._docker_endpoints()
            if ep.spec.network == network and ip in (ep.status.ip, ep.spec.ip)
        ]

    async def release_address(self, req: protocol.ReleaseAddress) -> dict[str, Any]:
        """Delete the Docker Endpoint of this host that holds the address, and wait until it is
        gone. Idempotent: nothing holds it (the gateway, or already released) is success."""
        await self._synced()
        for ep in self._holders(req.pool.network, req.address):
            await self._detach(ep)
        return {}

    async def _detach(self, ep: Endpoint) -> None:
        owner_id = ep.annotations.get(c.ANNOTATION_OWNER_ID, "")
        ref = AttachmentRef(
            network=ep.spec.network,
            owner=_owner(owner_id or "-"),
            interface="",
            namespace=ep.namespace,
            timeout=self.timeout,
        )
        if not owner_id or ref.name != ep.name:
            log.info("not ours to release endpoint=%s", ep.key)
            return
        try:
            await lib.detach(self.client, self.source, ref)
        except lib.AttachError as exc:
            raise DockerError(_message(exc)) from exc
        self._bound = {k: v for k, v in self._bound.items() if v != (ep.namespace, ep.name)}
        self._unbound.pop(ep.uid, None)
        log.info("docker address released endpoint=%s ip=%s", ep.key, ep.status.ip)

    async def collect(self) -> list[str]:
        """Delete the IPAM's Endpoints that no CreateEndpoint has bound within UNBOUND_GRACE
        seconds of being seen unbound; the keys deleted. Idempotent."""
        if not self.agent.view.synced:
            return []
        now = time.monotonic()
        unbound = {
            ep.uid: ep
            for ep in self._docker_endpoints()
            if not ep.deleting and c.ANNOTATION_DOCKER_ENDPOINT not in ep.annotations
        }
        self._unbound = {uid: self._unbound.get(uid, now) for uid in unbound}
        removed = []
        for uid, seen in list(self._unbound.items()):
            if now - seen >= UNBOUND_GRACE:
                ep = unbound[uid]
                log.info("unbound docker endpoint collected endpoint=%s", ep.key)
                with contextlib.suppress(DockerError):
                    await self._detach(ep)
                    removed.append(ep.key)
        return removed

    async def run_collector(self) -> None:
        """``collect`` every GC_INTERVAL seconds, until cancelled."""
        while True:
            await asyncio.sleep(GC_INTERVAL)
            try:
                await self.collect()
            except Exception:
                log.exception("collecting unbound docker endpoints failed")

    # -- NetworkDriver: networks ---------------------------------------------------------------

    async def create_network(self, req: protocol.CreateNetwork) -> dict[str, Any]:
        if self.store_error is not None:
            raise DockerError(self.store_error)
        pending = self._expire_pending()
        net = networks.driver_network(req, await self._networks(), pending)
        for pool in pending:
            if (pool.network, pool.cidr) == (net.name, net.spec.cidr):
                self._pending.pop(str(pool), None)
                break
        binding = Binding(network_id=req.network_id, network=net.name, cidr=net.spec.cidr)
        try:
            await self.store.put(binding)
        except StateError as exc:
            raise DockerError(str(exc)) from exc
        log.info("docker network created id=%s network=%s", req.network_id[:12], net.name)
        return {}

    async def delete_network(self, req: protocol.NetworkRef) -> dict[str, Any]:
        """Idempotent: an unknown network is success."""
        if self.store_error is not None:
            raise DockerError(self.store_error)
        try:
            removed = await self.store.remove(req.network_id)
        except StateError as exc:
            raise DockerError(str(exc)) from exc
        if removed:
            log.info("docker network deleted id=%s", req.network_id[:12])
        return {}

    # -- NetworkDriver: endpoints --------------------------------------------------------------

    async def create_endpoint(self, req: protocol.CreateEndpoint) -> dict[str, Any]:
        binding = self._binding(req.network_id)
        if req.address is None:
            raise DockerError(
                "Docker gave the endpoint no address: the network must be created with "
                "--ipam-driver voile"
            )
        await self._synced()
        ip = req.address.ip
        held = [ep for ep in self._holders(binding.network, ip) if not ep.deleting]
        if not held or held[0].status.ip != ip:
            raise DockerError(
                f"no Voile Endpoint of this host holds {ip} on OverlayNetwork "
                f"{binding.network!r}: the IPAM allocated it for another network (name the "
                "same OverlayNetwork with --ipam-opt and -o)"
            )
        ep = held[0]
        holder = ep.annotations.get(c.ANNOTATION_DOCKER_ENDPOINT)
        if holder and holder != req.endpoint_id:
            raise DockerError(f"{ip} is already Docker endpoint {holder[:12]}'s")
        if req.mac is not None and req.mac != ep.status.mac:
            ep = await self._with_mac(ep, req.mac)
        if holder is None:
            await self._bind(ep, req)
        self._bound[req.endpoint_id] = (ep.namespace, ep.name)
        self._unbound.pop(ep.uid, None)
        return protocol.endpoint_answer(None if req.mac else ep.status.mac)

    async def _with_mac(self, old: Endpoint, mac: str) -> Endpoint:
        """``--mac-address``: Docker gives the MAC only now, after the address. Replace the
        Endpoint by one asking for the same address with that MAC: created first (it waits for
        the address), then the old one deleted (the operator hands the address over)."""
        ip = old.status.ip
        assert ip is not None
        await self._mac_unused(old.spec.network, mac)
        request = AttachRequest(
            network=old.spec.network,
            owner=_new_owner(),
            target=Target(kind=TargetKind.HANDOFF, interface=""),
            namespace=self.namespace,
            ip=ip,
            mac=mac,
            timeout=self.timeout,
        )
        path = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=self.namespace)
        try:
            created = await self.client.create(path, plan.endpoint_body(request, node=self.node))
        except kube.ApiError as exc:
            raise DockerError(f"Endpoint for --mac-address {mac} not created: {exc}") from exc
        new = parse_endpoint(created)
        try:
            await self._detach(old)
            return await self._allocated(new)
        except DockerError:
            with contextlib.suppress(DockerError):
                await self._detach(new)
            raise

    async def _mac_unused(self, network: str, mac: str) -> None:
        path = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
        try:
            items, _ = await self.client.list(path, field_selector=f"spec.network={network}")
        except kube.ApiError as exc:
            raise DockerError(f"the API server did not answer: {exc}") from exc
        for obj in items:
            meta, status = obj.get("metadata") or {}, obj.get("status") or {}
            if mac in ((obj.get("spec") or {}).get("mac"), status.get("mac")):
                raise DockerError(
                    f"--mac-address {mac} is already used on OverlayNetwork {network!r} "
                    f"(Endpoint {meta.get('namespace')}/{meta.get('name')})"
                )

    async def _allocated(self, ep: Endpoint) -> Endpoint:
        """``ep`` once Ready; AddressTaken is waited out (the address is being handed over),
        any other reason no waiting fixes fails at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            current = await self.source.get(ep.namespace, ep.name)
            if current is not None and current.uid == ep.uid:
                if plan.realized(current) is not None:
                    return current
                blocked = plan.blocking_condition(current)
                if blocked is not None and blocked.reason != c.Reason.ADDRESS_TAKEN.value:
                    raise DockerError(f"{blocked.message} ({blocked.reason})")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DockerError(f"Endpoint {ep.key} not Ready within {self.timeout:.0f}s")
            await self.source.changed(remaining)

    async def _bind(self, ep: Endpoint, req: protocol.CreateEndpoint) -> None:
        patch = {
            "metadata": {
                "annotations": {
                    c.ANNOTATION_DOCKER_ENDPOINT: req.endpoint_id,
                    c.ANNOTATION_DOCKER_NETWORK: req.network_id,
                }
            }
        }
        path = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ep.namespace, name=ep.name)
        try:
            await self.client.patch(path, patch)
        except kube.ApiError as exc:
            raise DockerError(f"Endpoint {ep.key} could not be bound: {exc}") from exc
        log.info("docker endpoint bound endpoint=%s docker=%s", ep.key, req.endpoint_id[:12])

    async def endpoint_oper_info(self, req: protocol.EndpointRef) -> dict[str, Any]:
        try:
            ep = await self._endpoint_of(req.endpoint_id)
        except DockerError:
            return {"Value": {}}
        value: dict[str, Any] = {"voile.dev/endpoint": ep.key}
        if ep.status.vtep is not None:
            value["voile.dev/vtep"] = str(ep.status.vtep)
        return {"Value": value}

    async def join(self, req: protocol.Join) -> dict[str, Any]:
        ep = await self._endpoint_of(req.endpoint_id)
        done = await self._ready(ep)
        gateway = done.gateway
        if gateway is not None and gateway not in ipaddress.IPv4Network(
            f"{done.ip}/{done.prefix_length}", strict=False
        ):
            gateway = None
        log.info("docker join endpoint=%s interface=%s", ep.key, done.interface)
        return protocol.join_answer(done.interface, gateway)

    async def leave(self, req: protocol.EndpointRef) -> dict[str, Any]:
        """Nothing to do: Docker moves the interface back to the host namespace."""
        return {}

    async def delete_endpoint(self, req: protocol.EndpointRef) -> dict[str, Any]:
        """Idempotent. The Endpoint itself goes with ReleaseAddress (see the module)."""
        self._bound.pop(req.endpoint_id, None)
        return {}
