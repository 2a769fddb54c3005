"""The pinned maps of the eBPF datapath as bytes, and the neutral plan rendered into them. Pure.

Every struct mirrors ``bpf/voile.c`` (native byte order for numbers, network order for IPv4
addresses, as the packets carry them). ``desired`` turns a ``HostPlan`` and the observed port
ifindexes into the exact entries each map must hold; ``diff`` compares them with what the maps
hold, so the agent writes only differences and finds every entry changed or deleted by hand.
``Tables.decode`` gives the same maps as values, for the trace and the dump.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from collections.abc import Mapping

from voile_agent.planning.model import HostPlan

MAX_PORTS = 64  # local ports of one VNI a flood reaches (MAX_PORTS in voile.c)
MAX_VTEPS = 128  # remote VTEPs of one VNI a flood reaches (MAX_VTEPS in voile.c)
LOCAL_PEER = 1  # deliver with bpf_redirect_peer


class MapName(str, enum.Enum):
    CONFIG = "voile_config"
    PORTS = "voile_ports"
    FDB = "voile_fdb"
    ARP = "voile_arp"
    FLOOD = "voile_flood"
    VNI_STATS = "voile_vni_stats"
    PORT_STATS = "voile_port_stats"
    DROPS = "voile_drops"


# Maps whose every entry the plan decides (compared byte for byte, repaired when changed).
FORWARDING = (MapName.CONFIG, MapName.PORTS, MapName.FDB, MapName.ARP, MapName.FLOOD)
# Counter maps: one entry per planned key, created at zero, never compared.
COUNTERS = (MapName.VNI_STATS, MapName.PORT_STATS)


class Drop(enum.IntEnum):
    """voile.c's drop reasons (the index into voile_drops)."""

    UNKNOWN_PORT = 0
    SPOOFED_MAC = 1
    SPOOFED_IP = 2
    SPOOFED_ARP = 3
    ETHERTYPE = 4
    UNKNOWN_VNI = 5
    NO_LOCAL_DESTINATION = 6
    MALFORMED = 7
    NO_TUNNEL = 8
    HAIRPIN = 9
    NOT_PROBE = 10


DROP_TEXT = {
    Drop.UNKNOWN_PORT: "the port is not an endpoint of this host (no voile_ports entry)",
    Drop.SPOOFED_MAC: "source MAC is not the port's own (anti-spoofing)",
    Drop.SPOOFED_IP: "source IPv4 is not the port's own (anti-spoofing)",
    Drop.SPOOFED_ARP: "ARP sender MAC or IP is not the port's own (anti-spoofing)",
    Drop.ETHERTYPE: "neither IPv4 nor ARP",
    Drop.UNKNOWN_VNI: "this host carries no such VNI",
    Drop.NO_LOCAL_DESTINATION: "from the tunnel to a MAC that is not local",
    Drop.MALFORMED: "truncated frame",
    Drop.NO_TUNNEL: "no tunnel device configured",
    Drop.HAIRPIN: "destination is the port it came in on",
    Drop.NOT_PROBE: "not a probe frame",
}

_U32 = struct.Struct("=I")
_CONFIG = struct.Struct("=II4sI")
_ENDPOINT = struct.Struct("=I4s6sH")
_FDB_KEY = struct.Struct("=I6sH")
_FDB_VALUE = struct.Struct("=I4sI")
_ARP_KEY = struct.Struct("=I4s")
_ARP_VALUE = struct.Struct("=6sH")
_FLOOD_HEAD = struct.Struct("=II")
_COUNTERS = struct.Struct("=QQQQ")
ZERO_COUNTERS = _COUNTERS.pack(0, 0, 0, 0)
NO_IP = b"\0\0\0\0"

Entries = dict[bytes, bytes]


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def u32(value: int) -> bytes:
    return _U32.pack(value)


def config_value(
    *, vxlan_ifindex: int, probe_ifindex: int, vtep: ipaddress.IPv4Address, build: int
) -> bytes:
    return _CONFIG.pack(vxlan_ifindex, probe_ifindex, vtep.packed, build & 0xFFFFFFFF)


