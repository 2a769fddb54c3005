"""The kernel side through pyroute2: veth pairs, the move into the target namespace, addresses,
MTU, routes, sysctls, and the underlay address move of OVS's netdev datapath.

Blocking calls; backends run them with ``asyncio.to_thread``. Every verb is idempotent:
it converges an existing link instead of failing on EEXIST, and "already gone" (ENODEV/ENOENT) on
delete is success. Links the agent creates carry an IFLA_IFALIAS tag (``voile:<uid>``): only
tagged links are ever deleted, and a foreign interface of the requested name in a namespace is
refused, never taken over.

TX checksum offload can be turned off with ``ethtool -K`` (through ``nsenter`` for a namespace),
which OVS's netdev datapath needs: AF_PACKET hands the userspace datapath packets with partial
checksums, and TCP then fails while ping works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from voile.api import constants as c
from voile.errors import DatapathError, PlumbingError
from voile.netns import inside_netns
from voile_agent.planning.model import IFALIAS_PREFIX, Attachment
from voile_agent.planning.state import netns_allowed

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_NETNS_DIRS = ("/run/netns", "/var/run/netns")

P = ParamSpec("P")
R = TypeVar("R")


def _edge(fn: Callable[P, R]) -> Callable[P, R]:
    """The applier edge: netlink and OS errors leave as DatapathError naming the verb;
    PlumbingError (a reason for the Endpoint's condition) passes through."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (PlumbingError, DatapathError):
            raise
        except (NetlinkError, OSError) as exc:
            raise DatapathError(f"{fn.__name__}: {exc}") from exc

    return wrapper


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NextHop:
    """Where the outer packets to one remote VTEP go first: the VTEP itself when it is on-link,
    else the gateway, out of ``interface`` from ``source``."""

    vtep: ipaddress.IPv4Address
    address: ipaddress.IPv4Address
    interface: str
    source: ipaddress.IPv4Address
    mac: str


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


def _converge_link(ipr: Any, index: int, ep: Attachment, name: str) -> None:
    """Name, MAC, MTU and tag of an interface we own (set down while they change)."""
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


def _converge_inner(ipr: Any, index: int, ep: Attachment, name: str) -> None:
    """Name, MAC, MTU, tag, address, up and default route of an interface we own."""
    _converge_link(ipr, index, ep, name)
    want = f"{ep.ip}/{ep.prefix_length}"
    have = _ipv4_addresses(ipr, index)  # one dump (pyroute2 reads every address of the netns)
    for addr in have:
        if addr != want:
            ip, _, prefix = addr.partition("/")
            ipr.addr("del", index=index, address=ip, prefixlen=int(prefix))
    if want not in have:
        ipr.addr("add", index=index, address=str(ep.ip), prefixlen=ep.prefix_length)
    ipr.link("set", index=index, state="up")
    if ep.gateway is not None and ep.gateway in ipaddress.IPv4Network(want, strict=False):
        routes = ipr.get_default_routes(family=2)
        if not any(r.get_attr("RTA_GATEWAY") == str(ep.gateway) for r in routes):
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst="0.0.0.0/0", gateway=str(ep.gateway), oif=index)


def _fresh_pair(outer: Any, ep: Attachment) -> int:
    """A new veth pair ``ep.port``/``ep.peer`` in this namespace (a half-made one is removed
    first), the peer tagged, with the endpoint's MAC and MTU. Returns the peer's index."""
    for stale in (ep.port, ep.peer):
        stale_index = _index(outer, stale)
        if stale_index is not None:
            with contextlib.suppress(NetlinkError):
                outer.link("del", index=stale_index)
    outer.link("add", ifname=ep.port, kind="veth", peer={"ifname": ep.peer, "address": ep.mac})
    peer_index = _index(outer, ep.peer)
    if peer_index is None:
        raise DatapathError(f"veth peer {ep.peer} vanished after creation")
    outer.link("set", index=peer_index, ifalias=alias_for(ep.uid), mtu=ep.mtu)
    return int(peer_index)


def _converge_outer(outer: Any, ep: Attachment) -> None:
    outer_index = _index(outer, ep.port)
    if outer_index is None:
        raise DatapathError(f"outer veth end {ep.port} is missing")
    link = _link(outer, outer_index)
    if link.get_attr("IFLA_MTU") != ep.mtu or _alias(link) != alias_for(ep.uid):
        outer.link("set", index=outer_index, mtu=ep.mtu, ifalias=alias_for(ep.uid))
    outer.link("set", index=outer_index, state="up")


