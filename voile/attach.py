"""Create or adopt an attachment's Endpoint, wait until it is Ready, and take it away again.

The one library behind every door that attaches workloads: the agent's local API (which the CNI
shim and the Docker driver call) and ``voile lab attach``. Waiting reads through a
``Source``: the agent waits on its own watch cache (no extra API requests), the lab polls the API
server. Every failure is an ``AttachError`` with a CamelCase reason a caller can map (a CNI error
code, Docker's ``Err``), and an attach that fails leaves nothing it created behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Protocol

from voile import kube
from voile.api import attach as plan
from voile.api import constants as c
from voile.api.attach import AttachmentRef, AttachRequest, Realized
from voile.api.model import Endpoint, parse_endpoint
from voile.errors import ValidationError, VoileError

log = logging.getLogger(__name__)

# Reasons of the local API beyond the condition reasons of voile.api.constants.
INVALID_REQUEST = "InvalidRequest"
ATTACHMENT_CONFLICT = "AttachmentConflict"
TIMEOUT = "Timeout"
NOT_READY = "NotReady"
MISMATCH = "Mismatch"
API_UNAVAILABLE = "APIUnavailable"
API_FORBIDDEN = "APIForbidden"
POD_NOT_FOUND = "PodNotFound"


class AttachError(VoileError):
    """``reason`` says why; ``temporary`` whether the same request may succeed later."""

    def __init__(self, reason: str, message: str, *, temporary: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.temporary = temporary


def api_failure(exc: kube.ApiError) -> AttachError:
    """What a failed API request means for the caller: the API server refusing the agent
    (401/403, its RBAC) will not pass by itself; anything else may (it is unavailable)."""
    if exc.status in (401, 403):
        return AttachError(API_FORBIDDEN, f"the API server refused the request: {exc}")
    return AttachError(API_UNAVAILABLE, str(exc), temporary=True)


class Source(Protocol):
    """Where an attach reads its Endpoint while waiting."""

    async def get(self, namespace: str, name: str) -> Endpoint | None:
        """The Endpoint as currently known, or None when there is none."""
        ...

    async def changed(self, timeout: float) -> None:
        """Return when something may have changed, at the latest after ``timeout`` s."""
        ...


class ApiSource:
    """Reads the API server directly, polling (for callers without a watch cache)."""

    def __init__(self, client: kube.KubeClient, *, interval: float = 0.2) -> None:
        self.client = client
        self.interval = interval

    async def get(self, namespace: str, name: str) -> Endpoint | None:
        obj = await self.client.get(_path(namespace, name))
        if obj is None:
            return None
        try:
            return parse_endpoint(obj)
        except ValidationError:
            return None

    async def changed(self, timeout: float) -> None:
        await asyncio.sleep(min(self.interval, max(timeout, 0)))


def _path(namespace: str, name: str | None = None) -> str:
    return kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name)


async def attach(
    client: kube.KubeClient,
    source: Source,
    request: AttachRequest,
    *,
    node: str,
) -> Realized:
    """Create (or adopt) the request's Endpoint on ``node`` and wait until it is Ready, within
    ``request.timeout``. Idempotent: the same request returns the same Endpoint and address.
    On failure, an Endpoint this call created is deleted again (and waited for) before
    ``AttachError`` is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.timeout
    try:
        network = await client.get(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=request.network)
        )
    except kube.ApiError as exc:
        raise api_failure(exc) from exc
    if network is None:
        raise AttachError(
            c.Reason.NETWORK_NOT_FOUND.value, f"OverlayNetwork {request.network!r} does not exist"
        )
    ep, created = await _create_or_adopt(client, source, request, node=node, deadline=deadline)
    try:
        return await _wait_ready(source, ep, request, deadline=deadline)
    except AttachError:
        if created:
            with contextlib.suppress(AttachError, kube.ApiError):
                await _delete_and_wait(
                    client, source, ep.namespace, ep.name, uid=ep.uid, timeout=15
                )
        raise


async def _create_or_adopt(
    client: kube.KubeClient, source: Source, request: AttachRequest, *, node: str, deadline: float
) -> tuple[Endpoint, bool]:
    body = plan.endpoint_body(request, node=node)
    name = body["metadata"]["name"]
    loop = asyncio.get_running_loop()
    while True:
        try:
            obj = await client.create(_path(request.namespace), body)
            log.info(
                "attachment created endpoint=%s/%s owner=%s",
                request.namespace,
                name,
                request.owner.id,
            )
            return parse_endpoint(obj), True
        except kube.Invalid as exc:
            raise AttachError(INVALID_REQUEST, exc.message) from exc
        except kube.Conflict:
            pass
        except kube.NotFound as exc:  # the namespace does not exist
            raise AttachError(INVALID_REQUEST, exc.message) from exc
        except kube.ApiError as exc:
            raise api_failure(exc) from exc
        existing = await ApiSource(client).get(request.namespace, name)
        if existing is None:
            continue  # deleted meanwhile: create again
        if existing.deleting:
            # A detach of the same attachment is still running: let it finish, then create.
            if loop.time() > deadline:
                raise AttachError(
                    TIMEOUT, f"Endpoint {existing.key} is still being deleted", temporary=True
                )
            await source.changed(0.2)
            continue
        reason = plan.same_attachment(existing, request, node=node)
        if reason is not None:
            raise AttachError(ATTACHMENT_CONFLICT, reason)
        return existing, False


