"""Deterministic names for what the agent creates, all within IFNAMSIZ (15 characters).

Names come from the endpoint uid, so a restarted agent recomputes the same names and finds its
own links and ports again (OVS and the kernel are the truth after a restart).
"""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15
PORT_PREFIX = "vo"  # outer veth end / OVS port
PEER_PREFIX = "vi"  # inner veth end, before it moves into the target namespace and is renamed


def _digest(uid: str, length: int = 11) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:length]


def port_name(uid: str) -> str:
    """``vo`` + 11 hex digits of sha256(uid): 13 characters; 44 bits make collisions negligible."""
    return PORT_PREFIX + _digest(uid)


def peer_name(uid: str) -> str:
    return PEER_PREFIX + _digest(uid)


def is_agent_link_name(name: str) -> bool:
    """Whether a kernel link name has the shape of one the agent creates (a hint, not a proof:
    deletion also requires the IFLA_IFALIAS tag)."""
    if len(name) != 13 or name[:2] not in (PORT_PREFIX, PEER_PREFIX):
        return False
    return all(ch in "0123456789abcdef" for ch in name[2:])


def valid_ifname(name: str) -> bool:
    return 0 < len(name) <= IFNAMSIZ and "/" not in name and not name.isspace()
