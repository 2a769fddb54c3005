"""Data-path probes, pure: the probe frame, its reply, and what a run of results means.

Each agent probes every VTEP that shares a network with it, inside that network's own segment
(its VNI), so a probe proves that packets of that network get from here to there and back: the
underlay carries UDP 4789 both ways, both datapaths have the segment, and a frame of the
network's full MTU passes with DF set. Two sizes are sent, so that "blocked" and "MTU" can be told
apart. The probe takes no tenant address: its inner addresses are the two VTEPs, its MACs are in
Voile's reserved range ``0e:76:..``, and the receiving datapath answers it itself (it never
reaches an endpoint).

The frame (inner Ethernet + IPv4 with DF + UDP, checksum 0):
    dst MAC   RESPONDER_MAC                    src MAC  0e:76:00:<VNI, 3 bytes>
    src IP    our VTEP                          dst IP   the peer's VTEP
    UDP       sport = probe id, dport = PROBE_PORT; payload: magic, id, sequence, size
The sending datapath takes the VNI from the source MAC and the tunnel destination from the
destination IP; the peer's datapath, for a VNI it carries, swaps MACs and IPs, sets the UDP
destination port to REPLY_PORT and sends it back through the tunnel to where it came from; our
datapath hands replies (REPLY_PORT, to a 0e:76:00 MAC) to the probe port.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from collections.abc import Iterable, Mapping

PROBE_PORT = 47100
REPLY_PORT = 47101
RESPONDER_MAC = "0e:76:ff:ff:ff:fe"
SENDER_PREFIX = "0e:76:00"
SMALL = 128  # bytes of inner IP packet for the reachability probe
MAGIC = b"VOILPRB1"
ETH_HEADER = 14
_PAYLOAD = struct.Struct("!8sIII")  # magic, probe id, sequence, inner IP size


def sender_mac(vni: int) -> str:
    return f"{SENDER_PREFIX}:{vni >> 16 & 0xFF:02x}:{vni >> 8 & 0xFF:02x}:{vni & 0xFF:02x}"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, order=True)
class ProbeTarget:
    """One peer VTEP in one segment, at one inner IP packet size (the network's MTU, or SMALL)."""

    vni: int
    vtep: ipaddress.IPv4Address
    size: int

    @property
    def full(self) -> bool:
        return self.size > SMALL


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_probe(
    target: ProbeTarget, *, source: ipaddress.IPv4Address, probe_id: int, sequence: int
) -> bytes:
    """The Ethernet frame of one probe: an IPv4 packet of exactly ``target.size`` bytes, DF."""
    if target.size < 20 + 8 + _PAYLOAD.size:
        raise ValueError(f"probe size {target.size} is below the minimum")
    payload = _PAYLOAD.pack(MAGIC, probe_id, sequence, target.size)
    payload = payload.ljust(target.size - 28, b"\0")
    udp = struct.pack("!HHHH", probe_id & 0xFFFF, PROBE_PORT, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        target.size,
        sequence & 0xFFFF,
        0x4000,  # DF
        64,
        17,
        0,
        source.packed,
        target.vtep.packed,
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = _mac(RESPONDER_MAC) + _mac(sender_mac(target.vni)) + b"\x08\x00"
    return eth + ip + udp


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    vni: int
    vtep: ipaddress.IPv4Address
    probe_id: int
    sequence: int
    size: int


def parse_reply(frame: bytes, *, local: ipaddress.IPv4Address) -> Reply | None:
    """A reply to one of our probes, or None for any other frame."""
    if len(frame) < ETH_HEADER + 28 + _PAYLOAD.size or frame[12:14] != b"\x08\x00":
        return None
    dst = frame[0:6]
    if dst[:3] != _mac(SENDER_PREFIX):
        return None
    ip = frame[ETH_HEADER:]
    if ip[0] != 0x45 or ip[9] != 17 or ip[16:20] != local.packed:
        return None
    udp = ip[20:]
    if struct.unpack("!H", udp[2:4])[0] != REPLY_PORT:
        return None
    magic, probe_id, sequence, size = _PAYLOAD.unpack(udp[8 : 8 + _PAYLOAD.size])
    if magic != MAGIC:
        return None
    return Reply(
        vni=int.from_bytes(dst[3:6], "big"),
        vtep=ipaddress.IPv4Address(ip[12:16]),
        probe_id=probe_id,
        sequence=sequence,
        size=size,
    )


# -- what results mean ---------------------------------------------------------------------------


class PathState(str, enum.Enum):
    OK = "ok"
    UNREACHABLE = "unreachable"  # small probes are lost
    MTU = "mtu"  # small probes pass, full-size ones are lost
    UNKNOWN = "unknown"  # not probed long enough to say


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PathHealth:
    vni: int
    vtep: ipaddress.IPv4Address
    state: PathState
    rtt_ms: float | None
    sent: int
    lost: int


@dataclasses.dataclass(kw_only=True, slots=True)
class _Track:
    small_misses: int = 0
    full_misses: int = 0
    rounds: int = 0
    sent: int = 0
    lost: int = 0
    rtt_ms: float | None = None


class HealthTracker:
    """Turns rounds of probe results into a state per (VNI, VTEP). A path is unreachable after
    ``threshold`` rounds in a row without a small reply, MTU-broken after as many without a
    full-size one while small ones come back, and ok again at the first round with both."""

    def __init__(self, *, threshold: int = 2) -> None:
        self.threshold = threshold
        self._tracks: dict[tuple[int, ipaddress.IPv4Address], _Track] = {}

    def update(self, results: Mapping[ProbeTarget, float | None]) -> None:
        seen = {(t.vni, t.vtep) for t in results}
        for key in list(self._tracks):
            if key not in seen:
                del self._tracks[key]  # no longer a peer of that network
        for key in sorted(seen):
            track = self._tracks.setdefault(key, _Track())
            track.rounds += 1
            for target, rtt in results.items():
                if (target.vni, target.vtep) != key:
                    continue
                track.sent += 1
                if rtt is None:
                    track.lost += 1
                if target.full:
                    track.full_misses = 0 if rtt is not None else track.full_misses + 1
                else:
                    track.small_misses = 0 if rtt is not None else track.small_misses + 1
                    if rtt is not None:
                        track.rtt_ms = round(rtt * 1000, 3)

    def states(self) -> list[PathHealth]:
        result = []
        for (vni, vtep), t in sorted(self._tracks.items()):
            if t.small_misses >= self.threshold:
                state = PathState.UNREACHABLE
            elif t.full_misses >= self.threshold:
                state = PathState.MTU
            elif t.small_misses == 0 and t.full_misses == 0:
                state = PathState.OK
            else:
                state = PathState.UNKNOWN
            result.append(
                PathHealth(
                    vni=vni, vtep=vtep, state=state, rtt_ms=t.rtt_ms, sent=t.sent, lost=t.lost
                )
            )
        return result


def targets_for(
    segments: Iterable[tuple[int, int, Iterable[ipaddress.IPv4Address]]],
) -> list[ProbeTarget]:
    """Two probes (small and full-size) per (VNI, remote VTEP) from (vni, mtu, flood list)."""
    result = []
    for vni, mtu, vteps in segments:
        for vtep in vteps:
            result.append(ProbeTarget(vni=vni, vtep=vtep, size=SMALL))
            if mtu > SMALL:
                result.append(ProbeTarget(vni=vni, vtep=vtep, size=mtu))
    return sorted(result)


REPORT_VERSION = 1


def report(
    *, at: str, vtep: ipaddress.IPv4Address, realized: Iterable[int], paths: Iterable[PathHealth]
) -> dict[str, object]:
    """The agent's probe report (an annotation of its heartbeat Lease): which VNIs its datapath
    carries and the state of each path it probes. Only states and a rounded RTT: it changes when
    the health changes, not on every round."""
    return {
        "v": REPORT_VERSION,
        "at": at,
        "vtep": str(vtep),
        "vnis": sorted(set(realized)),
        "paths": [
            {"vni": p.vni, "vtep": str(p.vtep), "state": p.state.value}
            for p in sorted(paths, key=lambda p: (p.vni, p.vtep))
        ],
    }