async def _wait_ready(
    source: Source, ep: Endpoint, request: AttachRequest, *, deadline: float
) -> Realized:
    loop = asyncio.get_running_loop()
    last: Endpoint | None = ep
    while True:
        current = await source.get(ep.namespace, ep.name)
        if current is not None and current.uid == ep.uid:
            last = current
            done = plan.realized(current)
            if done is not None:
                return done
            blocked = plan.blocking_condition(current)
            if blocked is not None:
                raise AttachError(blocked.reason, blocked.message)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AttachError(TIMEOUT, _pending(last, request), temporary=True)
        await source.changed(remaining)


def _conditions(ep: Endpoint | None) -> str:
    detail = "; ".join(
        f"{cond.type}={cond.status.value} {cond.reason}: {cond.message}"
        for cond in (ep.status.conditions if ep else ())
    )
    return detail or "no conditions yet"


def _pending(ep: Endpoint | None, request: AttachRequest) -> str:
    what = f"Endpoint {ep.key}" if ep else "the Endpoint"
    return f"{what} not Ready within {request.timeout:.0f}s ({_conditions(ep)})"


async def choose_network(client: kube.KubeClient, request: AttachRequest) -> AttachRequest:
    """The request on the network its Pod asks for (annotation voile.dev/network) when its
    network is only a default (``pod_network_annotation``); else the request as it is. Reads
    the Pod from the API server: a Pod that is gone fails the attach (PodNotFound)."""
    if not request.pod_network_annotation or request.pod is None:
        return request
    pod = request.pod
    try:
        obj = await client.get(kube.path("", "v1", "pods", namespace=pod.namespace, name=pod.name))
    except kube.ApiError as exc:
        raise api_failure(exc) from exc
    if obj is None:
        raise AttachError(POD_NOT_FOUND, f"Pod {pod.namespace}/{pod.name} does not exist")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        network = plan.pod_network(request.network, annotations)
    except ValidationError as exc:
        raise AttachError(INVALID_REQUEST, f"Pod {pod.namespace}/{pod.name}: {exc}") from exc
    if network != request.network:
        log.info(
            "pod chose its network pod=%s/%s network=%s default=%s",
            pod.namespace,
            pod.name,
            network,
            request.network,
        )
    return dataclasses.replace(request, network=network)


async def resolve(client: kube.KubeClient, ref: AttachmentRef, *, node: str) -> list[AttachmentRef]:
    """The attachments ``ref`` means, found by identity (owner, interface, node) on any network:
    the network its ADD chose (a Pod's annotation) may differ from the one a DEL names. Usually
    one; ``[ref]`` itself when there is none (a detach then has nothing to do). Read-only; a
    failed list is an error, never "none"."""
    if ref.endpoint is not None:
        return [ref]
    selector = plan.owner_selector(ref.owner)
    try:
        items, _ = await client.list(_path(ref.namespace), label_selector=selector)
    except kube.ApiError as exc:
        raise api_failure(exc) from exc
    found = []
    for obj in items:
        try:
            ep = parse_endpoint(obj)
        except ValidationError:
            continue
        if plan.is_attachment_of(ep, ref.owner, ref.interface, node=node):
            found.append(dataclasses.replace(ref, network=ep.spec.network, endpoint=ep.name))
    return sorted(found, key=lambda r: r.name) or [ref]


async def check(source: Source, ref: AttachmentRef) -> Realized:
    """The realized attachment when its Endpoint is Ready, else AttachError. Read-only."""
    ep = await source.get(ref.namespace, ref.name)
    if ep is None or ep.deleting:
        raise AttachError(NOT_READY, f"no attachment {ref.namespace}/{ref.name}")
    done = plan.realized(ep)
    if done is None:
        raise AttachError(NOT_READY, f"Endpoint {ep.key} is not Ready ({_conditions(ep)})")
    return done


async def detach(client: kube.KubeClient, source: Source, ref: AttachmentRef) -> bool:
    """Delete the attachment's Endpoint and wait until it is gone (the agent has unplumbed it,
    the operator released its address). Idempotent: False when there was none."""
    return await _delete_and_wait(
        client, source, ref.namespace, ref.name, uid=None, timeout=ref.timeout
    )


async def _delete_and_wait(
    client: kube.KubeClient,
    source: Source,
    namespace: str,
    name: str,
    *,
    uid: str | None,
    timeout: float,
) -> bool:
    try:
        deleted = await client.delete(_path(namespace, name), uid=uid)
    except kube.Conflict:
        return False  # another incarnation: not ours to delete
    except kube.ApiError as exc:
        raise api_failure(exc) from exc
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    confirm = ApiSource(client)
    while True:
        current = await source.get(namespace, name)
        if current is None or (uid is not None and current.uid != uid):
            # A watch cache may not have seen the object at all yet: ask the API server.
            current = await confirm.get(namespace, name)
            if current is None or (uid is not None and current.uid != uid):
                return deleted
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AttachError(
                TIMEOUT,
                f"Endpoint {namespace}/{name} not gone within {timeout:.0f}s",
                temporary=True,
            )
        await source.changed(remaining)
