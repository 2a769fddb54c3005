"""Attachments made through an agent's local API (CNI, Docker, the lab): the request, the
Endpoint it becomes, and what was realized. Pure; the I/O is in ``voile.attach``.

An attachment is identified by (network, owner kind, owner id, interface), and its Endpoint's
name is derived from exactly that, so asking twice adopts the same Endpoint (same address) and a
runtime that lost its state can still detach what it made. The owner id (a container id, 64 hex
characters) does not fit a label value, so the label holds a hash and an annotation the id.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from voile.api import conditions, naming
from voile.api import constants as c
from voile.api.model import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Endpoint,
    Target,
    TargetKind,
    parse_ipv4,
    parse_mac,
    parse_target,
)
from voile.errors import ValidationError

MAX_OWNER_ID = 256
_OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0


class OwnerKind(str, enum.Enum):
    CNI = "cni"
    DOCKER = "docker"
    LAB = "lab"
    API = "api"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Owner:
    kind: OwnerKind
    id: str

    @property
    def digest(self) -> str:
        """A label-safe hash of the id."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PodRef:
    """The Kubernetes Pod an attachment is for (CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME)."""

    namespace: str
    name: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AttachRequest:
    """One interface of one owner on one network of this host."""

    network: str
    owner: Owner
    target: Target
    namespace: str
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    name: str | None = None  # the Endpoint's name when the caller picks it (the lab)
    pod: PodRef | None = None
    # ``network`` is a default: the Pod's annotation voile.dev/network may name another.
    pod_network_annotation: bool = False

    @property
    def interface(self) -> str:
        """The interface that names the attachment: inside the namespace for netns targets,
        the host or handed-off interface otherwise (empty: derived by the agent)."""
        return self.target.interface

    @property
    def endpoint_name(self) -> str:
        return self.name or endpoint_name(self.network, self.owner, self.interface)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Realized:
    """What an attachment became, as the agent answers it."""

    namespace: str
    name: str
    uid: str
    network: str
    node: str
    ip: ipaddress.IPv4Address
    prefix_length: int
    gateway: ipaddress.IPv4Address | None
    mac: str
    mtu: int
    vni: int
    vtep: ipaddress.IPv4Address | None
    interface: str
    host_interface: str
    netns: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
            "network": self.network,
            "node": self.node,
            "ip": str(self.ip),
            "prefixLength": self.prefix_length,
            "gateway": str(self.gateway) if self.gateway else None,
            "mac": self.mac,
            "mtu": self.mtu,
            "vni": self.vni,
            "vtep": str(self.vtep) if self.vtep else None,
            "interface": self.interface,
            "hostInterface": self.host_interface,
            "netns": self.netns,
        }


# -- names and the Endpoint body ---------------------------------------------------------------


def endpoint_name(network: str, owner: Owner, interface: str) -> str:
    """``<network>-<12 hex>``: deterministic from the attachment's identity, a DNS subdomain of
    at most 76 characters."""
    key = "\0".join((network, owner.kind.value, owner.id, interface))
    return f"{network}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def owner_labels(owner: Owner) -> dict[str, str]:
    return {c.LABEL_OWNER_KIND: owner.kind.value, c.LABEL_OWNER: owner.digest}


def endpoint_body(request: AttachRequest, *, node: str) -> dict[str, Any]:
    """The Endpoint an attach request creates (or adopts)."""
    target: dict[str, Any]
    t = request.target
    if t.kind == TargetKind.NETNS:
        target = {"netns": {"path": t.netns_path, "interface": t.interface}}
    else:
        target = {t.kind.value: {"interface": t.interface} if t.interface else {}}
    spec: dict[str, Any] = {"network": request.network, "node": node, "target": target}
    if request.ip is not None:
        spec["ip"] = str(request.ip)
    if request.mac is not None:
        spec["mac"] = request.mac
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ENDPOINT,
        "metadata": {
            "name": request.endpoint_name,
            "namespace": request.namespace,
            "labels": {
                **request.labels,
                **owner_labels(request.owner),
                c.LABEL_MANAGED_BY: c.MANAGED_BY,
            },
            "annotations": {
                c.ANNOTATION_OWNER_ID: request.owner.id,
                c.ANNOTATION_INTERFACE: request.interface,
            },
        },
        "spec": spec,
    }


