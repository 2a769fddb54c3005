"""From API objects (already fetched) to the agent's model. Pure.

Parsing happens once, here at the edge of planning, through the shared model
(``voile.api.model``); everything downstream works on frozen values. Namespace checks that need
the filesystem are done by the caller, which passes the resolved path in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voile.api import conditions, naming
from voile.api import constants as c
from voile.api.conditions import Condition
from voile.api.model import (
    Endpoint,
    OverlayNetwork,
    overlay_mtu,
    parse_endpoint,
)
from voile.errors import ValidationError
from voile_agent.planning.model import Attachment, RemoteEndpoint, Segment

Raw = Mapping[str, Any]


def segment(net: OverlayNetwork) -> Segment | None:
    """The datapath view of an OverlayNetwork, or None until the operator has settled its VNI.
    Also what of a network the agent depends on: an event that leaves it equal wakes nothing.

    The MTU is the operator's (status.mtu); before it reports one, the shared MTU rule."""
    if net.vni is None:
        return None
    return Segment(
        network=net.name,
        vni=net.vni,
        mtu=net.mtu or overlay_mtu(net.spec.mtu),
        cidr=net.spec.cidr,
        gateway=net.spec.gateway,
    )


def segments(nets: Iterable[OverlayNetwork]) -> dict[str, Segment]:
    result = {}
    for net in nets:
        seg = segment(net)
        if seg is not None:
            result[seg.network] = seg
    return result


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Waiting:
    """Why a local endpoint cannot be plumbed yet; ``reason`` goes into the Ready condition."""

    reason: str
    message: str


def parse(obj: Raw) -> Endpoint | None:
    """The shared model's Endpoint, or None for an object that breaks the schema."""
    try:
        return parse_endpoint(obj)
    except ValidationError:
        return None


def attachment(ep: Endpoint, segs: Mapping[str, Segment]) -> Attachment | Waiting:
    """An Endpoint of this host, ready to plumb once the operator has allocated it: status has
    ip, mac and prefixLength, and the VNI and MTU are known (from the Endpoint or its network)."""
    st = ep.status
    seg = segs.get(ep.spec.network)
    vni = seg.vni if seg else st.vni
    mtu = st.mtu or (seg.mtu if seg else None)
    missing = [
        name
        for name, value in (
            ("ip", st.ip),
            ("mac", st.mac),
            ("prefixLength", st.prefix_length),
            ("vni", vni),
            ("mtu", mtu),
        )
        if value is None
    ]
    allocated = st.condition(c.ConditionType.ALLOCATED)
    if missing or (allocated is not None and not allocated.is_true):
        return Waiting(
            reason=c.Reason.WAITING_FOR_ALLOCATION.value,
            message="waiting for the operator to allocate "
            + (", ".join(missing) if missing else "the address"),
        )
    assert st.ip and st.mac and st.prefix_length is not None and vni is not None and mtu
    port, peer, interface = naming.interfaces(ep)
    target = ep.spec.target
    return Attachment(
        uid=ep.uid,
        namespace=ep.namespace,
        name=ep.name,
        network=ep.spec.network,
        vni=vni,
        mtu=mtu,
        ip=st.ip,
        mac=st.mac,
        prefix_length=st.prefix_length,
        gateway=st.gateway or (seg.gateway if seg else None),
        kind=target.kind,
        interface=interface,
        port=port,
        peer=peer,
        netns_path=target.netns_path,
    )


def node_lost(ep: Endpoint) -> bool:
    """Whether the operator found the Endpoint's node lost (its agent's Lease stood still):
    ``Ready`` with reason ``NodeLost``, until that node's agent reports again."""
    ready = ep.status.condition(c.ConditionType.READY)
    return ready is not None and ready.reason == c.Reason.NODE_LOST.value


def slim_remote(ep: Endpoint) -> Endpoint:
    """What an agent keeps of an Endpoint it watches for forwarding (its networks' Endpoints):
    everything ``remote_endpoint`` and ``forwarding`` read, without the conditions other than a
    ``NodeLost`` verdict, labels, annotations and finalizers. At 10,000 watched Endpoints that is
    about 10 MB less per agent."""
    lost = ep.status.condition(c.ConditionType.READY) if node_lost(ep) else None
    return dataclasses.replace(
        ep,
        status=dataclasses.replace(ep.status, conditions=(lost,) if lost else ()),
        finalizers=(),
        labels={},
        annotations={},
    )


def parse_remote(obj: Mapping[str, Any]) -> Endpoint:
    """An Endpoint of a watched network, parsed and slimmed (``slim_remote``)."""
    return slim_remote(parse_endpoint(obj))


def remote_endpoint(
    ep: Endpoint, segs: Mapping[str, Segment], *, node: str
) -> RemoteEndpoint | None:
    """An endpoint of another host that forwarding can use: it has an address, a MAC, a VTEP,
    a VNI, is not being deleted and its node is not lost. Anything else is not (yet, or no
    longer) reachable: no unicast entry to it, and its VTEP leaves the flood list unless
    another live endpoint keeps it there."""
    if ep.deleting or ep.spec.node == node or node_lost(ep):
        return None
    st = ep.status
    seg = segs.get(ep.spec.network)
    vni = seg.vni if seg else st.vni
    vtep = ep.vtep
    if st.ip is None or vtep is None or st.mac is None or vni is None:
        return None
    return RemoteEndpoint(
        uid=ep.uid, network=ep.spec.network, vni=vni, ip=st.ip, mac=st.mac, vtep=vtep
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Forwarding:
    """What of an Endpoint the forwarding of the other hosts depends on: an event of another
    host's Endpoint that leaves it equal (a condition, health, a timestamp, a label) wakes no
    pass. It holds everything ``remote_endpoint`` reads."""

    uid: str
    node: str
    network: str
    vni: int | None
    ip: ipaddress.IPv4Address
    mac: str
    vtep: ipaddress.IPv4Address


def forwarding(ep: Endpoint) -> Forwarding | None:
    """None for an Endpoint no peer can forward to (no address, MAC or VTEP yet, being deleted,
    or its node lost): to the plan it is the same as absent (``remote_endpoint``)."""
    st, vtep = ep.status, ep.vtep
    if ep.deleting or node_lost(ep) or st.ip is None or st.mac is None or vtep is None:
        return None
    return Forwarding(
        uid=ep.uid,
        node=ep.spec.node,
        network=ep.spec.network,
        vni=st.vni,
        ip=st.ip,
        mac=st.mac,
        vtep=vtep,
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


def stale_ports(observed: Iterable[tuple[str, str]], wanted: Sequence[Attachment]) -> list[str]:
    """Of the (port, endpoint uid) pairs the datapath holds (ours only), those no wanted
    attachment explains. Sorted, so that logs and tests are stable."""
    keep = {(a.port, a.uid) for a in wanted}
    return sorted({port for port, uid in observed if (port, uid) not in keep})


def ready(reason: str, message: str, generation: int = 0) -> Condition:
    return conditions.make(
        c.ConditionType.READY, reason == c.Reason.READY.value, reason, message, generation
    )


def status_is_current(ep: Endpoint, *, vtep: str | None, cond: Condition) -> bool:
    """Whether the Endpoint already shows this vtep and condition (no write needed)."""
    if vtep is not None and str(ep.status.vtep) != vtep:
        return False
    return cond.same(conditions.find(ep.status.conditions, cond.type))
