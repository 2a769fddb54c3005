"""The one interface between the agent's controller and a host's datapath.

The controller plans in backend-neutral terms (``voile_agent.planning``) and talks to whatever
``main`` chose through ``Datapath``; it never imports a backend. A backend renders the same
``HostPlan`` its own way (``ovs``: OpenFlow rules on one flow-based VXLAN port; ``ebpf``: tc
programs and maps on a VXLAN device in external mode; ``null``: memory only).

Rules every backend keeps:
- every verb is idempotent and says so; "already there" and "already gone" are success;
- an observation that fails raises ``DatapathError``: it is never reported as "nothing there",
  so that no deletion can follow from a failed read;
- only what the backend tagged as Voile's is ever changed or deleted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection
from typing import Protocol

from voile.api.trace import Result, Tunnel
from voile_agent.planning.model import Attachment, HostPlan
from voile_agent.planning.probes import ProbeTarget


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ObservedPort:
    """A port the datapath holds for an endpoint, found by its Voile tag.

    ``handle`` is the backend's own number for it (an OpenFlow port number, an ifindex), None
    while the datapath cannot forward to it yet."""

    port: str
    uid: str
    network: str | None = None
    handle: int | None = None

    @property
    def ready(self) -> bool:
        return self.handle is not None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Observed:
    """What the datapath holds now (ours only): endpoint ports, and tagged kernel links that
    are not ports (a veth whose port was never added, or was removed by hand)."""

    ports: tuple[ObservedPort, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (kernel link name, endpoint uid) of tagged links

    def port(self, name: str) -> ObservedPort | None:
        for p in self.ports:
            if p.port == name:
                return p
        return None

    def ready(self, attachments: Collection[Attachment]) -> list[Attachment]:
        """The attachments the datapath can forward to now (its port is there, for that uid)."""
        have = {(p.port, p.uid) for p in self.ports if p.ready}
        return [a for a in attachments if (a.port, a.uid) in have]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ProgramReport:
    """What one ``program`` call changed. ``settled`` is False while the datapath is not yet
    able to carry the first packet to every remote VTEP (ask again soon)."""

    added: int = 0
    deleted: int = 0
    repaired: int = 0
    settled: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Health:
    """Whether the datapath can be read, written and forward; ``reason`` is CamelCase."""

    healthy: bool
    reason: str = "Healthy"
    message: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TraceQuery:
    """One packet to trace through this host's datapath: out of a local port (the source's),
    or in from the tunnel in a VNI from a remote VTEP (at the destination's host)."""

    protocol: str  # icmp | udp | tcp | arp
    src_mac: str
    src_ip: ipaddress.IPv4Address
    dst_mac: str
    dst_ip: ipaddress.IPv4Address
    from_port: str | None = None
    from_tunnel: Tunnel | None = None  # (the remote VTEP, the VNI)
    to_port: str | None = None  # the destination's port, when it is on this host


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TraceOutcome:
    result: Result
    hops: tuple[str, ...] = ()
    rule: str | None = None  # the last rule met (the one that dropped it, when it was dropped)
    tunnels: tuple[Tunnel, ...] = ()
    message: str = ""


class Datapath(Protocol):
    """A host's datapath. Construct in ``main``; the controller calls it from asyncio."""

    @property
    def kind(self) -> str:
        """``ovs``, ``ebpf`` or ``null``: shown in logs, status and ``voile lab status``."""
        ...

    async def ensure_host(self) -> ipaddress.IPv4Address:
        """Create or converge what the host needs before any endpoint (bridges, the tunnel
        port or device, programs) and return the VTEP address. Idempotent: a second call
        changes nothing."""
        ...

    async def attach(self, attachment: Attachment) -> None:
        """Plumb one local attachment: its veth (or host interface) and its datapath port.
        Idempotent: an existing, tagged attachment is converged, never recreated. Raises
        ``PlumbingError`` with a Ready reason (the namespace is missing or refused, a foreign
        interface is in the way) or ``DatapathError``."""
        ...

    async def observe(self, *, wait_for: Collection[str] = (), timeout: float = 10.0) -> Observed:
        """Read the datapath: Voile's ports and tagged links. With ``wait_for``, wait (at most
        ``timeout`` s) until those ports are ready. Read-only. Raises ``DatapathError`` when a
        source cannot be read: never an empty or partial view."""
        ...

    async def program(self, plan: HostPlan, observed: Observed, *, verify: bool) -> ProgramReport:
        """Render ``plan`` for the attachments ``observed`` holds: isolation per VNI, unicast
        to local ports and remote VTEPs, the local ARP responder, flooding to the flood list,
        anti-spoofing. Only differences are written, atomically where the backend can. With
        ``plan.complete`` False nothing is removed. ``verify`` also compares every installed
        entry with the plan and repairs what was changed behind the agent's back (slower; once
        per resync period). Idempotent."""
        ...

    async def detach(self, port: str) -> bool:
        """Remove one endpoint port and its veth, if they carry Voile's tag. Idempotent: False
        when nothing of ours was there."""
        ...

    async def probe(
        self, targets: Collection[ProbeTarget], *, timeout: float
    ) -> dict[ProbeTarget, float | None] | None:
        """Send one probe per target through the datapath, in the target's segment
        (``planning.probes`` defines the frame; ``program`` installs the answering side for
        every segment of the plan), and wait at most ``timeout`` s: the round-trip time per
        target, None for a lost one. None when the backend cannot probe (``null``). Read-only
        for the datapath's state."""
        ...

    async def trace(self, query: TraceQuery) -> TraceOutcome:
        """Where the datapath would send ``query``'s packet, rule by rule (OVS: ofproto/trace),
        without sending it. Read-only. Raises DatapathError when it cannot be asked."""
        ...

    async def dump(self) -> dict[str, str]:
        """What the datapath holds, as its own tools print it (for ``kubectl voile diagnose``):
        name -> text. Read-only; a part that cannot be read says so in its text."""
        ...

    async def health(self) -> Health:
        """Whether the datapath's own daemons or kernel objects are answering and intact.
        Read-only; bounded in time."""
        ...

    async def cleanup(self) -> dict[str, int]:
        """Remove everything Voile made on this host's datapath, and nothing else; counts by
        kind. Idempotent."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...
