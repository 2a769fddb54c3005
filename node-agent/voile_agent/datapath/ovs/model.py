"""What the Open vSwitch backend adds to the neutral model: OVSDB tags, datapath types, port
kinds and roles, and the ports it observes. Pure."""

from __future__ import annotations

import dataclasses
import enum

from voile.api.model import TargetKind
from voile_agent.planning.model import Attachment

# Tags on everything the backend creates in OVSDB. Only rows carrying OWNER_KEY=OWNER_VALUE are
# ever deleted (neutron's is_deletable_port, Antrea's interface store).
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


class DatapathType(str, enum.Enum):
    SYSTEM = "system"  # the OVS kernel module (production)
    NETDEV = "netdev"  # the userspace datapath (hosts without the module, tests, the lab)


class PortRole(str, enum.Enum):
    TUNNEL = "tunnel"
    ENDPOINT = "endpoint"
    INTEGRATION = "integration"
    UNDERLAY = "underlay"
    PROBE = "probe"  # the internal port the agent sends and receives data-path probes on


class PortKind(str, enum.Enum):
    VETH = "veth"  # the outer end of a veth pair (netns and handoff targets)
    INTERNAL = "internal"  # an OVS internal port in the host's namespace (host targets)


def port_kind(attachment: Attachment) -> PortKind:
    return PortKind.INTERNAL if attachment.kind == TargetKind.HOST else PortKind.VETH


def endpoint_ids(attachment: Attachment) -> dict[str, str]:
    """external_ids of an endpoint's Port and Interface rows (iface-id and attached-mac are
    the keys other OVS tools, e.g. ovn-controller and ovs-tcpdump users, look for)."""
    return {
        OWNER_KEY: OWNER_VALUE,
        EXT_ROLE: PortRole.ENDPOINT.value,
        EXT_ENDPOINT: attachment.key,
        EXT_ENDPOINT_UID: attachment.uid,
        EXT_NETWORK: attachment.network,
        "iface-id": attachment.uid,
        "attached-mac": attachment.mac,
    }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BridgePort:
    """A port found on a bridge (ours or not: the owner tag says)."""

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
