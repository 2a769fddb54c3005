"""Frozen dataclasses for OverlayNetwork and Endpoint, parsed once at the edge from API dicts.

The parsers apply the same rules as the CRD schema and its CEL rules (crds/), so that entry points
that do not pass through the API server (the CNI and Docker plugins, the lab) reject the same input
with the same field path. Every parser raises ``voile.errors.ValidationError(field, message)``.
The transition rules (immutable fields) need the stored object too: ``check_network_update`` and
``check_endpoint_update`` apply them. tests/catalogue.py holds the invalid objects that both the
API server (tests/e2e/test_crds.py) and these parsers (tests/unit/test_model.py) must reject.

Regular expressions use ``fullmatch``: the CRD patterns are Go regular expressions, whose ``$``
does not match before a trailing newline as Python's does.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from voile.api import constants as c
from voile.api.conditions import Condition, parse_conditions
from voile.errors import ValidationError

# The same shapes and bounds as the OpenAPI patterns and max lengths in crds/*.yaml.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[a-zA-Z0-9_.-]{1,15}")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
_CIDR_SHAPE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")
_EXCLUDE_SHAPE = re.compile(r"[0-9./-]{1,31}")
MAX_EXCLUDE_IPS = 64  # maxItems of spec.excludeIPs (bounds the CEL cost of the rules over it)
MAX_NODE_NAME = 253
MAX_NETNS_PATH = 1024

Raw = Mapping[str, Any]


# -- small values --------------------------------------------------------------------------------


def parse_mac(value: object, field: str) -> str:
    """A unicast MAC in canonical lower-case colon form."""
    if not isinstance(value, str) or not _MAC.fullmatch(value.lower()):
        raise ValidationError(field, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    mac = value.lower()
    if int(mac[:2], 16) & 0x01:
        raise ValidationError(field, f"{mac} is a multicast or broadcast MAC; use a unicast one")
    if mac == "00:00:00:00:00:00":
        raise ValidationError(field, "the all-zero MAC is not a valid interface address")
    return mac


def parse_ipv4(value: object, field: str) -> ipaddress.IPv4Address:
    """A dotted-quad IPv4 address; leading zeros are refused (ambiguous: octal or decimal?)."""
    if not isinstance(value, str) or not _IPV4_SHAPE.fullmatch(value):
        raise ValidationError(field, f"{value!r} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an IPv4 address") from None


def parse_cidr(value: object, field: str) -> ipaddress.IPv4Network:
    """An IPv4 CIDR with host bits zero, /30 or larger (a /31 or /32 leaves no endpoint address)."""
    if not isinstance(value, str) or not _CIDR_SHAPE.fullmatch(value):
        raise ValidationError(field, f"{value!r} is not an IPv4 CIDR like 198.18.1.0/24")
    try:
        network = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an IPv4 CIDR like 198.18.1.0/24") from None
    if str(network) != value:
        raise ValidationError(
            field, f"{value!r} has host bits set (or is not canonical); did you mean {network}?"
        )
    if network.prefixlen > 30:
        raise ValidationError(field, f"{value} leaves no usable address; use a /30 or larger")
    return network


def overlay_mtu(spec_mtu: int | None, underlay_mtu: int = c.DEFAULT_UNDERLAY_MTU) -> int:
    """The MTU of a network's interfaces: the user's (spec.mtu), or the underlay's minus the
    VXLAN-over-IPv4 overhead. The one MTU rule of Voile (operator, agent and plugins)."""
    if spec_mtu is not None:
        return spec_mtu
    return underlay_mtu - c.VXLAN_OVERHEAD_IPV4


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """The stable locally administered unicast MAC derived from an address: 0a:58:<ip bytes>.

    Stable across restarts and re-creation (an ARP cache entry stays right), and the same scheme
    OVN-Kubernetes uses, so operators reading a capture recognise it.
    """
    octets = ip.packed
    return "0a:58:" + ":".join(f"{b:02x}" for b in octets)


# -- exclusions ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AddressRange:
    """An inclusive range of IPv4 addresses (a single address has first == last)."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, ipaddress.IPv4Address) and self.first <= ip <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def parse_range(value: object, field: str) -> AddressRange:
    """``a.b.c.d``, ``a.b.c.d-a.b.c.e`` or ``a.b.c.d/n`` (host bits zero), without spaces."""
    if not isinstance(value, str) or not _EXCLUDE_SHAPE.fullmatch(value):
        raise ValidationError(field, f"{value!r} is not an address, range or CIDR")
    if "/" in value:
        if not _CIDR_SHAPE.fullmatch(value):
            raise ValidationError(field, f"{value!r} is not a CIDR with host bits zero")
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError:
            raise ValidationError(field, f"{value!r} is not a CIDR with host bits zero") from None
        return AddressRange(first=net.network_address, last=net.broadcast_address)
    if "-" in value:
        left, _, right = value.partition("-")
        first, last = parse_ipv4(left, field), parse_ipv4(right, field)
        if last < first:
            raise ValidationError(field, f"range {value!r} ends before it starts")
        return AddressRange(first=first, last=last)
    ip = parse_ipv4(value, field)
    return AddressRange(first=ip, last=ip)