def same_attachment(ep: Endpoint, request: AttachRequest, *, node: str) -> str | None:
    """None when an existing Endpoint is the one ``request`` asks for (it may be adopted), or
    the reason it is not (an attachment is immutable: asking differently needs a detach)."""
    if ep.annotations.get(c.ANNOTATION_OWNER_ID) != request.owner.id:
        return f"Endpoint {ep.key} belongs to another owner"
    if ep.spec.node != node:
        return f"Endpoint {ep.key} is on node {ep.spec.node}, not {node}"
    if ep.spec.target != request.target:
        return f"Endpoint {ep.key} has another target"
    if request.ip is not None and ep.spec.ip != request.ip:
        return f"Endpoint {ep.key} was attached with {ep.spec.ip or 'an allocated address'}"
    if request.mac is not None and ep.spec.mac != request.mac:
        return f"Endpoint {ep.key} was attached with {ep.spec.mac or 'a derived MAC'}"
    return None


def pod_network(default: str, annotations: Mapping[str, str]) -> str:
    """The network a Pod's primary interface joins: its annotation voile.dev/network, else
    ``default`` (the conflist's). ValidationError when the annotation names no network."""
    chosen = annotations.get(c.ANNOTATION_POD_NETWORK)
    if chosen is None:
        return default
    if not DNS_LABEL.fullmatch(chosen):
        raise ValidationError(
            f"pod annotation {c.ANNOTATION_POD_NETWORK}",
            f"{chosen!r} is not an OverlayNetwork name",
        )
    return chosen


def is_attachment_of(ep: Endpoint, owner: Owner, interface: str, *, node: str) -> bool:
    """Whether ``ep`` is the attachment of (owner, interface) on ``node``, on whatever network
    (a Pod's annotation may have chosen it, or the runtime's configuration changed since)."""
    return (
        ep.labels.get(c.LABEL_OWNER_KIND) == owner.kind.value
        and ep.annotations.get(c.ANNOTATION_OWNER_ID) == owner.id
        and ep.annotations.get(c.ANNOTATION_INTERFACE, "") == interface
        and ep.spec.node == node
    )


def owner_selector(owner: Owner) -> str:
    """A label selector for the Endpoints of ``owner`` (any network, any interface)."""
    return ",".join(f"{k}={v}" for k, v in sorted(owner_labels(owner).items()))


def realized(ep: Endpoint) -> Realized | None:
    """The realized attachment once the Endpoint is allocated and Ready, else None."""
    st = ep.status
    ready = conditions.find(st.conditions, c.ConditionType.READY)
    if (
        ready is None
        or not ready.is_true
        or st.ip is None
        or st.mac is None
        or st.prefix_length is None
        or st.mtu is None
        or st.vni is None
    ):
        return None
    port, _, interface = naming.interfaces(ep)
    return Realized(
        namespace=ep.namespace,
        name=ep.name,
        uid=ep.uid,
        network=ep.spec.network,
        node=ep.spec.node,
        ip=st.ip,
        prefix_length=st.prefix_length,
        gateway=st.gateway,
        mac=st.mac,
        mtu=st.mtu,
        vni=st.vni,
        vtep=st.vtep,
        interface=interface,
        host_interface=port,
        netns=ep.spec.target.netns_path,
    )


# Reasons an Endpoint cannot become Ready without a change: an attach waiting for it fails at
# once with that reason instead of running into its deadline.
TERMINAL_REASONS = frozenset(
    {
        c.Reason.ADDRESS_TAKEN.value,
        c.Reason.ADDRESS_EXCLUDED.value,
        c.Reason.ADDRESS_OUTSIDE_CIDR.value,
        c.Reason.ADDRESS_RESERVED.value,
        c.Reason.POOL_EXHAUSTED.value,
        c.Reason.NETWORK_NOT_FOUND.value,
        c.Reason.NETWORK_DELETING.value,
        c.Reason.INVALID_SPEC.value,
        c.Reason.NAMESPACE_NOT_ALLOWED.value,
        c.Reason.NAMESPACE_NOT_FOUND.value,
        c.Reason.VNI_CONFLICT.value,
    }
)


def blocking_condition(ep: Endpoint) -> conditions.Condition | None:
    """The False condition (Allocated or Ready) whose reason no waiting will fix, if any."""
    for kind in (c.ConditionType.ALLOCATED, c.ConditionType.READY):
        cond = conditions.find(ep.status.conditions, kind)
        if cond is not None and not cond.is_true and cond.reason in TERMINAL_REASONS:
            return cond
    return None


