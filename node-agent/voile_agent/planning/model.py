"""The agent's internal model: what a host is configured with, what it knows about networks and
endpoints (local and remote), and what it wants on the datapath. Frozen, parsed once at the edge.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress

from voile.api import constants as c
from voile.api.model import TargetKind

# Tags on everything the agent creates in OVSDB. Only rows carrying OWNER_KEY=OWNER_VALUE are
# ever deleted by the agent (neutron's is_deletable_port, Antrea's interface store).
OWNER_KEY = "voile.dev/owner"
OWNER_VALUE = "voile"
EXT_ENDPOINT = "voile.dev/endpoint"  # "<namespace>/<name>"
EXT_ENDPOINT_UID = "voile.dev/endpoint-uid"
EXT_NETWORK = "voile.dev/network"
EXT_ROLE = "voile.dev/role"  # tunnel | endpoint | integration | underlay
EXT_UNDERLAY_IF = "voile.dev/underlay-interface"
EXT_UNDERLAY_ADDRS = "voile.dev/underlay-addresses"
EXT_UNDERLAY_ROUTES = "voile.dev/underlay-routes"
EXT_UNDERLAY_CONF = "voile.dev/underlay-ipv4-conf"  # the NIC's settings before the agent's

# netdev datapath: the underlay NIC's IPv4 settings while Open vSwitch owns it. The kernel still
# gets a copy of every frame the NIC receives (the userspace datapath reads them through
# AF_PACKET), and with the address moved to the bridge the weak host model would make it answer
# ARP and pings a second time and send an ICMP port-unreachable for each VXLAN packet. With a
# strict reverse-path filter (every underlay route leaves through the bridge) and arp_ignore=8
# the kernel drops its copy.
UNDERLAY_NIC_CONF = (("rp_filter", "1"), ("arp_ignore", "8"))

# Tag on kernel links the agent creates (IFLA_IFALIAS), so that cleanup and restart find them.
IFALIAS_PREFIX = "voile:"


class DatapathType(str, enum.Enum):
    SYSTEM = "system"  # the OVS kernel module (production)
    NETDEV = "netdev"  # the userspace datapath (hosts without the module, tests, the lab)


class PortRole(str, enum.Enum):
    TUNNEL = "tunnel"
    ENDPOINT = "endpoint"
    INTEGRATION = "integration"
    UNDERLAY = "underlay"


class PortKind(str, enum.Enum):
    VETH = "veth"  # the outer end of a veth pair whose inner end lives in a namespace
    INTERNAL = "internal"  # an OVS internal port in the host's namespace (target: host)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NodeConfig:
    """How this host is set up; built by main from flags/environment."""

    node: str
    vtep: ipaddress.IPv4Address
    bridge: str = "br-voile"
    datapath_type: DatapathType = DatapathType.SYSTEM
    vxlan_port: int = c.DEFAULT_VXLAN_PORT
    tunnel_port: str = "vxlan-voile"
    underlay_interface: str | None = None
    underlay_bridge: str = "br-underlay"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkInfo:
    """What the datapath needs from an OverlayNetwork: only settled values (status vni/mtu)."""

    name: str
    vni: int
    mtu: int
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LocalEndpoint:
    """An allocated Endpoint of this host, with everything needed to plumb it."""

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
    netns_path: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RemoteEndpoint:
    """An endpoint of the same network on another host: learned from its status (l2 population)."""

    uid: str
    network: str
    vni: int
    ip: ipaddress.IPv4Address
    mac: str
    vtep: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DesiredPort:
    """One endpoint port on the integration bridge, and the interface behind it."""

    name: str  # OVS port name; for veths also the outer end's kernel name
    peer_name: str  # the inner end's temporary name in the host namespace before the move
    kind: PortKind
    endpoint: LocalEndpoint

    def external_ids(self) -> dict[str, str]:
        ep = self.endpoint
        return {
            OWNER_KEY: OWNER_VALUE,
            EXT_ROLE: PortRole.ENDPOINT.value,
            EXT_ENDPOINT: ep.key,
            EXT_ENDPOINT_UID: ep.uid,
            EXT_NETWORK: ep.network,
            "iface-id": ep.uid,
            "attached-mac": ep.mac,
        }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ObservedPort:
    """A port found on the integration bridge (ours or not: the owner tag says)."""

    name: str
    ofport: int | None
    external_ids: tuple[tuple[str, str], ...] = ()

    @property
    def ids(self) -> dict[str, str]:
        return dict(self.external_ids)

    @property
    def owned(self) -> bool:
        return self.ids.get(OWNER_KEY) == OWNER_VALUE

    @property
    def role(self) -> str | None:
        return self.ids.get(EXT_ROLE)

    @property
    def endpoint_uid(self) -> str | None:
        return self.ids.get(EXT_ENDPOINT_UID)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NextHop:
    """Where the outer packets to one remote VTEP go first: the VTEP itself when it is on-link,
    else the gateway. The userspace (netdev) datapath resolves this address in its own tunnel
    neighbour cache, per bridge, and drops the packet that misses it."""

    vtep: ipaddress.IPv4Address
    address: ipaddress.IPv4Address
    interface: str
    source: ipaddress.IPv4Address
    mac: str
