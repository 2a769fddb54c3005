"""The kernel side through pyroute2: veth pairs, the move into the target namespace, addresses,
MTU, routes, and the underlay address move of the netdev datapath.

Blocking calls; the controller runs them with ``asyncio.to_thread``. Every verb is idempotent:
it converges an existing link instead of failing on EEXIST, and "already gone" (ENODEV/ENOENT) on
delete is success. Links the agent creates carry an IFLA_IFALIAS tag (``voile:<uid>``): only
tagged links are ever deleted, and a foreign interface of the requested name in a namespace is
refused, never taken over.

TX checksum offload is turned off with ``ethtool -K`` (through ``nsenter`` for a namespace) when
the datapath is netdev: AF_PACKET hands the userspace datapath packets with partial checksums,
and TCP then fails while ping works.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from voile.api import constants as c
from voile.errors import DatapathError, PlumbingError
from voile.netns import inside_netns
from voile_agent.planning.model import IFALIAS_PREFIX, DesiredPort, NextHop
from voile_agent.planning.state import netns_allowed

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_NETNS_DIRS = ("/run/netns", "/var/run/netns")


def alias_for(uid: str) -> str:
    return f"{IFALIAS_PREFIX}{uid}"


def check_netns(path: str, allowed_dirs: Sequence[str]) -> str:
    """The resolved namespace path, or PlumbingError NamespaceNotAllowed / NamespaceNotFound.

    Symlinks and '..' are resolved before the check, on both sides, so a link inside an allowed
    directory that points at /proc/1/ns/net is refused."""
    allowed = [os.path.realpath(d) for d in allowed_dirs]
    outside = PlumbingError(
        c.Reason.NAMESPACE_NOT_ALLOWED.value,
        f"namespace path {path} is outside the agent's allowed directories "
        f"{', '.join(allowed_dirs)}",
    )
    if not netns_allowed(os.path.normpath(path), [*allowed, *allowed_dirs]):
        raise outside
    try:
        resolved = os.path.realpath(path, strict=False)
    except OSError as exc:  # e.g. a link to /proc/<pid>/ns/net that cannot be followed
        raise PlumbingError(
            c.Reason.NAMESPACE_NOT_ALLOWED.value,
            f"namespace path {path} cannot be resolved ({exc.strerror}); it may point outside "
            f"the agent's allowed directories {', '.join(allowed_dirs)}",
        ) from exc
    if not netns_allowed(resolved, allowed):
        raise outside
    if not os.path.exists(resolved):
        raise PlumbingError(c.Reason.NAMESPACE_NOT_FOUND.value, f"namespace {path} does not exist")
    return resolved


def _ipr_in(netns: str) -> Any:
    """An IPRoute whose netlink socket lives in ``netns``.

    Why not ``IPRoute(netns=...)``: pyroute2 forks a helper process for it, and the forked child
    inherits asyncio's signal wake-up fd, so its exit looks like a SIGTERM to the agent's loop.
    Instead this thread enters the namespace, opens the socket, and comes back (setns is per
    thread; the socket keeps its namespace)."""
    with inside_netns(netns):
        return IPRoute()


@contextlib.contextmanager
def _ipr(netns: str | None = None) -> Iterator[Any]:
    try:
        ipr = _ipr_in(netns) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        if netns:
            raise PlumbingError(
                c.Reason.NAMESPACE_NOT_FOUND.value, f"cannot enter namespace {netns}: {exc}"
            ) from exc
        raise
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link(ipr: Any, index: int) -> Any:
    return ipr.get_links(index)[0]


def _alias(link: Any) -> str:
    return str(link.get_attr("IFLA_IFALIAS") or "")


def _ipv4_addresses(ipr: Any, index: int) -> list[str]:
    return [
        f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index, family=2)
    ]


def _tx_off(interface: str, netns: str | None) -> None:
    cmd = ["ethtool", "-K", interface, "tx", "off"]
    if netns:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise DatapathError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def _converge_inner(ipr: Any, index: int, port: DesiredPort, name: str) -> None:
    """Name, MAC, MTU, tag, address, up and default route of an interface we own."""
    ep = port.endpoint
    link = _link(ipr, index)
    want_alias = alias_for(ep.uid)
    if (
        link.get_attr("IFLA_IFNAME") != name
        or link.get_attr("IFLA_ADDRESS") != ep.mac
        or link.get_attr("IFLA_MTU") != ep.mtu
        or _alias(link) != want_alias
    ):
        ipr.link("set", index=index, state="down")
        ipr.link("set", index=index, ifname=name, address=ep.mac, mtu=ep.mtu, ifalias=want_alias)
    want = f"{ep.ip}/{ep.prefix_length}"
    for addr in _ipv4_addresses(ipr, index):
        if addr != want:
            ip, _, prefix = addr.partition("/")
            ipr.addr("del", index=index, address=ip, prefixlen=int(prefix))
    if want not in _ipv4_addresses(ipr, index):
        ipr.addr("add", index=index, address=str(ep.ip), prefixlen=ep.prefix_length)
    ipr.link("set", index=index, state="up")
    if ep.gateway is not None and ep.gateway in ipaddress.IPv4Network(want, strict=False):
        routes = ipr.get_default_routes(family=2)
        if not any(r.get_attr("RTA_GATEWAY") == str(ep.gateway) for r in routes):
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst="0.0.0.0/0", gateway=str(ep.gateway), oif=index)


def plumb_veth(port: DesiredPort, netns: str, *, tx_off: bool) -> None:
    """A veth pair: the outer end (the OVS port's name) in this namespace, the inner end in the
    target namespace with the requested name, MAC, address, MTU and default route. Idempotent:
    an existing inner interface tagged for this endpoint is converged, not recreated."""
    ep = port.endpoint
    name = ep.interface
    with _ipr(netns) as inner:
        index = _index(inner, name)
        if index is not None and _alias(_link(inner, index)) != alias_for(ep.uid):
            raise PlumbingError(
                c.Reason.PLUMBING_FAILED.value,
                f"interface {name} already exists in {netns} and is not this endpoint's",
            )
        with _ipr() as outer:
            outer_index = _index(outer, port.name)
            if index is not None and outer_index is None:
                # Our inner end, but its outer end is not in this host's namespace: a pair left
                # from an earlier life of the host (its namespace re-created). Ours to replace.
                with contextlib.suppress(NetlinkError):
                    inner.link("del", index=index)
                log.info("stale inner end replaced endpoint=%s netns=%s", ep.key, netns)
                index = None
            if index is None:
                # No inner end: start over from a clean pair (remove a half-made one first).
                for stale in (port.name, port.peer_name):
                    stale_index = _index(outer, stale)
                    if stale_index is not None:
                        with contextlib.suppress(NetlinkError):
                            outer.link("del", index=stale_index)
                outer.link(
                    "add",
                    ifname=port.name,
                    kind="veth",
                    peer={"ifname": port.peer_name, "address": ep.mac},
                )
                peer_index = _index(outer, port.peer_name)
                if peer_index is None:
                    raise DatapathError(f"veth peer {port.peer_name} vanished after creation")
                outer.link("set", index=peer_index, ifalias=alias_for(ep.uid), mtu=ep.mtu)
                fd = os.open(netns, os.O_RDONLY)
                try:
                    outer.link("set", index=peer_index, net_ns_fd=fd)
                finally:
                    os.close(fd)
                index = _index(inner, port.peer_name)
                if index is None:
                    raise DatapathError(f"{port.peer_name} did not arrive in {netns}")
                outer_index = _index(outer, port.name)
                log.info("veth created port=%s endpoint=%s netns=%s", port.name, ep.key, netns)
            if outer_index is None:
                raise DatapathError(f"outer veth end {port.name} is missing")
            link = _link(outer, outer_index)
            if link.get_attr("IFLA_MTU") != ep.mtu or _alias(link) != alias_for(ep.uid):
                outer.link("set", index=outer_index, mtu=ep.mtu, ifalias=alias_for(ep.uid))
            outer.link("set", index=outer_index, state="up")
        _converge_inner(inner, index, port, name)
    if tx_off:
        _tx_off(name, netns)


def configure_internal(port: DesiredPort, *, tx_off: bool, timeout: float = 10.0) -> None:
    """Address, MTU, up and route of a host-target endpoint's OVS internal port (OVS creates the
    device; the agent configures it). Idempotent."""
    deadline = time.monotonic() + timeout
    with _ipr() as ipr:
        index = _index(ipr, port.name)
        while index is None and time.monotonic() < deadline:
            time.sleep(0.05)
            index = _index(ipr, port.name)
        if index is None:
            raise DatapathError(f"internal port {port.name} did not appear")
        _converge_inner(ipr, index, port, port.name)
    if tx_off:
        _tx_off(port.name, None)


def unplumb(name: str) -> bool:
    """Delete a veth (both ends) by its outer name, only if it carries the Voile tag.
    Idempotent: False when there was nothing of ours."""
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is None or not _alias(_link(ipr, index)).startswith(IFALIAS_PREFIX):
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise DatapathError(f"cannot delete {name}: {exc}") from exc
        log.info("veth deleted port=%s", name)
        return True


def agent_links() -> dict[str, str]:
    """Links of this namespace tagged by the agent: name -> alias."""
    with _ipr() as ipr:
        result = {}
        for link in ipr.get_links():
            alias = _alias(link)
            if alias.startswith(IFALIAS_PREFIX):
                result[str(link.get_attr("IFLA_IFNAME"))] = alias
        return result


def link_exists(name: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, name) is not None


# -- underlay (netdev datapath) ----------------------------------------------------------------


def ipv4_addresses(interface: str) -> list[str]:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return [] if index is None else _ipv4_addresses(ipr, index)


def gateway_routes(interface: str) -> list[str]:
    """IPv4 routes through a gateway on the interface, as ``dst via gw``."""
    with _ipr() as ipr:
        index = _index(ipr, interface)
        if index is None:
            return []
        result = []
        for r in ipr.get_routes(family=2, oif=index):
            gw = r.get_attr("RTA_GATEWAY")
            if gw:
                dst = r.get_attr("RTA_DST") or "0.0.0.0"
                result.append(f"{dst}/{r['dst_len']} via {gw}")
        return result


def mtu_of(interface: str) -> int | None:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return None if index is None else int(_link(ipr, index).get_attr("IFLA_MTU"))


def mac_of(interface: str) -> str | None:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return None if index is None else str(_link(ipr, index).get_attr("IFLA_ADDRESS"))


def _conf_path(interface: str, key: str) -> str:
    if "/" in interface or interface in {".", ".."} or "/" in key:
        raise DatapathError(f"invalid interface or setting {interface!r} {key!r}")
    return f"/proc/sys/net/ipv4/conf/{interface}/{key}"


def ipv4_conf(interface: str, keys: Sequence[str]) -> dict[str, str]:
    """The interface's ``net.ipv4.conf.<interface>.<key>`` values in this namespace."""
    values = {}
    for key in keys:
        with open(_conf_path(interface, key), encoding="ascii") as f:
            values[key] = f.read().strip()
    return values


