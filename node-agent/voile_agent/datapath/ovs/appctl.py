"""ovs-vswitchd's runtime commands through ``ovs-appctl``: the userspace datapath's tunnel
neighbour cache (see ``neighbours.py`` for why the agent reads it)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from voile_agent.host.tools import run_tool

NeighbourCache = dict[tuple[str, ipaddress.IPv4Address], str]


def parse_neigh_show(text: str) -> NeighbourCache:
    """``tnl/neigh/show`` as {(bridge, address): MAC}; IPv6 rows and headers are skipped."""
    cache: NeighbourCache = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv4Address):
            cache[(fields[2], address)] = fields[1]
    return cache


class AppCtl:
    """One ovs-vswitchd, found through its run directory: the control socket
    ``<rundir>/ovs-vswitchd.ctl`` when the daemon was started with that name (the lab), else the
    one the pidfile names (packaged Open vSwitch)."""

    def __init__(self, rundir: str, *, timeout: float = 10.0) -> None:
        self.rundir = rundir
        self.timeout = timeout

    def _target(self) -> str:
        fixed = Path(self.rundir) / "ovs-vswitchd.ctl"
        return str(fixed) if fixed.exists() else "ovs-vswitchd"

    async def call(self, *args: str, timeout: float | None = None) -> str:
        target = self._target()
        return await run_tool(
            "ovs-appctl",
            f"--timeout={max(1, int(timeout or self.timeout))}",
            "-t",
            target,
            *args,
            timeout=self.timeout if timeout is None else timeout,
            what=f"ovs-appctl {args[0]}",
            env={**os.environ, "OVS_RUNDIR": self.rundir},
            gate=f"{self.rundir}/ovs-vswitchd",
        )

    async def tunnel_neighbours(self) -> NeighbourCache:
        """The userspace datapath's tunnel neighbour cache. Read-only."""
        return parse_neigh_show(await self.call("tnl/neigh/show"))
