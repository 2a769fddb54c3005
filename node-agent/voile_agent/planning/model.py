"""The agent's backend-neutral model: what a host should carry, computed from API objects alone.

It is what neutron's l2pop forwarding entries are to its OVS and Linux-bridge agents: per network
segment (VNI, MTU, gateway) the local attachments, the remote endpoints (MAC, IP, VTEP) and the
flood list (the VTEPs that host the network). Every datapath backend renders the same
``HostPlan`` its own way (OpenFlow rules on one VXLAN port; tc programs and maps on a VXLAN
device); nothing here knows Open vSwitch or BPF. Frozen values, parsed once at the edge.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from voile.api.model import TargetKind

# Tag on kernel links the agent creates (IFLA_IFALIAS = "voile:<endpoint uid>"), so that a restart
# and cleanup find them again, and nothing untagged is ever deleted.
IFALIAS_PREFIX = "voile:"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Segment:
    """One OverlayNetwork as the datapath sees it: only settled values (status vni and mtu)."""

    network: str
    vni: int
    mtu: int
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Attachment:
    """An allocated Endpoint of this host: everything needed to plumb it.

    ``port`` is the host-side interface the datapath forwards to (the outer veth end, or the
    host interface of a host target); ``peer`` the temporary name of a veth's inner end before
    it moves; ``interface`` the name the workload sees (inside the namespace, the host
    interface, or the end handed off to a runtime)."""

    uid: str
    namespace: str
    name: str
    network: str
    vni: int
    mtu: int
    ip: ipaddress.IPv4Address
    mac: str
    prefix_length: int
    gateway: ipaddress.IPv4Address | None
    kind: TargetKind
    interface: str
    port: str
    peer: str
    netns_path: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RemoteEndpoint:
    """An endpoint of the same network on another host, learned from its status."""

    uid: str
    network: str
    vni: int
    ip: ipaddress.IPv4Address
    mac: str
    vtep: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SegmentPlan:
    """What one network needs on this host: its local attachments (those the datapath holds),
    the remote endpoints to forward to (one per MAC; a local MAC wins) and the flood list."""

    segment: Segment
    local: tuple[Attachment, ...]
    remote: tuple[RemoteEndpoint, ...]
    flood: tuple[ipaddress.IPv4Address, ...]

    @property
    def vni(self) -> int:
        return self.segment.vni


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HostPlan:
    """The whole desired forwarding state of one host.

    ``complete`` is False while some watch of remote endpoints has not listed yet: a backend
    then adds what is missing but removes no remote state (a partial view would look like
    remote endpoints going away)."""

    vtep: ipaddress.IPv4Address
    segments: tuple[SegmentPlan, ...]
    complete: bool = True

    @property
    def remote_vteps(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(sorted({v for seg in self.segments for v in seg.flood}))

    def segment(self, vni: int) -> SegmentPlan | None:
        for seg in self.segments:
            if seg.vni == vni:
                return seg
        return None