def set_ipv4_conf(interface: str, values: Mapping[str, str]) -> bool:
    """Set ``net.ipv4.conf.<interface>.<key>`` values. Idempotent: writes only what differs and
    returns whether it wrote anything."""
    changed = False
    for key, value in ipv4_conf(interface, list(values)).items():
        if value != values[key]:
            with open(_conf_path(interface, key), "w", encoding="ascii") as f:
                f.write(values[key])
            changed = True
    return changed


def move_addresses(src: str, dst: str, addresses: Sequence[str], routes: Sequence[str]) -> None:
    """Put ``addresses`` and ``routes`` on ``dst`` (up) and take the addresses off ``src``.
    Idempotent: whatever is already where it belongs stays."""
    with _ipr() as ipr:
        src_index, dst_index = _index(ipr, src), _index(ipr, dst)
        if dst_index is None:
            raise DatapathError(f"{dst} does not exist")
        ipr.link("set", index=dst_index, state="up")
        have = _ipv4_addresses(ipr, dst_index)
        for addr in addresses:
            ip, _, prefix = addr.partition("/")
            if src_index is not None and addr in _ipv4_addresses(ipr, src_index):
                ipr.addr("del", index=src_index, address=ip, prefixlen=int(prefix))
            if addr not in have:
                ipr.addr("add", index=dst_index, address=ip, prefixlen=int(prefix))
        for route in routes:
            dst_net, _, gw = route.partition(" via ")
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst=dst_net, gateway=gw, oif=dst_index)
        if src_index is not None:
            ipr.link("set", index=src_index, state="up")


