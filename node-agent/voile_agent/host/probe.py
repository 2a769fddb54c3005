"""Sending probe frames into a datapath's probe port and collecting the replies (AF_PACKET).

Blocking; backends run it with ``asyncio.to_thread``. The frames are built and parsed by
``voile_agent.planning.probes``; this only moves bytes and measures round-trip times.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from collections.abc import Mapping

from voile.errors import DatapathError
from voile_agent.planning.probes import ProbeTarget, parse_reply

ETH_P_IP = 0x0800
SPACING = 0.002  # seconds between full-size probes


def exchange(
    interface: str,
    frames: Mapping[ProbeTarget, tuple[int, bytes]],
    *,
    local: ipaddress.IPv4Address,
    timeout: float,
) -> dict[ProbeTarget, float | None]:
    """Send each target's frame (with its probe id) out of ``interface`` and wait at most
    ``timeout`` s for the replies: the round-trip time per target, None for a lost probe.
    Raises DatapathError when the port cannot be used at all."""
    by_id = {probe_id: target for target, (probe_id, _) in frames.items()}
    results: dict[ProbeTarget, float | None] = {target: None for target in frames}
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    except OSError as exc:
        raise DatapathError(f"cannot open a packet socket: {exc}") from exc
    with sock:
        try:
            sock.bind((interface, ETH_P_IP))
        except OSError as exc:
            raise DatapathError(f"cannot use probe port {interface}: {exc}") from exc
        sent: dict[int, float] = {}
        # Small probes first, then each full-size one on its own: a userspace datapath sends a
        # batch of packets at once, and one dropped for its size (the fault a full-size probe
        # exists to find) can take the rest of its batch with it.
        ordered = sorted(frames.items(), key=lambda item: item[0].full)
        for target, (probe_id, frame) in ordered:
            if target.full:
                time.sleep(SPACING)
            try:
                sock.send(frame)
            except OSError:
                continue  # counted as lost (e.g. bigger than the probe port allows)
            sent[probe_id] = time.monotonic()
        deadline = time.monotonic() + timeout
        pending = set(sent)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            try:
                frame = sock.recv(65535)
            except OSError:
                continue
            reply = parse_reply(frame, local=local)
            if reply is None or reply.probe_id not in pending:
                continue
            target = by_id[reply.probe_id]
            if (reply.vni, reply.vtep, reply.size) != (target.vni, target.vtep, target.size):
                continue
            pending.discard(reply.probe_id)
            results[target] = time.monotonic() - sent[reply.probe_id]
    return results
