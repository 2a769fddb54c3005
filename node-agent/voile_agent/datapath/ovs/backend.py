"""``OvsDatapath``: the neutral plan on Open vSwitch (kernel or userspace datapath).

Host: one ``fail_mode=secure`` integration bridge with one flow-based VXLAN port
(``remote_ip=flow key=flow``); with the userspace (netdev) datapath also the underlay bridge that
takes over the NIC (``underlay.py``). Endpoints: a veth (or an internal port for host targets)
whose outer end is a tagged bridge port. Forwarding: ``flows.plan_flows`` renders the plan, the
cookie diff is applied in one atomic bundle, and once per resync period ``ovs-ofctl diff-flows``
finds flows changed under our cookies and replaces them. netdev also needs each remote VTEP's
next hop in its tunnel neighbour cache before the first packet (``neighbours.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import logging
from collections.abc import Collection

from voile.api import constants as c
from voile.api import naming
from voile.api.model import TargetKind
from voile.api.trace import Result
from voile.errors import DatapathError
from voile_agent.datapath.base import (
    Health,
    Observed,
    ObservedPort,
    ProgramReport,
    TraceOutcome,
    TraceQuery,
)
from voile_agent.datapath.ovs import echo
from voile_agent.datapath.ovs import flows as flowplan
from voile_agent.datapath.ovs import trace as tracing
from voile_agent.datapath.ovs.appctl import AppCtl
from voile_agent.datapath.ovs.model import EXT_NETWORK, DatapathType, PortRole
from voile_agent.datapath.ovs.neighbours import TunnelNeighbours
from voile_agent.datapath.ovs.openflow import OpenFlow
from voile_agent.datapath.ovs.ovsdb import Ovs
from voile_agent.datapath.ovs.underlay import ensure_underlay, undo_underlay, vtep_address
from voile_agent.host import netlink
from voile_agent.host import probe as hostprobe
from voile_agent.host.tools import run_tool
from voile_agent.planning import probes
from voile_agent.planning.model import IFALIAS_PREFIX, Attachment, HostPlan
from voile_agent.planning.probes import ProbeTarget

log = logging.getLogger(__name__)

HEALTH_DEADLINE = 2.0  # seconds for each daemon to answer a health check


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OvsSettings:
    bridge: str = "br-voile"
    datapath_type: DatapathType = DatapathType.SYSTEM
    vxlan_port: int = c.DEFAULT_VXLAN_PORT
    tunnel_port: str = "vxlan-voile"
    ovsdb: str = "unix:/run/openvswitch/db.sock"
    ovs_rundir: str = "/run/openvswitch"
    underlay_interface: str | None = None
    underlay_bridge: str = "br-underlay"
    vtep_ip: str | None = None
    vtep_interface: str | None = None
    allowed_netns_dirs: tuple[str, ...] = netlink.DEFAULT_ALLOWED_NETNS_DIRS
    probe_port: str = "voile-probe"
    probe_mtu: int = c.MAX_MTU

    @property
    def netdev(self) -> bool:
        return self.datapath_type == DatapathType.NETDEV


class OvsDatapath:
    """The Open vSwitch backend of one host (see ``voile_agent.datapath.base.Datapath``)."""

    def __init__(self, settings: OvsSettings) -> None:
        self.s = settings
        self.ovs = Ovs(settings.ovsdb)
        self.openflow = OpenFlow(settings.bridge, settings.ovs_rundir)
        self.appctl = AppCtl(settings.ovs_rundir)
        self.neighbours = TunnelNeighbours(self.appctl)
        self._tunnel_ofport: int | None = None
        self._probe_ofport: int | None = None
        self._vtep: ipaddress.IPv4Address | None = None
        self._probe_ids = itertools.count(1)
        # Whether this process has installed its flows (the canary among them): from then on a
        # missing canary means ovs-vswitchd lost its flow table.
        self._programmed = False

    @property
    def kind(self) -> str:
        return "ovs"

    async def ensure_host(self) -> ipaddress.IPv4Address:
        """Underlay bridge (netdev), integration bridge, tunnel port; the VTEP. Idempotent."""
        s = self.s
        await asyncio.to_thread(
            ensure_underlay,
            self.ovs,
            interface=s.underlay_interface,
            bridge=s.underlay_bridge,
            datapath_type=s.datapath_type,
        )
        vtep = await asyncio.to_thread(
            vtep_address,
            vtep_ip=s.vtep_ip,
            vtep_interface=s.vtep_interface,
            underlay=s.underlay_interface,
            bridge=s.underlay_bridge,
        )
        await asyncio.to_thread(
            self.ovs.ensure_bridge,
            s.bridge,
            s.datapath_type,
            role=PortRole.INTEGRATION,
            secure=True,
        )
        await asyncio.to_thread(
            self.ovs.ensure_tunnel_port,
            s.bridge,
            s.tunnel_port,
            local_ip=str(vtep),
            dst_port=s.vxlan_port,
        )
        await asyncio.to_thread(
            self.ovs.ensure_internal_port,
            s.bridge,
            s.probe_port,
            role=PortRole.PROBE,
            mtu=s.probe_mtu,
        )
        await asyncio.to_thread(netlink.bring_up, s.probe_port)
        self._vtep = vtep
        if not self._programmed and await asyncio.to_thread(self.ovs.flow_restore_wait):
            # An agent that has just started has no flows to restore before the API answers,
            # and the API is reached through this switch: let it forward.
            await asyncio.to_thread(self.ovs.clear_flow_restore_wait)
            log.warning("flow-restore-wait cleared at start: no flows to restore yet")
        return vtep

    async def attach(self, attachment: Attachment) -> None:
        """Kernel side first, then the OVS port (the netdev datapath opens the device when the
        port is added, so it must exist); host targets the other way round. Idempotent."""
        att, s = attachment, self.s
        if att.kind == TargetKind.HOST:
            await asyncio.to_thread(self.ovs.ensure_endpoint_port, s.bridge, att)
            await asyncio.to_thread(netlink.configure_internal, att, tx_off=s.netdev)
            return
        fresh = not await asyncio.to_thread(netlink.link_exists, att.port)
        if att.kind == TargetKind.NETNS:
            assert att.netns_path is not None
            netns = netlink.check_netns(att.netns_path, s.allowed_netns_dirs)
            await asyncio.to_thread(netlink.plumb_veth, att, netns, tx_off=s.netdev)
        else:
            await asyncio.to_thread(netlink.plumb_handoff, att, tx_off=s.netdev)
        if fresh:
            # A re-created device: make OVS open it again.
            await asyncio.to_thread(self.ovs.delete_port, att.port)
        await asyncio.to_thread(self.ovs.ensure_endpoint_port, s.bridge, att)

    async def observe(self, *, wait_for: Collection[str] = (), timeout: float = 10.0) -> Observed:
        """Endpoint ports of the integration bridge (with their OpenFlow numbers) and tagged
        veths that are not on it. Raises DatapathError when OVSDB or netlink cannot be read."""
        s = self.s
        ports = await asyncio.to_thread(
            self.ovs.wait_ports,
            s.bridge,
            {*wait_for, s.tunnel_port, s.probe_port},
            timeout=timeout,
        )
        links = await asyncio.to_thread(netlink.agent_links)
        numbers = {p.name: p.ofport for p in ports}
        self._tunnel_ofport = numbers.get(s.tunnel_port)
        self._probe_ofport = numbers.get(s.probe_port)
        endpoint_ports = tuple(
            ObservedPort(
                port=p.name,
                uid=p.endpoint_uid or "",
                network=p.ids.get(EXT_NETWORK),
                handle=p.ofport,
            )
            for p in ports
            if p.owned and p.role == PortRole.ENDPOINT.value
        )
        on_bridge = {p.name for p in ports}
        stray = tuple(
            sorted(
                (name, alias.removeprefix(IFALIAS_PREFIX))
                for name, alias in links.items()
                if name.startswith(naming.PORT_PREFIX) and name not in on_bridge
            )
        )
        return Observed(ports=endpoint_ports, links=stray)

    async def program(self, plan: HostPlan, observed: Observed, *, verify: bool) -> ProgramReport:
        """Flows by cookie diff in one bundle; with ``verify``, drift repair; on netdev, the
        tunnel neighbours of every remote VTEP. Idempotent."""
        ofports = {p.port: p.handle for p in observed.ports if p.handle is not None}
        desired = flowplan.plan_flows(plan, ofports=ofports, tunnel_ofport=self._tunnel_ofport)
        desired += flowplan.probe_flows(
            plan, probe_ofport=self._probe_ofport, tunnel_ofport=self._tunnel_ofport
        )
        desired.append(flowplan.CANARY)
        diff = flowplan.diff_flows(desired, await self.openflow.cookies())
        if not plan.complete:
            diff = flowplan.FlowDiff(add=diff.add, delete=())
        drifted = await self.openflow.drifted(desired) if verify else set()
        repaired = flowplan.with_repairs(diff, desired, drifted)
        if len(repaired.add) > len(diff.add):
            log.warning(
                "flows changed outside the agent, replaced count=%d",
                len(repaired.add) - len(diff.add),
            )
        await self.openflow.apply(repaired)
        self._programmed = True
        await self._restored(len(repaired.add))
        settled = True
        if self.s.netdev and plan.remote_vteps:
            settled = await self.neighbours.resolve(plan.remote_vteps)
        return ProgramReport(
            added=len(diff.add),
            deleted=len(diff.delete),
            repaired=len(repaired.add) - len(diff.add),
            settled=settled,
        )

    async def _restored(self, added: int) -> None:
        """After a restart of ovs-vswitchd with ``flow-restore-wait`` (the lab's supervisor,
        like ovs-ctl, sets it before it restarts the daemon), forwarding resumes only now that
        the flows are back. Idempotent."""
        if await asyncio.to_thread(self.ovs.flow_restore_wait):
            await asyncio.to_thread(self.ovs.clear_flow_restore_wait)
            log.warning("flows restored after an ovs-vswitchd restart added=%d", added)

    async def detach(self, port: str) -> bool:
        """The bridge port and its veth, if tagged ours. Idempotent."""
        deleted = await asyncio.to_thread(self.ovs.delete_port, port)
        unplumbed = await asyncio.to_thread(netlink.unplumb, port)
        return deleted or unplumbed

    async def probe(
        self, targets: Collection[ProbeTarget], *, timeout: float
    ) -> dict[ProbeTarget, float | None] | None:
        """Probes out of the probe port (see ``flows.probe_flows``). Read-only."""
        if self._vtep is None:
            raise DatapathError("the host is not set up yet")
        vtep = self._vtep
        frames = {}
        for target in targets:
            probe_id = next(self._probe_ids) & 0xFFFFFFFF
            frame = probes.build_probe(target, source=vtep, probe_id=probe_id, sequence=probe_id)
            frames[target] = (probe_id, frame)
        return await asyncio.to_thread(
            hostprobe.exchange, self.s.probe_port, frames, local=vtep, timeout=timeout
        )

    async def trace(self, query: TraceQuery) -> TraceOutcome:
        """``ofproto/trace`` of the query's packet on the integration bridge. Read-only."""
        observed = await self.observe()
        numbers = {p.port: p.handle for p in observed.ports if p.handle is not None}
        if query.from_tunnel is not None:
            in_port = self._tunnel_ofport
        else:
            in_port = numbers.get(query.from_port or "")
        if in_port is None:
            return TraceOutcome(
                result=Result.ERROR,
                message=f"port {query.from_port or self.s.tunnel_port} is not on {self.s.bridge}",
            )
        flow = tracing.trace_flow(query, in_port=in_port, local_vtep=self._vtep)
        text = await self.appctl.call("ofproto/trace", self.s.bridge, flow)
        return tracing.parse_trace(
            text,
            ports={number: name for name, number in numbers.items()},
            tunnel_ofport=self._tunnel_ofport,
            to_port=query.to_port,
        )

    async def dump(self) -> dict[str, str]:
        """Flows, ports, the tunnel neighbour cache and the datapath's own flows."""
        s = self.s
        parts: dict[str, str] = {}
        commands = {
            "ofctl-dump-flows": (
                "ovs-ofctl",
                "-O",
                "OpenFlow14",
                "dump-flows",
                self.openflow.target,
            ),
            "ofctl-dump-ports": (
                "ovs-ofctl",
                "-O",
                "OpenFlow14",
                "dump-ports-desc",
                self.openflow.target,
            ),
            "vsctl-show": ("ovs-vsctl", f"--db={s.ovsdb}", "--timeout=5", "show"),
        }
        for name, argv in commands.items():
            parts[name] = await self._text(argv)
        for name, args in {
            "tnl-neigh": ("tnl/neigh/show",),
            "dpctl-dump-flows": ("dpctl/dump-flows",),
            "ovs-route": ("ovs/route/show",),
        }.items():
            try:
                parts[name] = await self.appctl.call(*args)
            except DatapathError as exc:
                parts[name] = f"error: {exc}"
        return parts

    async def _text(self, argv: tuple[str, ...]) -> str:
        try:
            return await run_tool(*argv, timeout=10, what=" ".join(argv[:2]))
        except DatapathError as exc:
            return f"error: {exc}"

    async def health(self) -> Health:
        """ovsdb-server answers an echo, ovs-vswitchd its version and an OpenFlow read, and
        its flow table still holds the canary flow once the agent has installed it (gone: the
        daemon restarted). Each within ``HEALTH_DEADLINE``. Read-only."""
        unavailable = c.Reason.DATAPATH_UNAVAILABLE.value
        try:
            await echo.echo(self.s.ovsdb, timeout=HEALTH_DEADLINE)
        except DatapathError as exc:
            return Health(healthy=False, reason=unavailable, message=f"ovsdb-server: {exc}")
        try:
            await self.appctl.call("version", timeout=HEALTH_DEADLINE)
            canary = await self.openflow.has_flow(flowplan.CANARY, timeout=HEALTH_DEADLINE)
        except DatapathError as exc:
            return Health(healthy=False, reason=unavailable, message=f"ovs-vswitchd: {exc}")
        if self._programmed and not canary:
            return Health(
                healthy=False,
                reason=c.Reason.DATAPATH_RESTARTED.value,
                message="ovs-vswitchd lost its flows (it restarted); re-installing them",
            )
        return Health(healthy=True)

    async def cleanup(self) -> dict[str, int]:
        """Flows, endpoint ports and their veths, tagged links, the tunnel port, the integration
        bridge, the underlay bridge (addresses moved back). Idempotent."""
        s = self.s
        removed = {"ports": 0, "links": 0, "bridges": 0}
        if await asyncio.to_thread(self.ovs.bridge, s.bridge) is not None:
            try:
                await self.openflow.delete_all()
            except DatapathError as exc:
                log.warning("could not delete flows bridge=%s error=%s", s.bridge, exc)
        for port in await asyncio.to_thread(self.ovs.ports, s.bridge):
            if port.owned and await asyncio.to_thread(self.ovs.delete_port, port.name):
                removed["ports"] += 1
        for name in await asyncio.to_thread(netlink.agent_links):
            if await asyncio.to_thread(netlink.unplumb, name):
                removed["links"] += 1
        if await asyncio.to_thread(self.ovs.delete_bridge, s.bridge):
            removed["bridges"] += 1
        if await asyncio.to_thread(undo_underlay, self.ovs, s.underlay_bridge):
            removed["bridges"] += 1
        return removed

    async def close(self) -> None:
        """Nothing to release: ovsdbapp's connection thread is a daemon thread."""
