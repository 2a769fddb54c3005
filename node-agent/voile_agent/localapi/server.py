"""The local attach API's HTTP edge: a unix socket owned by root with mode 0600, the peer's
credentials checked on every request (SO_PEERCRED: root only), JSON in and out, and every
failure as ``{"error": {"reason", "message", "temporary"[, "field"]}}`` with a fitting status.
Requests are parsed once here (``voile.api.attach``); the service never sees raw JSON.

    GET  /v1/version      {"versions": ["v1"]}
    GET  /v1/status       node, vtep, synced, datapath health, ready
    GET  /v1/dump         the datapath as its own tools show it (for kubectl voile diagnose)
    POST /v1/attach       AttachRequest -> the realized attachment
    POST /v1/detach       AttachmentRef -> {"deleted": bool}
    POST /v1/check        AttachmentRef -> the realized attachment, or NotReady
    GET  /v1/attachments  ?ownerKind=cni -> {"attachments": [...]}
    POST /v1/gc           {network, ownerKind, keep: [{id, interface}]} -> {"removed": [...]}
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from voile import attach as lib
from voile.api import attach as plan
from voile.api import constants as c
from voile.errors import ValidationError
from voile_agent.localapi.service import AttachService
from voile_agent.unixsocket import RootSocket

log = logging.getLogger(__name__)

VERSIONS = ("v1",)
MAX_BODY = 64 * 1024

_STATUS_OF = {
    lib.INVALID_REQUEST: 400,
    c.Reason.NAMESPACE_NOT_ALLOWED.value: 400,
    c.Reason.NAMESPACE_NOT_FOUND.value: 400,
    c.Reason.INVALID_SPEC.value: 400,
    "Forbidden": 403,
    c.Reason.NETWORK_NOT_FOUND.value: 404,
    lib.POD_NOT_FOUND: 404,
    c.Reason.NETWORK_DELETING.value: 409,
    lib.ATTACHMENT_CONFLICT: 409,
    c.Reason.ADDRESS_TAKEN.value: 409,
    c.Reason.ADDRESS_EXCLUDED.value: 409,
    c.Reason.ADDRESS_OUTSIDE_CIDR.value: 409,
    c.Reason.ADDRESS_RESERVED.value: 409,
    c.Reason.POOL_EXHAUSTED.value: 409,
    c.Reason.VNI_CONFLICT.value: 409,
    lib.NOT_READY: 409,
    lib.MISMATCH: 409,
    "NotSynced": 503,
    lib.API_UNAVAILABLE: 503,
    lib.TIMEOUT: 504,
    lib.API_FORBIDDEN: 502,
}


def error_response(
    reason: str, message: str, *, temporary: bool = False, field: str | None = None
) -> web.Response:
    body: dict[str, Any] = {"reason": reason, "message": message, "temporary": temporary}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=_STATUS_OF.get(reason, 500))


def peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Root only; every error as the protocol's error object, never a traceback."""
    if peer_uid(request) != 0:
        return error_response("Forbidden", "only root may use the agent's local API")
    try:
        return await handler(request)
    except ValidationError as exc:
        return error_response(lib.INVALID_REQUEST, str(exc), field=exc.field)
    except lib.AttachError as exc:
        return error_response(exc.reason, exc.message, temporary=exc.temporary)
    except web.HTTPException as exc:
        reason = lib.INVALID_REQUEST if exc.status < 500 else "InternalError"
        return web.json_response(
            {"error": {"reason": reason, "message": exc.reason, "temporary": False}},
            status=exc.status,
        )
    except Exception:
        log.exception("local API request failed path=%s", request.path)
        return error_response("InternalError", "the agent failed; see its log", temporary=True)


async def _json(request: web.Request) -> Mapping[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ValidationError("request", f"is larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ValidationError("request", f"is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("request", f"is not JSON: {exc}") from None
    if not isinstance(body, Mapping):
        raise ValidationError("request", "must be a JSON object")
    return body


def build_app(service: AttachService) -> web.Application:
    ns = service.namespace

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"versions": list(VERSIONS)})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(await service.status())

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": service.node,
                "datapath": service.agent.datapath.kind,
                "dump": await service.agent.datapath.dump(),
            }
        )

    async def attach(request: web.Request) -> web.Response:
        parsed = plan.parse_attach(await _json(request), default_namespace=ns)
        return web.json_response((await service.attach(parsed)).to_json())

    async def detach(request: web.Request) -> web.Response:
        ref = plan.parse_ref(await _json(request), default_namespace=ns)
        return web.json_response({"deleted": await service.detach(ref)})

    async def check(request: web.Request) -> web.Response:
        ref = plan.parse_ref(await _json(request), default_namespace=ns)
        return web.json_response((await service.check(ref)).to_json())

    async def attachments(request: web.Request) -> web.Response:
        raw = request.query.get("ownerKind")
        kind = plan.parse_owner({"kind": raw, "id": "x"}).kind if raw else None
        return web.json_response({"attachments": [s.to_json() for s in service.attachments(kind)]})

    async def gc(request: web.Request) -> web.Response:
        body = await _json(request)
        network = plan.parse_network(body.get("network"))
        kind = plan.parse_owner({"kind": body.get("ownerKind"), "id": "x"}).kind
        keep_raw = body.get("keep") or []
        if not isinstance(keep_raw, list):
            raise ValidationError("keep", "must be a list of {id, interface}")
        keep = set()
        for i, item in enumerate(keep_raw):
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                raise ValidationError(f"keep[{i}]", "must be an object {id, interface}")
            keep.add((item["id"], str(item.get("interface") or "")))
        removed = await service.gc(network=network, owner_kind=kind, keep=keep)
        return web.json_response({"removed": removed})

    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app.add_routes(
        [
            web.get("/v1/version", version),
            web.get("/v1/status", status),
            web.get("/v1/dump", dump),
            web.post("/v1/attach", attach),
            web.post("/v1/detach", detach),
            web.post("/v1/check", check),
            web.get("/v1/attachments", attachments),
            web.post("/v1/gc", gc),
        ]
    )
    return app


class LocalApiServer:
    def __init__(self, service: AttachService, path: str) -> None:
        self.service = service
        self.path = Path(path)
        self._socket = RootSocket(build_app(service), self.path)

    async def start(self) -> None:
        await self._socket.start()
        log.info("local API listening socket=%s", self.path)

    async def stop(self) -> None:
        await self._socket.stop()