# -- OverlayNetwork ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkSpec:
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    vni: int | None = None
    mtu: int | None = None
    exclude: tuple[AddressRange, ...] = ()

    @property
    def prefix_length(self) -> int:
        return self.cidr.prefixlen


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OverlayNetwork:
    name: str
    uid: str
    generation: int
    spec: NetworkSpec
    deleting: bool = False
    # What the operator has settled (from status); None until it has.
    vni: int | None = None
    mtu: int | None = None


_NETWORK_SPEC_FIELDS = frozenset({"cidr", "gateway", "vni", "mtu", "excludeIPs"})


def parse_network_spec(spec: Raw) -> NetworkSpec:
    """The rules of OverlayNetwork's spec that need no other object (crds/overlaynetworks.yaml)."""
    if not isinstance(spec, Mapping):
        raise ValidationError("spec", "must be an object")
    _no_unknown(spec, _NETWORK_SPEC_FIELDS, "spec")
    if "cidr" not in spec:
        raise ValidationError("spec.cidr", "is required")
    cidr = parse_cidr(spec["cidr"], "spec.cidr")
    gateway = None
    if spec.get("gateway") is not None:
        gateway = parse_ipv4(spec["gateway"], "spec.gateway")
        if gateway not in cidr:
            raise ValidationError("spec.gateway", f"{gateway} is outside spec.cidr {cidr}")
        if gateway in (cidr.network_address, cidr.broadcast_address):
            raise ValidationError(
                "spec.gateway", f"{gateway} is the network or broadcast address of {cidr}"
            )
    vni = _optional_int(spec.get("vni"), "spec.vni", c.MIN_VNI, c.MAX_VNI)
    mtu = _optional_int(spec.get("mtu"), "spec.mtu", c.MIN_MTU, c.MAX_MTU)
    raw_exclude = spec.get("excludeIPs")
    if raw_exclude is None:
        raw_exclude = []
    if not isinstance(raw_exclude, Sequence) or isinstance(raw_exclude, str):
        raise ValidationError("spec.excludeIPs", "must be a list of addresses, ranges or CIDRs")
    if len(raw_exclude) > MAX_EXCLUDE_IPS:
        raise ValidationError("spec.excludeIPs", f"has more than {MAX_EXCLUDE_IPS} entries")
    exclude: list[AddressRange] = []
    for i, item in enumerate(raw_exclude):
        field = f"spec.excludeIPs[{i}]"
        rng = parse_range(item, field)
        if rng.first not in cidr or rng.last not in cidr:
            raise ValidationError(field, f"{item} is not inside spec.cidr {cidr}")
        exclude.append(rng)
    return NetworkSpec(cidr=cidr, gateway=gateway, vni=vni, mtu=mtu, exclude=tuple(exclude))


