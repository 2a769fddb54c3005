"""Host-level datapath set-up and teardown: the underlay bridge (netdev), the integration bridge and
the tunnel port. Shared by ``voile-agent run`` (every pass, idempotent) and ``voile-agent cleanup``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

from voile.errors import DatapathError
from voile_agent.appliers import netlink
from voile_agent.appliers.openflow import OpenFlow
from voile_agent.appliers.ovs import Ovs
from voile_agent.planning.model import (
    EXT_UNDERLAY_ADDRS,
    EXT_UNDERLAY_CONF,
    EXT_UNDERLAY_IF,
    EXT_UNDERLAY_ROUTES,
    UNDERLAY_NIC_CONF,
    DatapathType,
    PortRole,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DatapathSettings:
    bridge: str = "br-voile"
    datapath_type: DatapathType = DatapathType.SYSTEM
    vxlan_port: int = 4789
    tunnel_port: str = "vxlan-voile"
    ovsdb: str = "unix:/run/openvswitch/db.sock"
    ovs_rundir: str = "/run/openvswitch"
    underlay_interface: str | None = None
    underlay_bridge: str = "br-underlay"


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _conf(value: str | None) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in _split(value))


def ensure_underlay(ovs: Ovs, s: DatapathSettings) -> None:
    """netdev datapath: the underlay interface on an OVS bridge that holds the host's address
    (the userspace datapath routes the outer packets itself). Idempotent; the original addresses
    and gateway routes are recorded on the bridge before they move, so cleanup can put them back.
    """
    interface = s.underlay_interface
    if s.datapath_type != DatapathType.NETDEV or not interface:
        return
    row = ovs.bridge(s.underlay_bridge)
    recorded = dict(row["external_ids"]) if row else {}
    if recorded.get(EXT_UNDERLAY_ADDRS):
        addresses = _split(recorded.get(EXT_UNDERLAY_ADDRS))
        routes = _split(recorded.get(EXT_UNDERLAY_ROUTES))
    else:
        addresses = netlink.ipv4_addresses(interface)
        routes = netlink.gateway_routes(interface)
        if not addresses:
            raise DatapathError(f"underlay interface {interface} has no IPv4 address to move")
    # Recorded once, before the first change, like the addresses.
    conf = _conf(recorded.get(EXT_UNDERLAY_CONF)) or netlink.ipv4_conf(
        interface, [k for k, _ in UNDERLAY_NIC_CONF]
    )
    # The bridge takes over the host's identity on the wire: its address and its NIC's MAC, so
    # peers' ARP and OVS tunnel-neighbour caches stay right across agent and host restarts.
    ovs.ensure_bridge(
        s.underlay_bridge,
        DatapathType.NETDEV,
        role=PortRole.UNDERLAY,
        secure=False,
        hwaddr=netlink.mac_of(interface),
        extra_ids={
            EXT_UNDERLAY_IF: interface,
            EXT_UNDERLAY_ADDRS: ",".join(addresses),
            EXT_UNDERLAY_ROUTES: ",".join(routes),
            EXT_UNDERLAY_CONF: ",".join(f"{k}={v}" for k, v in sorted(conf.items())),
        },
    )
    mtu = netlink.mtu_of(interface)
    if mtu:
        ovs.set_mtu_request(s.underlay_bridge, mtu)
    ovs.ensure_underlay_port(s.underlay_bridge, interface)
    netlink.move_addresses(interface, s.underlay_bridge, addresses, routes)
    netlink.set_ipv4_conf(interface, dict(UNDERLAY_NIC_CONF))


def undo_underlay(ovs: Ovs, s: DatapathSettings) -> bool:
    """Delete the underlay bridge (only if ours) and give the interface its addresses back."""
    row = ovs.bridge(s.underlay_bridge)
    if row is None:
        return False
    ids = dict(row["external_ids"])
    if not ovs.delete_bridge(s.underlay_bridge):
        return False
    interface = ids.get(EXT_UNDERLAY_IF)
    if interface:
        netlink.move_addresses(
            s.underlay_bridge,
            interface,
            _split(ids.get(EXT_UNDERLAY_ADDRS)),
            _split(ids.get(EXT_UNDERLAY_ROUTES)),
        )
        conf = _conf(ids.get(EXT_UNDERLAY_CONF))
        if conf and netlink.link_exists(interface):
            netlink.set_ipv4_conf(interface, conf)
    log.info("underlay restored interface=%s", interface)
    return True


def resolve_vtep(
    ovs: Ovs, s: DatapathSettings, *, vtep_ip: str | None, vtep_interface: str | None
) -> ipaddress.IPv4Address:
    """The VTEP address: given, or the first IPv4 address of a named interface. When that
    interface is the underlay one whose address the agent moved, the underlay bridge has it."""
    if vtep_ip:
        return ipaddress.IPv4Address(vtep_ip)
    candidates = [vtep_interface] if vtep_interface else []
    if vtep_interface and vtep_interface == s.underlay_interface:
        candidates.append(s.underlay_bridge)
    for name in candidates:
        if name is None:
            continue
        addrs = netlink.ipv4_addresses(name)
        if addrs:
            return ipaddress.IPv4Address(addrs[0].split("/")[0])
    raise DatapathError(f"no IPv4 address on {vtep_interface!r} to use as VTEP; give --vtep-ip")


def ensure_integration(ovs: Ovs, s: DatapathSettings, vtep: ipaddress.IPv4Address) -> None:
    """The integration bridge and its single flow-based VXLAN port. Idempotent."""
    ovs.ensure_bridge(s.bridge, s.datapath_type, role=PortRole.INTEGRATION, secure=True)
    ovs.ensure_tunnel_port(s.bridge, s.tunnel_port, local_ip=str(vtep), dst_port=s.vxlan_port)


async def cleanup(ovs: Ovs, s: DatapathSettings) -> dict[str, int]:
    """Remove everything Voile owns on this host: flows, endpoint ports and their veths, the
    tunnel port, the integration bridge, the underlay bridge (addresses moved back). Idempotent.
    """
    removed = {"ports": 0, "links": 0, "bridges": 0}
    if await asyncio.to_thread(ovs.bridge, s.bridge) is not None:
        try:
            await OpenFlow(s.bridge, s.ovs_rundir).delete_all()
        except DatapathError as exc:
            log.warning("could not delete flows bridge=%s error=%s", s.bridge, exc)
    for port in await asyncio.to_thread(ovs.ports, s.bridge):
        if port.owned and await asyncio.to_thread(ovs.delete_port, port.name):
            removed["ports"] += 1
    for name in await asyncio.to_thread(netlink.agent_links):
        if await asyncio.to_thread(netlink.unplumb, name):
            removed["links"] += 1
    if await asyncio.to_thread(ovs.delete_bridge, s.bridge):
        removed["bridges"] += 1
    if await asyncio.to_thread(undo_underlay, ovs, s):
        removed["bridges"] += 1
    return removed