@_edge
def plumb_veth(ep: Attachment, netns: str, *, tx_off: bool) -> None:
    """A veth pair: the outer end (``ep.port``) in this namespace, the inner end in the target
    namespace with the requested name, MAC, address, MTU and default route. Idempotent: an
    existing inner interface tagged for this endpoint is converged, not recreated."""
    name = ep.interface
    with _ipr(netns) as inner:
        index = _index(inner, name)
        if index is not None and _alias(_link(inner, index)) != alias_for(ep.uid):
            raise PlumbingError(
                c.Reason.PLUMBING_FAILED.value,
                f"interface {name} already exists in {netns} and is not this endpoint's",
            )
        with _ipr() as outer:
            if index is not None and _index(outer, ep.port) is None:
                # Our inner end, but its outer end is not in this host's namespace: a pair left
                # from an earlier life of the host (its namespace re-created). Ours to replace.
                with contextlib.suppress(NetlinkError):
                    inner.link("del", index=index)
                log.info("stale inner end replaced endpoint=%s netns=%s", ep.key, netns)
                index = None
            if index is None:
                peer_index = _fresh_pair(outer, ep)
                fd = os.open(netns, os.O_RDONLY)
                try:
                    outer.link("set", index=peer_index, net_ns_fd=fd)
                finally:
                    os.close(fd)
                index = _index(inner, ep.peer)
                if index is None:
                    raise DatapathError(f"{ep.peer} did not arrive in {netns}")
                log.info("veth created port=%s endpoint=%s netns=%s", ep.port, ep.key, netns)
            _converge_outer(outer, ep)
        _converge_inner(inner, index, ep, name)
    if tx_off:
        _tx_off(name, netns)


@_edge
def plumb_handoff(ep: Attachment, *, tx_off: bool) -> None:
    """A veth pair both of whose ends start in this namespace: ``ep.port`` for the datapath,
    ``ep.interface`` (tagged, with the endpoint's MAC and MTU, down) for a runtime to move into
    its container and address, as Docker does after Join. Idempotent: once the runtime has
    moved the inner end away, the pair is left as it is."""
    with _ipr() as outer:
        outer_index = _index(outer, ep.port)
        inner_index = _index(outer, ep.interface)
        if inner_index is not None and _alias(_link(outer, inner_index)) != alias_for(ep.uid):
            raise PlumbingError(
                c.Reason.PLUMBING_FAILED.value,
                f"interface {ep.interface} already exists on the host and is not this endpoint's",
            )
        if outer_index is None:
            if inner_index is not None:
                with contextlib.suppress(NetlinkError):
                    outer.link("del", index=inner_index)
            inner_index = _fresh_pair(outer, ep)
            outer.link("set", index=inner_index, ifname=ep.interface)
            log.info("handoff veth created port=%s endpoint=%s", ep.port, ep.key)
        if inner_index is not None:
            _converge_link(outer, inner_index, ep, ep.interface)
        _converge_outer(outer, ep)
    if tx_off and inner_index is not None:
        _tx_off(ep.interface, None)  # the setting moves with the device into the container


@_edge
def configure_internal(ep: Attachment, *, tx_off: bool, timeout: float = 10.0) -> None:
    """Address, MTU, up and route of a host interface made by the datapath (OVS's internal
    port for a host target): the datapath creates the device, this configures it. Idempotent."""
    deadline = time.monotonic() + timeout
    with _ipr() as ipr:
        index = _index(ipr, ep.port)
        while index is None and time.monotonic() < deadline:
            time.sleep(0.05)
            index = _index(ipr, ep.port)
        if index is None:
            raise DatapathError(f"internal port {ep.port} did not appear")
        _converge_inner(ipr, index, ep, ep.port)
    if tx_off:
        _tx_off(ep.port, None)


@_edge
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


@_edge
def agent_links() -> dict[str, str]:
    """Links of this namespace tagged by the agent: name -> alias."""
    with _ipr() as ipr:
        result = {}
        for link in ipr.get_links():
            alias = _alias(link)
            if alias.startswith(IFALIAS_PREFIX):
                result[str(link.get_attr("IFLA_IFNAME"))] = alias
        return result


@_edge
def bring_up(name: str) -> None:
    """Set a link of this namespace up, with IPv6 off (it carries only what Voile sends).
    Idempotent."""
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is None:
            raise DatapathError(f"{name} does not exist")
        if not _link(ipr, index)["flags"] & 1:
            ipr.link("set", index=index, state="up")
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if "/" not in name and os.path.exists(path):
        with open(path, "w", encoding="ascii") as f:
            f.write("1")


@_edge
def link_exists(name: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, name) is not None


# -- underlay (netdev datapath) ----------------------------------------------------------------


@_edge
def ipv4_addresses(interface: str) -> list[str]:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return [] if index is None else _ipv4_addresses(ipr, index)


@_edge
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


@_edge
def mtu_of(interface: str) -> int | None:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return None if index is None else int(_link(ipr, index).get_attr("IFLA_MTU"))


@_edge
def mac_of(interface: str) -> str | None:
    with _ipr() as ipr:
        index = _index(ipr, interface)
        return None if index is None else str(_link(ipr, index).get_attr("IFLA_ADDRESS"))


def _conf_path(interface: str, key: str) -> str:
    if "/" in interface or interface in {".", ".."} or "/" in key:
        raise DatapathError(f"invalid interface or setting {interface!r} {key!r}")
    return f"/proc/sys/net/ipv4/conf/{interface}/{key}"


@_edge
def ipv4_conf(interface: str, keys: Sequence[str]) -> dict[str, str]:
    """The interface's ``net.ipv4.conf.<interface>.<key>`` values in this namespace."""
    values = {}
    for key in keys:
        with open(_conf_path(interface, key), encoding="ascii") as f:
            values[key] = f.read().strip()
    return values


@_edge
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


@_edge
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


@_edge
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