def parse_overlay_network(obj: Raw) -> OverlayNetwork:
    """metadata.name is a DNS label: it becomes a label value and part of claim names."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    if not DNS_LABEL.fullmatch(name):
        raise ValidationError("metadata.name", f"{name!r} must be a DNS label of at most 63 chars")
    if obj.get("spec") is None:
        raise ValidationError("spec", "is required")
    status = obj.get("status") or {}
    return OverlayNetwork(
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        spec=parse_network_spec(obj["spec"]),
        deleting=bool(meta.get("deletionTimestamp")),
        vni=status.get("vni") if isinstance(status.get("vni"), int) else None,
        mtu=status.get("mtu") if isinstance(status.get("mtu"), int) else None,
    )


# -- Endpoint ------------------------------------------------------------------------------------


class TargetKind(str, enum.Enum):
    NETNS = "netns"  # a veth pair; the inner end moves into a network namespace
    HOST = "host"  # an interface in the host's own namespace
    HANDOFF = "handoff"  # a veth pair whose inner end a runtime moves (Docker's libnetwork)


TARGET_KINDS = tuple(kind.value for kind in TargetKind)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    kind: TargetKind
    interface: str
    netns_path: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EndpointSpec:
    network: str
    node: str
    target: Target
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EndpointStatus:
    """What the operator (ip .. mtu, Allocated) and the agent (vtep, Ready) reported."""

    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None
    prefix_length: int | None = None
    gateway: ipaddress.IPv4Address | None = None
    vni: int | None = None
    mtu: int | None = None
    vtep: ipaddress.IPv4Address | None = None
    conditions: tuple[Condition, ...] = ()

    def condition(self, kind: c.ConditionType) -> Condition | None:
        for cond in self.conditions:
            if cond.type == kind.value:
                return cond
        return None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Endpoint:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: EndpointSpec
    status: EndpointStatus
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    resource_version: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The VTEP the node's agent announced with its finalizer (annotation voile.dev/vtep), before
    # it plumbed anything: peers can forward to the Endpoint from its first packet.
    announced_vtep: ipaddress.IPv4Address | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def vtep(self) -> ipaddress.IPv4Address | None:
        """Where the Endpoint is reached: the VTEP its agent reported in status (what it
        realized), else the one it announced with its finalizer; None before either."""
        return self.status.vtep or self.announced_vtep


_ENDPOINT_SPEC_FIELDS = frozenset({"network", "node", "ip", "mac", "target"})


def parse_target(raw: object) -> Target:
    if raw is None:
        raise ValidationError(
            "spec.target", "is required: give netns {path, interface}, host {} or handoff {}"
        )
    if not isinstance(raw, Mapping):
        raise ValidationError("spec.target", "must be an object with netns, host or handoff")
    _no_unknown(raw, frozenset(TARGET_KINDS), "spec.target")
    given = [kind for kind in TargetKind if raw.get(kind.value) is not None]
    if len(given) != 1:
        raise ValidationError("spec.target", "give exactly one of netns, host or handoff")
    kind = given[0]
    body = raw[kind.value]
    where = f"spec.target.{kind.value}"
    if kind == TargetKind.NETNS:
        if not isinstance(body, Mapping):
            raise ValidationError(where, "must be an object {path, interface}")
        _no_unknown(body, frozenset({"path", "interface"}), where)
        path = body.get("path")
        if path is None:
            raise ValidationError(f"{where}.path", "is required")
        if (
            not isinstance(path, str)
            or not 2 <= len(path) <= MAX_NETNS_PATH
            or not path.startswith("/")
            or "/../" in f"{path}/"
        ):
            raise ValidationError(f"{where}.path", "must be an absolute path without ..")
        interface = _interface(body.get("interface"), f"{where}.interface")
        return Target(kind=kind, interface=interface, netns_path=path)
    if not isinstance(body, Mapping):
        raise ValidationError(where, "must be an object")
    _no_unknown(body, frozenset({"interface"}), where)
    interface = _interface(body.get("interface"), f"{where}.interface", default="")
    return Target(kind=kind, interface=interface)


def parse_endpoint_spec(spec: Raw) -> EndpointSpec:
    """The rules of Endpoint's spec that need no other object (crds/endpoints.yaml)."""
    if not isinstance(spec, Mapping):
        raise ValidationError("spec", "must be an object")
    _no_unknown(spec, _ENDPOINT_SPEC_FIELDS, "spec")
    network = spec.get("network")
    if network is None:
        raise ValidationError("spec.network", "is required")
    if not isinstance(network, str) or not DNS_LABEL.fullmatch(network):
        raise ValidationError("spec.network", f"{network!r} must name an OverlayNetwork")
    node = spec.get("node")
    if node is None:
        raise ValidationError("spec.node", "is required")
    if not isinstance(node, str) or len(node) > MAX_NODE_NAME or not DNS_SUBDOMAIN.fullmatch(node):
        raise ValidationError("spec.node", f"{node!r} must be a host (node) name")
    ip = parse_ipv4(spec["ip"], "spec.ip") if spec.get("ip") is not None else None
    mac = parse_mac(spec["mac"], "spec.mac") if spec.get("mac") is not None else None
    return EndpointSpec(
        network=network, node=node, target=parse_target(spec.get("target")), ip=ip, mac=mac
    )


