"""``NullDatapath``: a datapath held in memory, forwarding nothing.

For measuring the control plane alone (the scale harness runs hundreds of agents with it, so only
the API server, the operator and the agents' own work are measured) and for driving whole
reconcile passes in unit tests. It keeps the contract of every backend: idempotent verbs, only
differences counted as changes, nothing removed from a partial plan.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from voile.api.trace import Result
from voile_agent.datapath.base import (
    Health,
    Observed,
    ObservedPort,
    ProgramReport,
    TraceOutcome,
    TraceQuery,
)
from voile_agent.planning.model import Attachment, HostPlan
from voile_agent.planning.probes import ProbeTarget

Entry = tuple[int, str, str]  # (vni, kind, key): what a real backend would install


def plan_entries(plan: HostPlan, ready_ports: Collection[str]) -> set[Entry]:
    """The forwarding entries a plan asks for, for the ports the datapath holds. Pure."""
    entries: set[Entry] = set()
    for seg in plan.segments:
        local = [a for a in seg.local if a.port in ready_ports]
        if not local:
            continue
        for a in local:
            entries.add((seg.vni, "local", f"{a.mac}={a.port}"))
            entries.add((seg.vni, "arp", f"{a.ip}={a.mac}"))
        for r in seg.remote:
            entries.add((seg.vni, "remote", f"{r.mac}={r.vtep}"))
            entries.add((seg.vni, "arp", f"{r.ip}={r.mac}"))
        for vtep in seg.flood:
            entries.add((seg.vni, "flood", str(vtep)))
    return entries


class NullDatapath:
    def __init__(self, *, vtep_ip: str = "198.18.0.1") -> None:
        self.vtep = ipaddress.IPv4Address(vtep_ip)
        self.ports: dict[str, ObservedPort] = {}
        self.entries: set[Entry] = set()
        self.plan: HostPlan | None = None
        self._next_handle = 1

    @property
    def kind(self) -> str:
        return "null"

    async def ensure_host(self) -> ipaddress.IPv4Address:
        """Nothing to set up. Idempotent."""
        return self.vtep

    async def attach(self, attachment: Attachment) -> None:
        """Hold a port for the attachment. Idempotent: the same port keeps its handle."""
        held = self.ports.get(attachment.port)
        if held is not None and held.uid == attachment.uid:
            return
        self.ports[attachment.port] = ObservedPort(
            port=attachment.port,
            uid=attachment.uid,
            network=attachment.network,
            handle=self._next_handle,
        )
        self._next_handle += 1

    async def observe(self, *, wait_for: Collection[str] = (), timeout: float = 10.0) -> Observed:
        """The ports held. Read-only."""
        return Observed(ports=tuple(sorted(self.ports.values(), key=lambda p: p.port)))

    async def program(self, plan: HostPlan, observed: Observed, *, verify: bool) -> ProgramReport:
        """Replace the entries with the plan's; a partial plan adds only. Idempotent."""
        want = plan_entries(plan, {p.port for p in observed.ports if p.ready})
        added = want - self.entries
        removed = set() if not plan.complete else self.entries - want
        self.entries = (self.entries | added) - removed
        self.plan = plan
        return ProgramReport(added=len(added), deleted=len(removed))

    async def detach(self, port: str) -> bool:
        """Drop a held port. Idempotent."""
        return self.ports.pop(port, None) is not None

    async def probe(
        self, targets: Collection[ProbeTarget], *, timeout: float
    ) -> dict[ProbeTarget, float | None] | None:
        """Nothing forwards, so nothing can be probed."""
        return None

    async def trace(self, query: TraceQuery) -> TraceOutcome:
        """Nothing forwards: every packet stays here."""
        return TraceOutcome(result=Result.ERROR, message="the null datapath forwards nothing")

    async def dump(self) -> dict[str, str]:
        """The held ports and entries."""
        ports = "\n".join(f"{p.port} uid={p.uid} network={p.network}" for p in self.ports.values())
        entries = "\n".join(f"vni={vni} {kind} {key}" for vni, kind, key in sorted(self.entries))
        return {"ports": ports, "entries": entries}

    async def health(self) -> Health:
        return Health(healthy=True)

    async def cleanup(self) -> dict[str, int]:
        """Forget everything. Idempotent."""
        removed = {"ports": len(self.ports), "entries": len(self.entries)}
        self.ports.clear()
        self.entries.clear()
        return removed

    async def close(self) -> None:
        """Nothing to release."""
