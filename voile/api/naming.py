"""Deterministic names of the interfaces an Endpoint gets, all within IFNAMSIZ (15 characters).

Names come from the Endpoint's uid, so a restarted agent recomputes the same names and finds its
own links and ports again (the datapath and the kernel are the truth after a restart), and the
local API can tell a runtime which host interface is its container's.
"""

from __future__ import annotations

import hashlib

from voile.api.model import Endpoint, TargetKind

IFNAMSIZ = 15
PORT_PREFIX = "vo"  # outer veth end / OVS port
PEER_PREFIX = "vi"  # inner veth end, before it moves into the target namespace and is renamed
HANDOFF_PREFIX = "vh"  # container end of a handoff veth, left in the host namespace for a runtime


def _digest(uid: str, length: int = 11) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:length]


def port_name(uid: str) -> str:
    """``vo`` + 11 hex digits of sha256(uid): 13 characters; 44 bits make collisions negligible."""
    return PORT_PREFIX + _digest(uid)


def peer_name(uid: str) -> str:
    return PEER_PREFIX + _digest(uid)


def handoff_name(uid: str) -> str:
    return HANDOFF_PREFIX + _digest(uid)


def interfaces(ep: Endpoint) -> tuple[str, str, str]:
    """(port, peer, workload) of an Endpoint, from its spec alone: the host-side interface the
    datapath forwards to, the veth's inner end before it moves, and the interface the workload
    sees (inside its namespace, the host interface, or the end handed off to a runtime)."""
    target = ep.spec.target
    port = port_name(ep.uid)
    if target.kind == TargetKind.HOST:
        port = target.interface or port
        return port, peer_name(ep.uid), port
    if target.kind == TargetKind.HANDOFF:
        return port, peer_name(ep.uid), target.interface or handoff_name(ep.uid)
    return port, peer_name(ep.uid), target.interface