def parse_endpoint(obj: Raw) -> Endpoint:
    meta = obj.get("metadata") or {}
    if obj.get("spec") is None:
        raise ValidationError("spec", "is required")
    status = obj.get("status") or {}
    annotations = _string_map(meta.get("annotations"))
    return Endpoint(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        spec=parse_endpoint_spec(obj["spec"]),
        status=parse_endpoint_status(status),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        resource_version=str(meta.get("resourceVersion") or ""),
        labels=_string_map(meta.get("labels")),
        annotations=annotations,
        announced_vtep=_lenient_ip(annotations.get(c.ANNOTATION_VTEP)),
    )


def parse_endpoint_status(status: Raw) -> EndpointStatus:
    """Status as the operator and the agent wrote it. Lenient: a field that is not what it
    should be reads as absent, so one bad write cannot wedge every reader."""
    if not isinstance(status, Mapping):
        return EndpointStatus()
    mac = status.get("mac")
    try:
        mac = parse_mac(mac, "status.mac") if mac is not None else None
    except ValidationError:
        mac = None
    return EndpointStatus(
        ip=_lenient_ip(status.get("ip")),
        mac=mac,
        prefix_length=_lenient_int(status.get("prefixLength")),
        gateway=_lenient_ip(status.get("gateway")),
        vni=_lenient_int(status.get("vni")),
        mtu=_lenient_int(status.get("mtu")),
        vtep=_lenient_ip(status.get("vtep")),
        conditions=parse_conditions(status.get("conditions")),
    )


# -- transition rules (the CRDs' `self == oldSelf` rules) -----------------------------------------


def check_network_update(old: NetworkSpec, new: NetworkSpec) -> None:
    """Raise unless ``new`` may replace ``old``: cidr never changes, vni never changes once set.

    Addresses already handed out would fall outside a new CIDR, and the VNI names the segment on
    the wire for every host; both changes need a new OverlayNetwork.
    """
    if new.cidr != old.cidr:
        raise ValidationError("spec.cidr", "is immutable; create a new OverlayNetwork instead")
    if old.vni is not None and new.vni != old.vni:
        raise ValidationError("spec.vni", "is immutable once set (neither changed nor removed)")


def check_endpoint_update(old: EndpointSpec, new: EndpointSpec) -> None:
    """Raise unless ``new`` may replace ``old``: an Endpoint's spec never changes.

    Moving an endpoint between networks or hosts is a delete and a create for every agent
    involved; making that explicit keeps each agent's view (its own node's endpoints) simple.
    """
    if new.network != old.network:
        raise ValidationError("spec.network", "is immutable; create a new Endpoint instead")
    if new.node != old.node:
        raise ValidationError("spec.node", "is immutable; create a new Endpoint instead")
    if new.ip != old.ip:
        raise ValidationError("spec.ip", "is immutable; create a new Endpoint instead")
    if new.mac != old.mac:
        raise ValidationError("spec.mac", "is immutable; create a new Endpoint instead")
    if new.target != old.target:
        raise ValidationError("spec.target", "is immutable; create a new Endpoint instead")


# -- helpers -------------------------------------------------------------------------------------


def _no_unknown(raw: Raw, known: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", f"unknown field; known: {sorted(known)}")


def _optional_int(value: object, field: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"{value!r} is not an integer")
    if not low <= value <= high:
        raise ValidationError(field, f"{value} is outside {low}..{high}")
    return value


def _interface(value: object, field: str, default: str = c.DEFAULT_INTERFACE) -> str:
    """Absent means ``default``; present must be a Linux interface name (IFNAMSIZ - 1 = 15)."""
    if value is None:
        return default
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise ValidationError(field, f"{value!r} is not an interface name (1-15 chars)")
    return value


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _lenient_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _lenient_ip(value: object) -> ipaddress.IPv4Address | None:
    """Status is written by us; tolerate garbage there rather than crash a reconcile loop."""
    try:
        return ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Invalid:
    """A watched object that does not parse (its name, which version, and why)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    error: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
