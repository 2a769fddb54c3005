"""From API objects (already fetched) to the agent's model, and from the model to desired ports.

Parsing happens once, here at the edge of planning; everything downstream works on frozen values.
Pure: no I/O. Namespace checks that need the filesystem are done by the caller, which passes the
resolved path in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voile.api import constants as c
from voile.api.model import Endpoint, TargetKind, parse_endpoint, parse_overlay_network
from voile.errors import ValidationError
from voile_agent.planning import naming
from voile_agent.planning.model import (
    DesiredPort,
    LocalEndpoint,
    NetworkInfo,
    NextHop,
    ObservedPort,
    PortKind,
    PortRole,
    RemoteEndpoint,
)

Raw = Mapping[str, Any]


def network_info(obj: Raw) -> NetworkInfo | None:
    """The datapath view of an OverlayNetwork, or None until the operator has settled its VNI.

    The MTU is the operator's (status.mtu); before it reports one, spec.mtu or the default
    underlay MTU minus the VXLAN overhead.
    """
    try:
        net = parse_overlay_network(obj)
    except ValidationError:
        return None
    if net.vni is None:
        return None
    mtu = net.mtu or net.spec.mtu or c.DEFAULT_UNDERLAY_MTU - c.VXLAN_OVERHEAD_IPV4
    return NetworkInfo(
        name=net.name, vni=net.vni, mtu=mtu, cidr=net.spec.cidr, gateway=net.spec.gateway
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Waiting:
    """Why a local endpoint cannot be plumbed yet; ``reason`` goes into the Ready condition."""

    reason: str
    message: str


def _status_int(status: Raw, key: str) -> int | None:
    value = status.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _status_ip(status: Raw, key: str) -> ipaddress.IPv4Address | None:
    value = status.get(key)
    try:
        return ipaddress.IPv4Address(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def _allocated_false(status: Raw) -> bool:
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == c.ConditionType.ALLOCATED.value:
            return bool(cond.get("status") != c.ConditionStatus.TRUE.value)
    return False


def parse(obj: Raw) -> Endpoint | None:
    """The shared model's Endpoint, or None for an object that breaks the schema."""
    try:
        return parse_endpoint(obj)
    except ValidationError:
        return None


def local_endpoint(obj: Raw, networks: Mapping[str, NetworkInfo]) -> LocalEndpoint | Waiting:
    """An Endpoint of this host, ready to plumb once the operator has allocated it: status has
    ip, mac, prefixLength, and the VNI and MTU are known (from the Endpoint or its network)."""
    ep = parse(obj)
    if ep is None:
        return Waiting(reason=c.Reason.INVALID_SPEC.value, message="the Endpoint spec is invalid")
    status: Raw = obj.get("status") or {}
    ip, mac = _status_ip(status, "ip"), status.get("mac")
    prefix = _status_int(status, "prefixLength")
    net = networks.get(ep.spec.network)
    vni = net.vni if net else _status_int(status, "vni")
    mtu = _status_int(status, "mtu") or (net.mtu if net else None)
    missing = [
        name
        for name, value in (
            ("ip", ip),
            ("mac", mac),
            ("prefixLength", prefix),
            ("vni", vni),
            ("mtu", mtu),
        )
        if value is None
    ]
    if missing or _allocated_false(status) or not isinstance(mac, str):
        return Waiting(
            reason=c.Reason.WAITING_FOR_ALLOCATION.value,
            message="waiting for the operator to allocate "
            + (", ".join(missing) if missing else "the address"),
        )
    assert ip is not None and prefix is not None and vni is not None and mtu is not None
    gateway = _status_ip(status, "gateway") or (net.gateway if net else None)
    return LocalEndpoint(
        uid=ep.uid,
        namespace=ep.namespace,
        name=ep.name,
        network=ep.spec.network,
        vni=vni,
        mtu=mtu,
        ip=ip,
        mac=mac.lower(),
        prefix_length=prefix,
        gateway=gateway,
        kind=ep.spec.target.kind,
        interface=ep.spec.target.interface,
        netns_path=ep.spec.target.netns_path,
    )


def remote_endpoint(
    obj: Raw, networks: Mapping[str, NetworkInfo], *, node: str
) -> RemoteEndpoint | None:
    """An endpoint of another host that forwarding can use: it has an address, a MAC, a VTEP,
    a VNI, and is not being deleted. Anything else is not (yet) reachable."""
    ep = parse(obj)
    if ep is None or ep.deleting or ep.spec.node == node:
        return None
    status: Raw = obj.get("status") or {}
    ip, vtep, mac = _status_ip(status, "ip"), _status_ip(status, "vtep"), status.get("mac")
    net = networks.get(ep.spec.network)
    vni = net.vni if net else _status_int(status, "vni")
    if ip is None or vtep is None or not isinstance(mac, str) or vni is None:
        return None
    return RemoteEndpoint(
        uid=ep.uid, network=ep.spec.network, vni=vni, ip=ip, mac=mac.lower(), vtep=vtep
    )


