"""The agent's loops: watches feed an in-memory view, one reconcile pass at a time turns it into
the datapath (observe -> plan -> apply), a timer re-runs the pass to repair drift, and a heartbeat
Lease tells the operator the agent is alive and where its VTEP is.

A pass, in order (each step idempotent, so a crash anywhere is repaired by the next pass):
 1. host set-up: underlay bridge (netdev), integration bridge, tunnel port;
 2. per local Endpoint: finalizer first, then the veth/internal port and the OVS port;
 3. flows: plan from what is plumbed (observed ofports) and the remote endpoints, apply the
    cookie diff in one bundle (unchanged flows untouched);
 4. remove stale ports and veths (after their flows are gone), then release finalizers of
    deleted Endpoints;
 5. status (vtep, Ready) for each local Endpoint, only when it changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from typing import Any

from voile import kube
from voile.api import constants as c
from voile.errors import DatapathError, PlumbingError
from voile_agent import metrics
from voile_agent.appliers import netlink
from voile_agent.appliers.appctl import AppCtl
from voile_agent.appliers.kube import KubeWriter
from voile_agent.appliers.openflow import OpenFlow
from voile_agent.appliers.ovs import Ovs
from voile_agent.controller import datapath
from voile_agent.controller.informer import Informer
from voile_agent.planning import flows as flowplan
from voile_agent.planning import state
from voile_agent.planning.model import (
    DatapathType,
    DesiredPort,
    LocalEndpoint,
    NetworkInfo,
    PortKind,
    PortRole,
    RemoteEndpoint,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RETRY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AgentSettings:
    node: str
    vtep_ip: str | None = None
    vtep_interface: str | None = None
    datapath: datapath.DatapathSettings = dataclasses.field(
        default_factory=datapath.DatapathSettings
    )
    allowed_netns_dirs: tuple[str, ...] = netlink.DEFAULT_ALLOWED_NETNS_DIRS
    resync_period: float = 30.0
    namespace: str = c.DEFAULT_NAMESPACE
    heartbeat_interval: float = 10.0
    lease_duration: int = 40


@dataclasses.dataclass(kw_only=True, slots=True)
class PassResult:
    """What one reconcile pass did; used for logs and to decide on an early retry."""

    plumbed: int = 0
    failed: int = 0
    flows_added: int = 0
    flows_deleted: int = 0
    flows_repaired: int = 0
    ports_deleted: int = 0
    retry: bool = False


def _record(result: PassResult) -> None:
    metrics.ENDPOINTS_PLUMBED.set(result.plumbed)
    metrics.ENDPOINTS_FAILED.set(result.failed)
    metrics.FLOWS_CHANGED.labels(op="add").inc(result.flows_added)
    metrics.FLOWS_CHANGED.labels(op="repair").inc(result.flows_repaired)
    metrics.FLOWS_CHANGED.labels(op="delete").inc(result.flows_deleted)
    metrics.PORTS_DELETED.inc(result.ports_deleted)


class Agent:
    def __init__(self, settings: AgentSettings, client: kube.KubeClient, ovs: Ovs) -> None:
        self.s = settings
        self.client = client
        self.writer = KubeWriter(client)
        self.ovs = ovs
        self.openflow = OpenFlow(settings.datapath.bridge, settings.datapath.ovs_rundir)
        self.appctl = AppCtl(settings.datapath.ovs_rundir)
        self._unanswered: set[tuple[str, ipaddress.IPv4Address]] = set()
        self.vtep: ipaddress.IPv4Address | None = None
        self._wake = asyncio.Event()
        ep_path = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
        self.local = Informer(
            client,
            ep_path,
            on_change=self._wake.set,
            field_selector=f"spec.node={settings.node}",
            name="local-endpoints",
        )
        self.networks = Informer(
            client,
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            on_change=self._wake.set,
            name="networks",
        )
        self.remote: dict[str, Informer] = {}

    # -- loops ---------------------------------------------------------------------------------

    async def setup_host(self) -> ipaddress.IPv4Address:
        d = self.s.datapath
        await asyncio.to_thread(datapath.ensure_underlay, self.ovs, d)
        vtep = await asyncio.to_thread(
            datapath.resolve_vtep,
            self.ovs,
            d,
            vtep_ip=self.s.vtep_ip,
            vtep_interface=self.s.vtep_interface,
        )
        await asyncio.to_thread(datapath.ensure_integration, self.ovs, d, vtep)
        return vtep

    async def run(self) -> None:
        self.vtep = await self.setup_host()
        log.info(
            "agent starting node=%s vtep=%s bridge=%s datapath=%s",
            self.s.node,
            self.vtep,
            self.s.datapath.bridge,
            self.s.datapath.datapath_type.value,
        )
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        self.local.start()
        self.networks.start()
        try:
            # Until the first lists arrive the agent changes nothing: OVS keeps forwarding with
            # the flows it has, however long the API server is out of reach.
            synced = asyncio.gather(self.local.synced.wait(), self.networks.synced.wait())
            while True:
                done, _ = await asyncio.wait({synced}, timeout=30)
                if done:
                    break
                log.warning(
                    "still waiting for the first list from the API server; not changing "
                    "the datapath until it arrives"
                )
            verify_at = 0.0
            while True:
                self._wake.clear()
                result = PassResult(retry=True)
                started = time.monotonic()
                # Comparing every flow with the plan is for drift, so once per resync period
                # is enough; passes woken by events in between stay lean.
                verify = started >= verify_at
                if verify:
                    verify_at = started + self.s.resync_period
                try:
                    result = await self.reconcile(verify_flows=verify)
                except Exception:
                    metrics.PASS_ERRORS.inc()
                    log.exception("reconcile pass failed; retrying")
                else:
                    _record(result)
                metrics.PASS_SECONDS.observe(time.monotonic() - started)
                delay = RETRY_SECONDS if result.retry else self.s.resync_period
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    await asyncio.sleep(0.1)  # debounce bursts of events into one pass
                except TimeoutError:
                    pass
        finally:
            heartbeat.cancel()
            for informer in [self.local, self.networks, *self.remote.values()]:
                await informer.stop()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.writer.heartbeat(
                    namespace=self.s.namespace,
                    node=self.s.node,
                    vtep=str(self.vtep),
                    duration=self.s.lease_duration,
                )
            except Exception as exc:
                metrics.HEARTBEAT_FAILURES.inc()
                log.warning("heartbeat failed error=%s", exc)
            await asyncio.sleep(self.s.heartbeat_interval)

    # -- one pass ------------------------------------------------------------------------------

    def _network_infos(self) -> dict[str, NetworkInfo]:
        infos = {}
        for obj in self.networks.items():
            info = state.network_info(obj)
            if info is not None:
                infos[info.name] = info
        return infos

    async def _sync_remote_informers(self, wanted: set[str]) -> None:
        """Watch the Endpoints of exactly the networks present on this host."""
        for name in sorted(set(self.remote) - wanted):
            await self.remote.pop(name).stop()
        for name in sorted(wanted - set(self.remote)):
            informer = Informer(
                self.client,
                kube.path(c.GROUP, c.VERSION, c.ENDPOINTS),
                on_change=self._wake.set,
                field_selector=f"spec.network={name}",
                name=f"network-endpoints/{name}",
            )
            self.remote[name] = informer
            informer.start()

    async def _remote_synced(self, *, timeout: float) -> bool:
        pending = [i.synced.wait() for i in self.remote.values() if not i.synced.is_set()]
        if not pending:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except TimeoutError:
            log.warning("remote endpoint watches not synced; keeping existing flows")
            return False
        return True

    def _remotes(self, networks: dict[str, NetworkInfo]) -> list[RemoteEndpoint]:
        result = []
        for informer in self.remote.values():
            for obj in informer.items():
                r = state.remote_endpoint(obj, networks, node=self.s.node)
                if r is not None:
                    result.append(r)
        return result

    async def _plumb(self, port: DesiredPort) -> None:
        """Kernel side, then OVS side (the netdev datapath opens the device when the port is
        added, so the device must exist first); host targets the other way round."""
        d = self.s.datapath
        tx_off = d.datapath_type == DatapathType.NETDEV
        ep = port.endpoint
        if port.kind == PortKind.VETH:
            assert ep.netns_path is not None
            netns = netlink.check_netns(ep.netns_path, self.s.allowed_netns_dirs)
            fresh = not await asyncio.to_thread(netlink.link_exists, port.name)
            await asyncio.to_thread(netlink.plumb_veth, port, netns, tx_off=tx_off)
            if fresh:
                # A re-created device: make OVS open it again.
                await asyncio.to_thread(self.ovs.delete_port, port.name)
            await asyncio.to_thread(self.ovs.ensure_endpoint_port, d.bridge, port)
        else:
            await asyncio.to_thread(self.ovs.ensure_endpoint_port, d.bridge, port)
            await asyncio.to_thread(netlink.configure_internal, port, tx_off=tx_off)

    async def reconcile(self, *, verify_flows: bool = True) -> PassResult:
        """One pass: observe, plan, apply. ``verify_flows`` also compares every Voile flow on
        the bridge with the plan (``ovs-ofctl diff-flows``) and replaces those changed in place;
        without it, flows are diffed by cookie only."""
        result = PassResult()
        d = self.s.datapath
        self.vtep = await self.setup_host()
        vtep = str(self.vtep)
        networks = self._network_infos()
        local_objs = self.local.items()

        plumbed_ok: list[DesiredPort] = []
        wanted: list[DesiredPort] = []
        deleting: list[Obj] = []
        conditions: list[tuple[Obj, state.Condition]] = []
        for obj in local_objs:
            ep = state.parse(obj)
            if ep is None:
                continue
            if ep.deleting:
                deleting.append(obj)
                continue
            local = state.local_endpoint(obj, networks)
            if not isinstance(local, state.Waiting):
                # Wanted from here on: whatever happens below, its port is not stale.
                wanted.append(state.desired_port(local))
            try:
                await self.writer.add_finalizer(obj)
            except kube.ApiError as exc:
                # Not plumbed (further) without our finalizer; what exists is kept.
                log.info("finalizer not added yet endpoint=%s error=%s", ep.key, exc)
                result.retry = True
                continue
            if isinstance(local, state.Waiting):
                conditions.append((obj, state.ready(local.reason, local.message)))
                continue
            port = wanted[-1]
            await self._announce(obj, vtep)
            try:
                await self._plumb(port)
            except PlumbingError as exc:
                conditions.append((obj, state.ready(exc.reason, exc.message)))
                result.failed += 1
                result.retry = True
                continue
            except (DatapathError, OSError) as exc:
                log.warning("plumbing failed endpoint=%s error=%s", ep.key, exc)
                conditions.append((obj, state.ready(c.Reason.PLUMBING_FAILED.value, str(exc))))
                result.failed += 1
                result.retry = True
                continue
            plumbed_ok.append(port)

        await self._sync_remote_informers({p.endpoint.network for p in wanted})
        # Never plan from a partial view: before every remote watch has listed once, a missing
        # remote would look stale and its flows would be deleted (traffic lost on restart).
        complete = await self._remote_synced(timeout=10.0)

        # Flows from what is actually on the bridge.
        ofports = await asyncio.to_thread(
            self.ovs.wait_ofports, d.bridge, {p.name for p in plumbed_ok} | {d.tunnel_port}
        )
        plumbed: list[flowplan.PlumbedEndpoint] = []
        for port in plumbed_ok:
            ofport = ofports.get(port.name)
            if ofport is None:
                conditions.append(
                    (
                        self._obj(port.endpoint),
                        state.ready(
                            c.Reason.PLUMBING_FAILED.value,
                            f"port {port.name} has no OpenFlow number",
                        ),
                    )
                )
                result.retry = True
                continue
            plumbed.append(flowplan.PlumbedEndpoint(endpoint=port.endpoint, ofport=ofport))
            conditions.append(
                (
                    self._obj(port.endpoint),
                    state.ready(
                        c.Reason.READY.value, f"plumbed on {self.s.node} as port {port.name}"
                    ),
                )
            )
        remotes = self._remotes(networks)
        desired = flowplan.plan_flows(
            tunnel_ofport=ofports.get(d.tunnel_port),
            local=plumbed,
            remote=remotes,
        )
        diff = flowplan.diff_flows(desired, await self.openflow.cookies())
        if not complete:
            diff = flowplan.FlowDiff(add=diff.add, delete=())
            result.retry = True
        drifted = await self.openflow.drifted(desired) if verify_flows else set()
        repaired = flowplan.with_repairs(diff, desired, drifted)
        result.flows_repaired = len(repaired.add) - len(diff.add)
        if result.flows_repaired:
            log.warning("flows changed outside the agent, replaced count=%d", result.flows_repaired)
        await self.openflow.apply(repaired)
        if d.datapath_type == DatapathType.NETDEV and remotes:
            try:
                resolved = await self._resolve_tunnel_neighbours({r.vtep for r in remotes})
            except (DatapathError, OSError) as exc:
                log.warning("tunnel neighbour cache not read error=%s", exc)
                resolved = False
            result.retry = result.retry or not resolved
        result.flows_added, result.flows_deleted = len(diff.add), len(diff.delete)
        result.plumbed = len(plumbed)

        # Stale ports and links, now that no flow points at them.
        observed = await asyncio.to_thread(self.ovs.ports, d.bridge)
        for name in state.stale_ports(observed, wanted):
            await asyncio.to_thread(self.ovs.delete_port, name)
            await asyncio.to_thread(netlink.unplumb, name)
            result.ports_deleted += 1
        wanted_names = {p.name for p in wanted}
        for name in await asyncio.to_thread(netlink.agent_links):
            if name not in wanted_names and name.startswith("vo"):
                await asyncio.to_thread(netlink.unplumb, name)
        observed_names = {p.name for p in observed if p.role == PortRole.ENDPOINT.value}
        for obj in deleting:
            ep = state.parse(obj)
            if ep is None:
                continue
            name = state.desired_port_name(ep)
            # Removed just above; confirm before letting the address go.
            if (
                name in observed_names
                and name not in wanted_names
                and any(p.name == name for p in await asyncio.to_thread(self.ovs.ports, d.bridge))
            ):
                result.retry = True
                continue
            try:
                await self.writer.remove_finalizer(obj)
            except kube.Conflict:
                result.retry = True

        for obj, cond in conditions:
            try:
                await self.writer.write_status(
                    obj, vtep=vtep if cond.reason == c.Reason.READY.value else None, cond=cond
                )
            except kube.ApiError as exc:
                log.info("status not written error=%s", exc)
                result.retry = True
        log.debug("pass done %s", result)
        return result

    async def _resolve_tunnel_neighbours(
        self, vteps: set[ipaddress.IPv4Address], *, timeout: float = 1.0
    ) -> bool:
        """netdev datapath: have every remote VTEP's next hop in Open vSwitch's tunnel neighbour
        cache before local endpoints are reported Ready, so that not even the first packet to
        a new VTEP is dropped on a cache miss.

        ARP requests go out for what is missing, and the cache is read again until it is
        complete or ``timeout`` passes. A next hop that did not answer then (a host that is
        down) is asked again on later passes but not waited for, so one dead peer does not slow
        every pass. False when a next hop went unanswered for the first time (retry soon)."""
        hops = await asyncio.to_thread(netlink.next_hops, sorted(vteps))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing = state.unresolved_next_hops(hops, await self.appctl.tunnel_neighbours())
        if missing:
            await asyncio.to_thread(netlink.send_arp_requests, missing)
        while any((h.interface, h.address) not in self._unanswered for h in missing):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
            missing = state.unresolved_next_hops(hops, await self.appctl.tunnel_neighbours())
        new = [h for h in missing if (h.interface, h.address) not in self._unanswered]
        if new:
            log.warning(
                "tunnel next hops not answering %s",
                ", ".join(f"{h.address} via {h.interface}" for h in new),
            )
        self._unanswered = {(h.interface, h.address) for h in missing}
        return not new

    async def _announce(self, obj: Obj, vtep: str) -> None:
        """Publish the VTEP of an allocated endpoint before plumbing it (Ready stays False until
        it is plumbed): the other hosts program their flows towards it while this one plumbs,
        so its first packets find the way back. Written once; a failure is retried next pass."""
        if (obj.get("status") or {}).get("vtep") == vtep:
            return
        pending = state.ready(c.Reason.PENDING.value, f"being plumbed on {self.s.node}")
        try:
            await self.writer.write_status(obj, vtep=vtep, cond=pending)
        except kube.ApiError as exc:
            log.info("vtep not announced yet error=%s", exc)

    def _obj(self, ep: LocalEndpoint) -> Obj:
        for obj in self.local.items():
            if (obj.get("metadata") or {}).get("uid") == ep.uid:
                return obj
        return {"metadata": {"namespace": ep.namespace, "name": ep.name}}
