"""A small asyncio Kubernetes API client shared by the operator's appliers and the node agent.

Why not the ``kubernetes`` package's client: it is synchronous, and the agent and the operator live
in asyncio. We use the ``kubernetes`` package only to load configuration (kubeconfig, in-cluster
ServiceAccount token), then talk HTTP with aiohttp: get, list (paginated, consistent), create,
patch (merge, JSON, server-side apply), delete with preconditions, and watch with bookmarks.

Errors map onto one small tree (``ApiError`` and its subclasses by HTTP status) so that callers
can treat 404 on delete and 409 on create as the idempotent no-ops they usually are. A watch whose
connection fails (refused, reset, cut mid-stream, timed out) raises ``Unreachable``: the server
said nothing about the resourceVersion, so the watch may resume from it; only ``Gone`` (410)
calls for a list.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from voile.errors import VoileError

Obj = dict[str, Any]


class ApiError(VoileError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: AlreadyExists on create, or a resourceVersion/uid precondition failed."""


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


class Invalid(ApiError):
    """422: the object breaks the schema or a CEL rule."""


class Unreachable(VoileError):
    """The connection to the API server failed (refused, reset, cut mid-stream, timed out): no
    answer at all, so nothing is known about the server's state."""


_BY_STATUS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}


def path(
    group: str,
    version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a resource collection or object; group "" is the core API."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{name}"
    if subresource is not None:
        base += f"/{subresource}"
    return base


class KubeClient:
    """One aiohttp session to one API server. Create with ``from_config`` inside a running loop."""

    def __init__(
        self,
        server: str,
        ssl_context: ssl.SSLContext | bool,
        token: str | None = None,
        *,
        field_manager: str = "voile",
        max_connections: int = 64,
    ) -> None:
        self.server = server.rstrip("/")
        self.field_manager = field_manager
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    @classmethod
    def from_config(
        cls,
        kubeconfig: str | None = None,
        *,
        field_manager: str = "voile",
        max_connections: int = 64,
    ) -> KubeClient:
        """Load a kubeconfig (path, $KUBECONFIG, ~/.kube/config) or the in-cluster account."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=cfg
            )
        except (config.ConfigException, FileNotFoundError, TypeError):
            if kubeconfig:
                raise
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else False
        if isinstance(ctx, ssl.SSLContext) and cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        token = None
        auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if auth:
            token = auth.removeprefix("Bearer ").strip()
        return cls(
            cfg.host, ctx, token, field_manager=field_manager, max_connections=max_connections
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- verbs ---------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method,
            self.server + url_path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error(resp.status, text)
            result: Obj = json.loads(text) if text else {}
            return result

    async def get_text(
        self, url_path: str, *, params: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> str:
        """A plain-text GET (a Pod's log); errors as ``request``'s."""
        async with self._session.get(
            self.server + url_path, params=params, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error(resp.status, text)
            return text

    async def get(self, url_path: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", url_path)
        except NotFound:
            return None

    async def list(
        self,
        url_path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page: int = 500,
        managed_fields: bool = True,
    ) -> tuple[list[Obj], str]:
        """Every item (following continue tokens) and the list's resourceVersion.

        A list without resourceVersion is served from etcd with a quorum read: it is complete and
        current, which is what the allocator and the claim collector need.

        ``managed_fields=False`` drops each item's ``metadata.managedFields`` page by page: they
        are more than half of an Endpoint's bytes, and a list of 10,000 Endpoints held as parsed
        JSON takes about 148 MB with them and 51 MB without. The informers and the claim
        collector read none of them; by default they are kept (who wrote which field).
        """
        items: list[Obj] = []
        params: dict[str, str] = {"limit": str(page)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        while True:
            result = await self.request("GET", url_path, params=params)
            got = result.get("items") or []
            if not managed_fields:
                for item in got:
                    meta = item.get("metadata") if isinstance(item, dict) else None
                    if isinstance(meta, dict):
                        meta.pop("managedFields", None)
            items.extend(got)
            meta = result.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))
            params["continue"] = token

    async def create(self, url_path: str, body: Obj) -> Obj:
        """Create; raises ``Conflict`` when the name is taken (the uniqueness we rely on)."""
        return await self.request(
            "POST", url_path, body=body, params={"fieldManager": self.field_manager}
        )

    async def patch(
        self, url_path: str, body: object, *, kind: str = "merge", field_manager: str | None = None
    ) -> Obj:
        """``kind``: merge (RFC 7386), json (RFC 6902, e.g. with a ``test`` op), or apply (SSA).
        ``field_manager`` overrides the client's (when one process applies several owners'
        fields, e.g. each node's entry of a shared list-map)."""
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "apply": "application/apply-patch+yaml",
        }[kind]
        params = {"fieldManager": field_manager or self.field_manager}
        if kind == "apply":
            params["force"] = "true"
        return await self.request(
            "PATCH", url_path, body=body, params=params, content_type=content_type
        )

    async def delete(
        self, url_path: str, *, uid: str | None = None, resource_version: str | None = None
    ) -> bool:
        """Delete. Idempotent: False when it was already gone. With ``uid`` (or
        ``resource_version``) only that incarnation is deleted; a mismatch raises ``Conflict``."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions: Obj = {}
        if uid:
            preconditions["uid"] = uid
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        if preconditions:
            body["preconditions"] = preconditions
        try:
            await self.request("DELETE", url_path, body=body)
        except NotFound:
            return False
        return True

    async def watch(
        self,
        url_path: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Yield (type, object) from one watch call, BOOKMARKs included; ends when the server
        closes the stream. Raises ``Gone`` when resource_version is too old (list again)."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        try:
            async with self._session.get(
                self.server + url_path,
                params=params,
                timeout=aiohttp.ClientTimeout(
                    total=timeout_seconds + 30, sock_read=timeout_seconds + 30
                ),
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.text())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type", ""), event.get("object") or {}
                    if kind == "ERROR":
                        raise _error(int(obj.get("code", 500)), json.dumps(obj))
                    yield kind, obj
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unreachable(f"watch {url_path}: {type(exc).__name__}: {exc}") from exc


def _error(status: int, text: str) -> ApiError:
    reason, message = "", text
    try:
        body = json.loads(text)
        reason, message = str(body.get("reason", "")), str(body.get("message", text))
    except ValueError:
        pass
    return _BY_STATUS.get(status, ApiError)(status, reason, message)


async def wait_for(
    predicate: Any, *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll an async predicate until it returns a truthy value; raise TimeoutError with ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


__all__ = [
    "ApiError",
    "Conflict",
    "Gone",
    "Invalid",
    "KubeClient",
    "NotFound",
    "Unreachable",
    "path",
    "wait_for",
]