def netns_allowed(resolved_path: str, allowed_dirs: Iterable[str]) -> bool:
    """Whether a namespace path (symlinks and '..' already resolved by the caller) lies inside
    one of the allowed directories (themselves resolved). A user's Endpoint must not reach into
    arbitrary namespaces of the host such as /proc/1/ns/net."""
    path = posixpath.normpath(resolved_path)
    for allowed in allowed_dirs:
        base = posixpath.normpath(allowed)
        if path != base and path.startswith(base.rstrip("/") + "/"):
            return True
    return False


def desired_port(endpoint: LocalEndpoint) -> DesiredPort:
    kind = PortKind.INTERNAL if endpoint.kind == TargetKind.HOST else PortKind.VETH
    name = naming.port_name(endpoint.uid)
    if kind == PortKind.INTERNAL and endpoint.interface:
        name = endpoint.interface
    return DesiredPort(
        name=name, peer_name=naming.peer_name(endpoint.uid), kind=kind, endpoint=endpoint
    )


def desired_port_name(endpoint: Endpoint) -> str:
    """The port name an Endpoint has (or would have) on this host, from its spec alone."""
    target = endpoint.spec.target
    if target.kind == TargetKind.HOST and target.interface:
        return target.interface
    return naming.port_name(endpoint.uid)


def stale_ports(observed: Iterable[ObservedPort], desired: Sequence[DesiredPort]) -> list[str]:
    """Endpoint ports the agent owns that no desired endpoint explains; never a port without
    the owner tag. Sorted, so that logs and tests are stable."""
    keep = {(p.name, p.endpoint.uid) for p in desired}
    return sorted(
        p.name
        for p in observed
        if p.owned
        and p.role == PortRole.ENDPOINT.value
        and (p.name, p.endpoint_uid or "") not in keep
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str

    def as_api(
        self, *, now: str, previous: Mapping[str, Any] | None, generation: int
    ) -> dict[str, Any]:
        """The metav1.Condition; lastTransitionTime moves only when the status changes."""
        since = now
        if (
            previous
            and previous.get("status") == self.status
            and previous.get("lastTransitionTime")
        ):
            since = str(previous["lastTransitionTime"])
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }


def ready(reason: str, message: str) -> Condition:
    ok = reason == c.Reason.READY.value
    return Condition(
        type=c.ConditionType.READY.value,
        status=(c.ConditionStatus.TRUE if ok else c.ConditionStatus.FALSE).value,
        reason=reason,
        message=message,
    )


def status_is_current(obj: Raw, *, vtep: str | None, cond: Condition) -> bool:
    """Whether the Endpoint already shows this vtep and Ready condition (no write needed)."""
    status: Raw = obj.get("status") or {}
    if vtep is not None and status.get("vtep") != vtep:
        return False
    generation = int((obj.get("metadata") or {}).get("generation", 0) or 0)
    for existing in status.get("conditions") or ():
        if isinstance(existing, Mapping) and existing.get("type") == cond.type:
            return bool(
                existing.get("status") == cond.status
                and existing.get("reason") == cond.reason
                and existing.get("message") == cond.message
                and existing.get("observedGeneration") == generation
            )
    return False


def previous_condition(obj: Raw, type_: str) -> Mapping[str, Any] | None:
    for existing in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(existing, Mapping) and existing.get("type") == type_:
            return existing
    return None


def without_finalizer(finalizers: Sequence[str], name: str) -> list[str]:
    return [f for f in finalizers if f != name]


def unresolved_next_hops(
    hops: Iterable[NextHop], cache: Mapping[tuple[str, ipaddress.IPv4Address], str]
) -> list[NextHop]:
    """The next hops the tunnel neighbour cache does not hold yet, one per (interface, address),
    in a stable order. ``cache`` maps (bridge, address) to MAC as ``tnl/neigh/show`` lists it."""
    seen: set[tuple[str, ipaddress.IPv4Address]] = set()
    missing: list[NextHop] = []
    for hop in sorted(hops, key=lambda h: (h.interface, h.address, h.vtep)):
        key = (hop.interface, hop.address)
        if key in seen or key in cache:
            continue
        seen.add(key)
        missing.append(hop)
    return missing