# -- parsing requests (the socket's edge) ------------------------------------------------------


def parse_owner(raw: object) -> Owner:
    if not isinstance(raw, Mapping):
        raise ValidationError("owner", "must be an object {kind, id}")
    _only(raw, {"kind", "id"}, "owner")
    try:
        kind = OwnerKind(raw.get("kind"))
    except ValueError:
        kinds = ", ".join(k.value for k in OwnerKind)
        raise ValidationError("owner.kind", f"{raw.get('kind')!r} is not one of {kinds}") from None
    ident = raw.get("id")
    if (
        not isinstance(ident, str)
        or not 0 < len(ident) <= MAX_OWNER_ID
        or not _OWNER_ID.fullmatch(ident)
    ):
        raise ValidationError(
            "owner.id", f"must be 1-{MAX_OWNER_ID} characters of letters, digits, _ . : -"
        )
    return Owner(kind=kind, id=ident)


def parse_network(raw: object) -> str:
    if not isinstance(raw, str) or not DNS_LABEL.fullmatch(raw):
        raise ValidationError("network", f"{raw!r} must name an OverlayNetwork")
    return raw


def parse_namespace(raw: object, default: str) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str) or not DNS_LABEL.fullmatch(raw):
        raise ValidationError("namespace", f"{raw!r} is not a Kubernetes namespace name")
    return raw


def parse_name(raw: object) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 253 or not DNS_SUBDOMAIN.fullmatch(raw):
        raise ValidationError("name", f"{raw!r} is not an Endpoint name (a DNS subdomain)")
    return raw


def parse_labels(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError("labels", "must be an object of label keys and values")
    labels = {}
    for key, value in raw.items():
        prefix, _, name = str(key).rpartition("/")
        if (
            not isinstance(key, str)
            or not _LABEL_VALUE.fullmatch(name)
            or not name
            or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix))
        ):
            raise ValidationError(f"labels.{key}", "is not a label key")
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise ValidationError(f"labels.{key}", f"{value!r} is not a label value")
        if key.startswith(f"{c.GROUP}/") and key not in (c.LABEL_POD_NAMESPACE, c.LABEL_POD_NAME):
            raise ValidationError(f"labels.{key}", f"keys under {c.GROUP}/ are Voile's")
        labels[key] = value
    return labels


