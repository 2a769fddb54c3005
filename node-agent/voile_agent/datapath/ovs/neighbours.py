"""The userspace (netdev) datapath's tunnel neighbour cache, filled ahead of traffic.

With ``datapath_type=netdev`` Open vSwitch routes and resolves the outer packets of a tunnel
itself, and drops the packet whose next hop is not in its tunnel neighbour cache while it sends an
ARP request: the first packet to a new VTEP would be lost. Open vSwitch learns entries only by
snooping ARP replies that cross one of its bridges, so the agent sends its own ARP request for
each missing next hop (a ping would not do: the kernel sends no request when it already knows the
peer, which it does as soon as the peer has ARPed for us) and waits until the cache has it.
The kernel datapath uses the kernel's neighbour table and needs none of this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence

from voile_agent.datapath.ovs.appctl import AppCtl
from voile_agent.host import netlink
from voile_agent.host.netlink import NextHop

log = logging.getLogger(__name__)


def unresolved_next_hops(
    hops: Iterable[NextHop], cache: Mapping[tuple[str, ipaddress.IPv4Address], str]
) -> list[NextHop]:
    """The next hops the tunnel neighbour cache does not hold yet, one per (interface, address),
    in a stable order. ``cache`` maps (bridge, address) to MAC as ``tnl/neigh/show`` lists it.
    Pure."""
    seen: set[tuple[str, ipaddress.IPv4Address]] = set()
    missing: list[NextHop] = []
    for hop in sorted(hops, key=lambda h: (h.interface, h.address, h.vtep)):
        key = (hop.interface, hop.address)
        if key in seen or key in cache:
            continue
        seen.add(key)
        missing.append(hop)
    return missing


class TunnelNeighbours:
    def __init__(self, appctl: AppCtl) -> None:
        self.appctl = appctl
        self._unanswered: set[tuple[str, ipaddress.IPv4Address]] = set()

    async def resolve(
        self, vteps: Sequence[ipaddress.IPv4Address], *, timeout: float = 1.0
    ) -> bool:
        """Have every VTEP's next hop in the cache: ARP requests for what is missing, then the
        cache read again until it is complete or ``timeout`` passes. A next hop that did not
        answer (a host that is down) is asked again on later calls but not waited for, so one
        dead peer does not slow every pass. False when a next hop went unanswered for the first
        time (ask again soon). Raises DatapathError when the cache cannot be read."""
        hops = await asyncio.to_thread(netlink.next_hops, sorted(vteps))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing = unresolved_next_hops(hops, await self.appctl.tunnel_neighbours())
        if missing:
            await asyncio.to_thread(netlink.send_arp_requests, missing)
        while any((h.interface, h.address) not in self._unanswered for h in missing):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
            missing = unresolved_next_hops(hops, await self.appctl.tunnel_neighbours())
        new = [h for h in missing if (h.interface, h.address) not in self._unanswered]
        if new:
            log.warning(
                "tunnel next hops not answering %s",
                ", ".join(f"{h.address} via {h.interface}" for h in new),
            )
        self._unanswered = {(h.interface, h.address) for h in missing}
        return not new