def fdb_key(vni: int, mac: str) -> bytes:
    return _FDB_KEY.pack(vni, mac_bytes(mac), 0)


def arp_key(vni: int, ip: ipaddress.IPv4Address) -> bytes:
    return _ARP_KEY.pack(vni, ip.packed)


def flood_value(ports: list[int], vteps: list[ipaddress.IPv4Address]) -> bytes:
    ports, vteps = ports[:MAX_PORTS], vteps[:MAX_VTEPS]
    body = _FLOOD_HEAD.pack(len(ports), len(vteps))
    body += b"".join(_U32.pack(p) for p in ports) + b"\0" * 4 * (MAX_PORTS - len(ports))
    body += b"".join(v.packed for v in vteps) + b"\0" * 4 * (MAX_VTEPS - len(vteps))
    return body


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Desired:
    forwarding: dict[MapName, Entries]
    counters: dict[MapName, set[bytes]]
    truncated: tuple[int, ...] = ()  # VNIs whose flood list is longer than the map holds


def desired(
    plan: HostPlan,
    ifindexes: Mapping[str, int],
    *,
    vxlan_ifindex: int,
    probe_ifindex: int,
    build: int,
    peer_ports: frozenset[str] = frozenset(),
) -> Desired:
    """Every entry the plan asks for, for the ports the datapath holds (port -> ifindex of the
    datapath's end). ``peer_ports`` are delivered with bpf_redirect_peer (their other end is in
    another namespace)."""
    fwd: dict[MapName, Entries] = {name: {} for name in FORWARDING}
    counters: dict[MapName, set[bytes]] = {name: set() for name in COUNTERS}
    truncated = []
    fwd[MapName.CONFIG][u32(0)] = config_value(
        vxlan_ifindex=vxlan_ifindex, probe_ifindex=probe_ifindex, vtep=plan.vtep, build=build
    )
    for seg in plan.segments:
        vni = seg.vni
        local = [(a, ifindexes[a.port]) for a in seg.local if a.port in ifindexes]
        if not local:
            continue
        counters[MapName.VNI_STATS].add(u32(vni))
        for a, ifindex in local:
            fwd[MapName.PORTS][u32(ifindex)] = _ENDPOINT.pack(vni, a.ip.packed, mac_bytes(a.mac), 0)
            flags = LOCAL_PEER if a.port in peer_ports else 0
            fwd[MapName.FDB][fdb_key(vni, a.mac)] = _FDB_VALUE.pack(ifindex, NO_IP, flags)
            fwd[MapName.ARP][arp_key(vni, a.ip)] = _ARP_VALUE.pack(mac_bytes(a.mac), 0)
            counters[MapName.PORT_STATS].add(u32(ifindex))
        for r in seg.remote:
            fwd[MapName.FDB][fdb_key(vni, r.mac)] = _FDB_VALUE.pack(0, r.vtep.packed, 0)
            fwd[MapName.ARP].setdefault(arp_key(vni, r.ip), _ARP_VALUE.pack(mac_bytes(r.mac), 0))
        ports = sorted(ifindex for _, ifindex in local)
        if len(ports) > MAX_PORTS or len(seg.flood) > MAX_VTEPS:
            truncated.append(vni)
        fwd[MapName.FLOOD][u32(vni)] = flood_value(ports, list(seg.flood))
    return Desired(forwarding=fwd, counters=counters, truncated=tuple(truncated))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MapDiff:
    write: Entries  # missing or different
    delete: tuple[bytes, ...]
    repaired: int  # of ``write``: entries that were there with another value