def next_hops(vteps: Sequence[ipaddress.IPv4Address]) -> list[NextHop]:
    """The next hop of each VTEP as this host's routing table has it (``ip route get``).

    A VTEP without a route, or one of this host's own addresses, is left out: there is nothing
    to resolve for it (the tunnel port reports the former itself)."""
    hops: list[NextHop] = []
    with _ipr() as ipr:
        for vtep in vteps:
            try:
                route = ipr.route("get", dst=str(vtep))[0]
            except (NetlinkError, IndexError):
                continue
            if route["type"] != _RTN_UNICAST:
                continue
            oif, source = route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC")
            if oif is None or source is None:
                continue
            link = _link(ipr, oif)
            gateway = route.get_attr("RTA_GATEWAY")
            hops.append(
                NextHop(
                    vtep=vtep,
                    address=ipaddress.IPv4Address(gateway or str(vtep)),
                    interface=str(link.get_attr("IFLA_IFNAME")),
                    source=ipaddress.IPv4Address(source),
                    mac=str(link.get_attr("IFLA_ADDRESS")),
                )
            )
    return hops


_RTN_UNICAST = 1
_BROADCAST = b"\xff" * 6


def arp_request(hop: NextHop) -> bytes:
    """The broadcast ARP request (RFC 826) the kernel would send for ``hop``, padded to the
    Ethernet minimum."""
    mac = bytes.fromhex(hop.mac.replace(":", ""))
    frame = (
        _BROADCAST
        + mac
        + struct.pack("!HHHBBH", 0x0806, 1, 0x0800, 6, 4, 1)
        + mac
        + hop.source.packed
        + b"\0" * 6
        + hop.address.packed
    )
    return frame.ljust(60, b"\0")


def send_arp_requests(hops: Sequence[NextHop]) -> None:
    """Send one ARP request for each next hop out of its interface, without waiting.

    Why not let the kernel resolve it (e.g. by sending the VTEP a ping): the kernel sends no
    request when its own neighbour table already has the address, which happens as soon as the
    peer has ARPed for us, and then Open vSwitch never sees a reply to learn from. A request of
    our own always gets a reply, which crosses the underlay bridge, where the userspace datapath
    learns it into its tunnel neighbour cache. Safe to repeat; send errors are ignored (the
    caller sees the cache and tries again)."""
    for hop in hops:
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((hop.interface, 0))
                sock.send(arp_request(hop))
        except OSError as exc:
            log.debug("ARP request not sent hop=%s error=%s", hop, exc)
