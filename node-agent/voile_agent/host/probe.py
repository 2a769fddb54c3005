"""Sending probe frames into a datapath's probe port and collecting the replies (AF_PACKET).

Blocking; backends run it with ``asyncio.to_thread``. The frames are built and parsed by
``voile_agent.planning.probes``; this only moves bytes and measures round-trip times.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import time
from collections.abc import Mapping

from voile.errors import DatapathError
from voile_agent.planning.probes import ProbeTarget, parse_reply

ETH_P_IP = 0x0800
SPACING = 0.002  # seconds between full-size probes
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # linux/if_packet.h (4.20+): our own sends are not looped back
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (not in Python's socket module)
RECEIVE_BUFFER = 4 << 20  # replies of a whole round fit, even when the agent is slow to read


def _open(interface: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    except OSError as exc:
        raise DatapathError(f"cannot open a packet socket: {exc}") from exc
    try:
        # FORCE needs CAP_NET_ADMIN (the agent has it) and passes net.core.rmem_max; without it
        # a round's replies (two per peer and network) can overflow the default buffer.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        with contextlib.suppress(OSError):  # older kernels: our sends are then skipped by parsing
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((interface, ETH_P_IP))
    except OSError as exc:
        sock.close()
        raise DatapathError(f"cannot use probe port {interface}: {exc}") from exc
    sock.setblocking(False)
    return sock


class _Round:
    """The bookkeeping of one exchange: what was sent when, what came back."""

    def __init__(
        self,
        frames: Mapping[ProbeTarget, tuple[int, bytes]],
        local: ipaddress.IPv4Address,
    ) -> None:
        self.by_id = {probe_id: target for target, (probe_id, _) in frames.items()}
        self.results: dict[ProbeTarget, float | None] = {target: None for target in frames}
        self.sent: dict[int, float] = {}
        self.pending: set[int] = set()
        self.local = local

    def drain(self, sock: socket.socket) -> None:
        """Read every frame waiting now (never blocks)."""
        while True:
            try:
                frame = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.take(frame)

    def take(self, frame: bytes) -> None:
        reply = parse_reply(frame, local=self.local)
        if reply is None or reply.probe_id not in self.pending:
            return
        target = self.by_id[reply.probe_id]
        if (reply.vni, reply.vtep, reply.size) != (target.vni, target.vtep, target.size):
            return
        self.pending.discard(reply.probe_id)
        self.results[target] = time.monotonic() - self.sent[reply.probe_id]


def _wait(sock: socket.socket, seconds: float) -> bool:
    return bool(select.select([sock], [], [], max(0.0, seconds))[0])


def exchange(
    interface: str,
    frames: Mapping[ProbeTarget, tuple[int, bytes]],
    *,
    local: ipaddress.IPv4Address,
    timeout: float,
) -> dict[ProbeTarget, float | None]:
    """Send each target's frame (with its probe id) out of ``interface`` and wait at most
    ``timeout`` s for the replies: the round-trip time per target, None for a lost probe.
    Replies are read while the round is still being sent (a big round's first replies would
    otherwise wait in the socket buffer, and their RTT would include the sending).
    Raises DatapathError when the port cannot be used at all."""
    state = _Round(frames, local)
    with _open(interface) as sock:
        # Small probes first, then each full-size one on its own: a userspace datapath sends a
        # batch of packets at once, and one dropped for its size (the fault a full-size probe
        # exists to find) can take the rest of its batch with it.
        ordered = sorted(frames.items(), key=lambda item: item[0].full)
        for target, (probe_id, frame) in ordered:
            if target.full:
                until = time.monotonic() + SPACING
                while _wait(sock, until - time.monotonic()):
                    state.drain(sock)
                    if time.monotonic() >= until:
                        break
            try:
                sock.send(frame)
            except BlockingIOError:
                if not select.select([], [sock], [], 0.05)[1]:
                    continue  # counted as lost
                try:
                    sock.send(frame)
                except OSError:
                    continue
            except OSError:
                continue  # counted as lost (e.g. bigger than the probe port allows)
            state.sent[probe_id] = time.monotonic()
            state.pending.add(probe_id)
            state.drain(sock)
        deadline = time.monotonic() + timeout
        while state.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not _wait(sock, left):
                break
            state.drain(sock)
    return state.results