def diff(
    want: Entries, have: Entries, *, complete: bool, written: Entries | None = None
) -> MapDiff:
    """What to write and delete so that ``have`` becomes ``want``; with ``complete`` False
    nothing is deleted (a partial plan never removes). ``written``: what the agent wrote last
    (None after a start); of the writes, those whose entry is no longer as written are
    repairs of a change made behind the agent's back."""
    write = {k: v for k, v in want.items() if have.get(k) != v}
    last = written or {}
    repaired = sum(1 for k in write if k in last and have.get(k) != last[k])
    delete = tuple(sorted(k for k in have if k not in want)) if complete else ()
    return MapDiff(write=write, delete=delete, repaired=repaired)


# -- decoded view (trace, dump) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PortEntry:
    vni: int
    ip: ipaddress.IPv4Address
    mac: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FdbEntry:
    ifindex: int
    vtep: ipaddress.IPv4Address | None
    peer: bool


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FloodEntry:
    ports: tuple[int, ...]
    vteps: tuple[ipaddress.IPv4Address, ...]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Tables:
    vxlan_ifindex: int
    probe_ifindex: int
    vtep: ipaddress.IPv4Address | None
    ports: dict[int, PortEntry]
    fdb: dict[tuple[int, str], FdbEntry]
    arp: dict[tuple[int, ipaddress.IPv4Address], str]
    flood: dict[int, FloodEntry]

    @classmethod
    def decode(cls, raw: Mapping[MapName, Entries]) -> Tables:
        vx, probe, vtep_raw, _ = _CONFIG.unpack(
            raw[MapName.CONFIG].get(u32(0), b"\0" * _CONFIG.size)[: _CONFIG.size]
        )
        ports = {}
        for k, v in raw[MapName.PORTS].items():
            vni, ip, mac, _ = _ENDPOINT.unpack(v[: _ENDPOINT.size])
            ports[_U32.unpack(k[:4])[0]] = PortEntry(
                vni=vni, ip=ipaddress.IPv4Address(ip), mac=mac_text(mac)
            )
        fdb = {}
        for k, v in raw[MapName.FDB].items():
            vni, mac, _ = _FDB_KEY.unpack(k[: _FDB_KEY.size])
            ifindex, vtep, flags = _FDB_VALUE.unpack(v[: _FDB_VALUE.size])
            fdb[(vni, mac_text(mac))] = FdbEntry(
                ifindex=ifindex,
                vtep=ipaddress.IPv4Address(vtep) if vtep != NO_IP else None,
                peer=bool(flags & LOCAL_PEER),
            )
        arp = {}
        for k, v in raw[MapName.ARP].items():
            vni, ip = _ARP_KEY.unpack(k[: _ARP_KEY.size])
            arp[(vni, ipaddress.IPv4Address(ip))] = mac_text(v)
        flood = {}
        for k, v in raw[MapName.FLOOD].items():
            n_ports, n_vteps = _FLOOD_HEAD.unpack(v[:8])
            n_ports, n_vteps = min(n_ports, MAX_PORTS), min(n_vteps, MAX_VTEPS)
            port_list = struct.unpack(f"={n_ports}I", v[8 : 8 + 4 * n_ports])
            off = 8 + 4 * MAX_PORTS
            vteps = tuple(
                ipaddress.IPv4Address(v[off + 4 * i : off + 4 * i + 4]) for i in range(n_vteps)
            )
            flood[_U32.unpack(k[:4])[0]] = FloodEntry(ports=tuple(port_list), vteps=vteps)
        return cls(
            vxlan_ifindex=vx,
            probe_ifindex=probe,
            vtep=ipaddress.IPv4Address(vtep_raw) if vtep_raw != NO_IP else None,
            ports=ports,
            fdb=fdb,
            arp=arp,
            flood=flood,
        )


def counters(value: bytes) -> tuple[int, int, int, int]:
    """(rx_packets, rx_bytes, tx_packets, tx_bytes) of a voile_*_stats value."""
    rx_p, rx_b, tx_p, tx_b = _COUNTERS.unpack(value[: _COUNTERS.size])
    return rx_p, rx_b, tx_p, tx_b


def key_u32(key: bytes) -> int:
    return int(_U32.unpack(key[:4])[0])
