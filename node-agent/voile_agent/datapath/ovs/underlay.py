"""The netdev datapath's underlay bridge: the host's NIC on an OVS bridge that takes over its
addresses and MAC (the userspace datapath routes and resolves the outer packets itself), and the
way back. Shared by the backend's ``ensure_host`` (every pass, idempotent) and ``cleanup``.
"""

from __future__ import annotations

import ipaddress
import logging

from voile.errors import DatapathError
from voile_agent.datapath.ovs.model import (
    EXT_UNDERLAY_ADDRS,
    EXT_UNDERLAY_CONF,
    EXT_UNDERLAY_IF,
    EXT_UNDERLAY_ROUTES,
    UNDERLAY_NIC_CONF,
    DatapathType,
    PortRole,
)
from voile_agent.datapath.ovs.ovsdb import Ovs
from voile_agent.host import netlink

log = logging.getLogger(__name__)


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _conf(value: str | None) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in _split(value))


def ensure_underlay(
    ovs: Ovs, *, interface: str | None, bridge: str, datapath_type: DatapathType
) -> None:
    """netdev datapath: the underlay interface on an OVS bridge that holds the host's address
    (the userspace datapath routes the outer packets itself). Idempotent; the original addresses
    and gateway routes are recorded on the bridge before they move, so cleanup can put them back.
    """
    if datapath_type != DatapathType.NETDEV or not interface:
        return
    row = ovs.bridge(bridge)
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
        bridge,
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
        ovs.set_mtu_request(bridge, mtu)
    ovs.ensure_underlay_port(bridge, interface)
    netlink.move_addresses(interface, bridge, addresses, routes)
    netlink.set_ipv4_conf(interface, dict(UNDERLAY_NIC_CONF))


def undo_underlay(ovs: Ovs, bridge: str) -> bool:
    """Delete the underlay bridge (only if ours) and give the interface its addresses back.
    Idempotent: False when there was nothing of ours."""
    row = ovs.bridge(bridge)
    if row is None:
        return False
    ids = dict(row["external_ids"])
    if not ovs.delete_bridge(bridge):
        return False
    interface = ids.get(EXT_UNDERLAY_IF)
    if interface:
        netlink.move_addresses(
            bridge,
            interface,
            _split(ids.get(EXT_UNDERLAY_ADDRS)),
            _split(ids.get(EXT_UNDERLAY_ROUTES)),
        )
        conf = _conf(ids.get(EXT_UNDERLAY_CONF))
        if conf and netlink.link_exists(interface):
            netlink.set_ipv4_conf(interface, conf)
    log.info("underlay restored interface=%s", interface)
    return True


def vtep_address(
    *, vtep_ip: str | None, vtep_interface: str | None, underlay: str | None, bridge: str
) -> ipaddress.IPv4Address:
    """The VTEP address: given, or the first IPv4 address of a named interface. When that
    interface is the underlay one whose address moved, the underlay bridge has it."""
    if vtep_ip:
        return ipaddress.IPv4Address(vtep_ip)
    candidates = [vtep_interface] if vtep_interface else []
    if vtep_interface and vtep_interface == underlay:
        candidates.append(bridge)
    for name in candidates:
        if name is None:
            continue
        addrs = netlink.ipv4_addresses(name)
        if addrs:
            return ipaddress.IPv4Address(addrs[0].split("/")[0])
    raise DatapathError(f"no IPv4 address on {vtep_interface!r} to use as VTEP; give --vtep-ip")