def parse_pod(raw: object) -> PodRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValidationError("pod", "must be an object {namespace, name}")
    _only(raw, {"namespace", "name"}, "pod")
    namespace, name = raw.get("namespace"), raw.get("name")
    if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
        raise ValidationError("pod.namespace", f"{namespace!r} is not a namespace name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise ValidationError("pod.name", f"{name!r} is not a Pod name")
    return PodRef(namespace=namespace, name=name)


def parse_flag(raw: object, field: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise ValidationError(field, "must be true or false")
    return raw


def parse_timeout(raw: object) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= MAX_TIMEOUT:
        raise ValidationError("timeout", f"must be a number of seconds in (0, {MAX_TIMEOUT:.0f}]")
    return float(raw)


def parse_attach(raw: object, *, default_namespace: str) -> AttachRequest:
    """An attach request as the socket receives it (JSON), or ValidationError naming the field."""
    if not isinstance(raw, Mapping):
        raise ValidationError("request", "must be a JSON object")
    known = {"network", "owner", "target", "namespace", "ip", "mac", "labels", "timeout", "name"}
    _only(raw, known | {"pod", "podNetworkAnnotation"}, "")
    network = parse_network(raw.get("network"))
    owner = parse_owner(raw.get("owner"))
    pod = parse_pod(raw.get("pod"))
    by_pod = parse_flag(raw.get("podNetworkAnnotation"), "podNetworkAnnotation")
    if by_pod and pod is None:
        raise ValidationError("pod", "podNetworkAnnotation needs the pod whose annotation it reads")
    try:
        target = parse_target(raw.get("target"))
    except ValidationError as exc:  # the Endpoint's rules, named as the request's fields
        raise ValidationError(exc.field.removeprefix("spec."), exc.message) from None
    return AttachRequest(
        name=parse_name(raw.get("name")),
        network=network,
        owner=owner,
        target=target,
        namespace=parse_namespace(raw.get("namespace"), default_namespace),
        ip=parse_ipv4(raw["ip"], "ip") if raw.get("ip") is not None else None,
        mac=parse_mac(raw["mac"], "mac") if raw.get("mac") is not None else None,
        labels=parse_labels(raw.get("labels")),
        timeout=parse_timeout(raw.get("timeout")),
        pod=pod,
        pod_network_annotation=by_pod,
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AttachmentRef:
    """Which attachment a detach or check means: its identity, as attach was given it."""

    network: str
    owner: Owner
    interface: str
    namespace: str
    timeout: float = DEFAULT_TIMEOUT
    endpoint: str | None = None  # the Endpoint's name when the attach picked it

    @property
    def name(self) -> str:
        return self.endpoint or endpoint_name(self.network, self.owner, self.interface)


def parse_ref(raw: object, *, default_namespace: str) -> AttachmentRef:
    if not isinstance(raw, Mapping):
        raise ValidationError("request", "must be a JSON object")
    _only(raw, {"network", "owner", "interface", "namespace", "timeout", "name"}, "")
    interface = raw.get("interface", "")
    if not isinstance(interface, str) or len(interface) > 15 or "/" in interface:
        raise ValidationError("interface", f"{interface!r} is not an interface name")
    return AttachmentRef(
        network=parse_network(raw.get("network")),
        owner=parse_owner(raw.get("owner")),
        interface=interface,
        namespace=parse_namespace(raw.get("namespace"), default_namespace),
        timeout=parse_timeout(raw.get("timeout")),
        endpoint=parse_name(raw.get("name")),
    )


def _only(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        field = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ValidationError(field, f"unknown field; known: {sorted(known)}")


# -- what CNI runtimes leave behind (docs/cni.md) ----------------------------------------------

PENDING_SUFFIX = ".json"
PENDING_FIELDS = frozenset(
    {"version", "network", "containerID", "ifname", "namespace", "netns", "reason", "time"}
)


def parse_pending(raw: object, *, default_namespace: str) -> AttachmentRef:
    """A pending DEL the CNI plugin recorded because the agent did not answer (one JSON file
    per container and interface in the spool directory): the attachment to detach."""
    if not isinstance(raw, Mapping):
        raise ValidationError("record", "must be a JSON object")
    if raw.get("version") != 1:
        raise ValidationError("record.version", f"{raw.get('version')!r} is not 1")
    _only(raw, set(PENDING_FIELDS), "record")
    interface = raw.get("ifname")
    if not isinstance(interface, str) or not 0 < len(interface) <= 15 or "/" in interface:
        raise ValidationError("record.ifname", f"{interface!r} is not an interface name")
    namespace = raw.get("namespace") or None
    return AttachmentRef(
        network=parse_network(raw.get("network")),
        owner=parse_owner({"kind": OwnerKind.CNI.value, "id": raw.get("containerID")}),
        interface=interface,
        namespace=parse_namespace(namespace, default_namespace),
    )


def owned_ref(ep: Endpoint) -> AttachmentRef | None:
    """The attachment an Endpoint made through the local API stands for, rebuilt from its
    labels and annotations; None when it was not made under that identity (another name)."""
    kind = ep.labels.get(c.LABEL_OWNER_KIND)
    owner_id = ep.annotations.get(c.ANNOTATION_OWNER_ID)
    if kind is None or owner_id is None:
        return None
    try:
        owner = parse_owner({"kind": kind, "id": owner_id})
    except ValidationError:
        return None
    ref = AttachmentRef(
        network=ep.spec.network,
        owner=owner,
        interface=ep.annotations.get(c.ANNOTATION_INTERFACE, ""),
        namespace=ep.namespace,
    )
    return ref if ref.name == ep.name else None


def cni_netns_orphans(
    endpoints: Sequence[Endpoint], netns_gone: Callable[[str], bool]
) -> list[AttachmentRef]:
    """The CNI attachments whose network namespace is gone (``netns_gone`` says so from a real
    observation): the runtime's DEL never came, or the agent died while ADD was in flight.
    Endpoints being deleted, and those of other owners, are left alone."""
    orphans = []
    for ep in endpoints:
        if ep.deleting or ep.labels.get(c.LABEL_OWNER_KIND) != OwnerKind.CNI.value:
            continue
        path = ep.spec.target.netns_path
        if ep.spec.target.kind != TargetKind.NETNS or path is None:
            continue
        ref = owned_ref(ep)
        if ref is not None and netns_gone(path):
            orphans.append(ref)
    return orphans
