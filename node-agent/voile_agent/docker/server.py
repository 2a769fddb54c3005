"""The Docker plugin socket: plain HTTP POSTs of JSON from dockerd, on a unix socket that dockerd
discovers in its plugin directory (``/run/docker/plugins/voile.sock``). One plugin, ``voile``,
implements both ``NetworkDriver`` and ``IpamDriver``.

Each request is parsed once (``protocol``) and handed to ``DockerDriver``; every failure is the
protocol's error object with HTTP 200 (``{"Err"}`` for the driver, ``{"Error"}`` for the IPAM),
which Docker prints; a body that is not JSON is a 400, an unknown method a 404 (which libnetwork
reads as "not implemented" for its optional calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from voile_agent.docker import protocol
from voile_agent.docker.driver import DockerDriver
from voile_agent.docker.protocol import Api, DockerError
from voile_agent.unixsocket import RootSocket

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
DEFAULT_SOCKET = "/run/docker/plugins/voile.sock"

Call = Callable[[object], Awaitable[dict[str, Any]]]


def _constant(answer: dict[str, Any]) -> Call:
    async def call(_: object) -> dict[str, Any]:
        return answer

    return call


def _via(
    parse: Callable[[object], Any], method: Callable[[Any], Awaitable[dict[str, Any]]]
) -> Call:
    async def call(raw: object) -> dict[str, Any]:
        return await method(parse(raw))

    return call


def routes(driver: DockerDriver) -> dict[str, tuple[Api, Call]]:
    """Every method Docker may call, by URL path: the protocol and the call (parse, then the
    driver's method)."""
    d, i, p, dr = Api.DRIVER, Api.IPAM, protocol, driver
    nothing = _constant({})  # Swarm, node discovery, port publishing: nothing for Voile to do
    return {
        "/Plugin.Activate": (d, _constant(p.activate())),
        "/NetworkDriver.GetCapabilities": (d, _constant(p.driver_capabilities())),
        "/NetworkDriver.CreateNetwork": (d, _via(p.parse_create_network, dr.create_network)),
        "/NetworkDriver.DeleteNetwork": (d, _via(p.parse_network_ref, dr.delete_network)),
        "/NetworkDriver.CreateEndpoint": (d, _via(p.parse_create_endpoint, dr.create_endpoint)),
        "/NetworkDriver.EndpointOperInfo": (d, _via(p.parse_endpoint_ref, dr.endpoint_oper_info)),
        "/NetworkDriver.DeleteEndpoint": (d, _via(p.parse_endpoint_ref, dr.delete_endpoint)),
        "/NetworkDriver.Join": (d, _via(p.parse_join, dr.join)),
        "/NetworkDriver.Leave": (d, _via(p.parse_endpoint_ref, dr.leave)),
        "/NetworkDriver.AllocateNetwork": (d, nothing),
        "/NetworkDriver.FreeNetwork": (d, nothing),
        "/NetworkDriver.DiscoverNew": (d, nothing),
        "/NetworkDriver.DiscoverDelete": (d, nothing),
        "/NetworkDriver.ProgramExternalConnectivity": (d, nothing),
        "/NetworkDriver.RevokeExternalConnectivity": (d, nothing),
        "/IpamDriver.GetCapabilities": (i, _constant(p.ipam_capabilities())),
        "/IpamDriver.GetDefaultAddressSpaces": (i, _constant(p.address_spaces())),
        "/IpamDriver.RequestPool": (i, _via(p.parse_request_pool, dr.request_pool)),
        "/IpamDriver.ReleasePool": (i, _via(p.parse_release_pool, dr.release_pool)),
        "/IpamDriver.RequestAddress": (i, _via(p.parse_request_address, dr.request_address)),
        "/IpamDriver.ReleaseAddress": (i, _via(p.parse_release_address, dr.release_address)),
    }


def _answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=protocol.CONTENT_TYPE)


def build_app(driver: DockerDriver) -> web.Application:
    table = routes(driver)

    async def handle(request: web.Request) -> web.Response:
        route = table.get(request.path)
        if route is None:
            return _answer({"Err": f"{request.path} is not implemented"}, status=404)
        api, call = route
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return _answer(protocol.error_body(api, "request too large"), status=400)
        try:
            body = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            return _answer(protocol.error_body(api, f"not JSON: {exc}"), status=400)
        try:
            return _answer(await call(body))
        except DockerError as exc:
            log.info("docker call refused path=%s error=%s", request.path, exc.message)
            return _answer(protocol.error_body(api, exc.message))
        except Exception:
            log.exception("docker call failed path=%s", request.path)
            return _answer(protocol.error_body(api, "the Voile agent failed; see its log"))

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("POST", "/{method}", handle)
    return app


class DockerPluginServer:
    def __init__(self, driver: DockerDriver, path: str) -> None:
        self.driver = driver
        self.path = Path(path)
        self._socket = RootSocket(build_app(driver), self.path)
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._socket.start()
        self._collector = asyncio.create_task(self.driver.run_collector(), name="docker gc")
        log.info("docker plugin listening socket=%s", self.path)

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        await self._socket.stop()
