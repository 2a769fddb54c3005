"""``EbpfDatapath``: the neutral plan on tc eBPF programs and one VXLAN device in external mode.

Host: a bpffs with this host's pins (``<bpffs>/voile/{progs,maps}``), the VXLAN device
``voile-vxlan`` (collect_md, UDP 4789) with ``from_vxlan`` on its ingress, and the probe veth
(``voile-probe`` for the agent, ``voile-probe-dp`` with ``from_probe``). Endpoints: a veth whose
host-side end has ``from_ep`` on its clsact ingress. Forwarding: ``maps.desired`` renders the
plan into the maps; every pass reads every map back and writes only differences, so an entry
deleted or changed by hand is repaired by the next pass. Programs and maps live on in the
kernel while the agent is away; a restart adopts them from their pins (same build id) and
writes nothing when nothing differs.

No packet of the host passes through a userspace process: the underlay is the kernel's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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
from voile_agent.datapath.ebpf import build, kernel, maps
from voile_agent.datapath.ebpf import trace as tracing
from voile_agent.datapath.ebpf.maps import MapName
from voile_agent.datapath.ebpf.syscall import Map, pinned_prog_id
from voile_agent.host import netlink
from voile_agent.host import probe as hostprobe
from voile_agent.planning import probes
from voile_agent.planning.model import IFALIAS_PREFIX, Attachment, HostPlan
from voile_agent.planning.probes import ProbeTarget

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
HOST_PORT_PREFIX = "vd"  # the datapath's end of a host target's veth


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EbpfSettings:
    vtep_ip: str | None = None
    vtep_interface: str | None = None
    bpffs: str = "/sys/fs/bpf"
    pin_name: str = "voile"
    vxlan_device: str = "voile-vxlan"
    vxlan_port: int = c.DEFAULT_VXLAN_PORT
    probe_port: str = "voile-probe"
    probe_datapath_port: str = "voile-probe-dp"
    probe_mtu: int = c.MAX_MTU
    allowed_netns_dirs: tuple[str, ...] = netlink.DEFAULT_ALLOWED_NETNS_DIRS
    offload: bool = True  # TX checksum/TSO left on at endpoints (off: see docs/datapath.md)
    bpf_object: str | None = None

    @property
    def pin_dir(self) -> Path:
        return Path(self.bpffs) / self.pin_name


def host_port_name(uid: str) -> str:
    return HOST_PORT_PREFIX + naming.port_name(uid)[len(naming.PORT_PREFIX) :]


def host_tmp_name(uid: str) -> str:
    return "vt" + naming.port_name(uid)[len(naming.PORT_PREFIX) :]


class EbpfDatapath:
    """The eBPF backend of one host (see ``voile_agent.datapath.base.Datapath``)."""

    def __init__(self, settings: EbpfSettings) -> None:
        self.s = settings
        self._maps: dict[MapName, Map] = {}
        self._vtep: ipaddress.IPv4Address | None = None
        self._vxlan_ifindex = 0
        self._probe_ifindex = 0
        self._build = 0
        self._ifindexes: dict[str, int] = {}
        self._written: dict[MapName, maps.Entries] = {}
        self._probe_ids = itertools.count(1)

    @property
    def kind(self) -> str:
        return "ebpf"

    # -- pins and maps ---------------------------------------------------------------------

    def _prog(self, name: str) -> Path:
        return self.s.pin_dir / "progs" / name

    def _open_maps(self) -> None:
        self._close_maps()
        for name in MapName:
            self._maps[name] = Map(str(self.s.pin_dir / "maps" / name.value))

    def _close_maps(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def _map(self, name: MapName) -> Map:
        if name not in self._maps:
            raise DatapathError("the eBPF maps are not open (host not set up)")
        return self._maps[name]

    def _pinned_build(self) -> int | None:
        raw = self._map(MapName.CONFIG).lookup(maps.u32(0))
        return int.from_bytes(raw[12:16], "little") if raw else None

    def _prog_id(self, name: str) -> int | None:
        return pinned_prog_id(str(self._prog(name)))

    def _intact(self) -> bool:
        """After the first set-up: pins, devices and their programs all still in place (the
        cheap check of every pass; anything missing runs the whole set-up again)."""
        s = self.s
        if self._vtep is None or not self._maps:
            return False
        if kernel.pins_present(s.pin_dir, tuple(m.value for m in MapName)):
            return False
        links = kernel.links()
        on = kernel.attached()
        for device, index, prog in (
            (s.vxlan_device, self._vxlan_ifindex, "from_vxlan"),
            (s.probe_datapath_port, self._probe_ifindex, "from_probe"),
        ):
            if links.get(device, (0, ""))[0] != index or on.get(index) != self._prog_id(prog):
                return False
        return True

    def _setup(self) -> ipaddress.IPv4Address:
        if self._intact():
            assert self._vtep is not None
            return self._vtep
        s = self.s
        kernel.ensure_bpffs(s.bpffs)
        obj = build.ensure_object(s.bpf_object)
        self._build = (
            int(hashlib.sha256(obj.read_bytes()).hexdigest()[:8], 16)
            if s.bpf_object
            else build.build_id()
        )
        missing = kernel.pins_present(s.pin_dir, tuple(m.value for m in MapName))
        reload = bool(missing)
        if not missing:
            self._open_maps()
            pinned = self._pinned_build()
            if pinned not in (None, 0, self._build):
                log.warning(
                    "pins of another build replaced pinned=%08x ours=%08x", pinned, self._build
                )
                reload = True
        elif (s.pin_dir / "progs").exists() or (s.pin_dir / "maps").exists():
            log.warning("pins incomplete, reloading missing=%s", ",".join(missing))
        if reload:
            # New programs and empty maps: this pass's program() writes every entry again.
            self._close_maps()
            kernel.load(obj, s.pin_dir)
            self._open_maps()
            self._written.clear()
        else:
            log.info("bpf pins adopted pins=%s", s.pin_dir)
        vtep = self._vtep_address()
        mtu = (
            netlink.mtu_of(s.vtep_interface)
            if s.vtep_interface
            else kernel.mtu_of_address(str(vtep))
        )
        self._vxlan_ifindex = kernel.ensure_vxlan(
            s.vxlan_device, port=s.vxlan_port, mtu=(mtu - VXLAN_OVERHEAD) if mtu else None
        )
        _, self._probe_ifindex = kernel.ensure_probe_pair(
            s.probe_port, s.probe_datapath_port, mtu=s.probe_mtu
        )
        have = kernel.attached()
        wanted = {
            s.vxlan_device: (self._vxlan_ifindex, "from_vxlan"),
            s.probe_datapath_port: (self._probe_ifindex, "from_probe"),
        }
        if reload:
            # Endpoint ports still run the old programs: give them the new ones.
            for name, (index, alias) in kernel.links().items():
                # Endpoint veths only: the datapath's own devices ("voile-probe" starts with
                # the port prefix too) carry DEVICE_ALIAS.
                endpoint = alias.startswith(IFALIAS_PREFIX) and alias != kernel.DEVICE_ALIAS
                if endpoint and name.startswith((naming.PORT_PREFIX, HOST_PORT_PREFIX)):
                    wanted[name] = (index, "from_ep")
        for device, (index, prog) in wanted.items():
            if have.get(index) != self._prog_id(prog):
                kernel.attach(device, self._prog(prog))
        self._write_config(vtep)
        self._vtep = vtep
        return vtep

    def _write_config(self, vtep: ipaddress.IPv4Address) -> None:
        value = maps.config_value(
            vxlan_ifindex=self._vxlan_ifindex,
            probe_ifindex=self._probe_ifindex,
            vtep=vtep,
            build=self._build,
        )
        cfg = self._map(MapName.CONFIG)
        if cfg.lookup(maps.u32(0)) != value:
            cfg.update(maps.u32(0), value)

    def _vtep_address(self) -> ipaddress.IPv4Address:
        if self.s.vtep_ip:
            return ipaddress.IPv4Address(self.s.vtep_ip)
        if self.s.vtep_interface:
            addrs = netlink.ipv4_addresses(self.s.vtep_interface)
            if addrs:
                return ipaddress.IPv4Address(addrs[0].split("/")[0])
        raise DatapathError(
            f"no IPv4 address on {self.s.vtep_interface!r} to use as VTEP; give --vtep-ip"
        )

    # -- the verbs -------------------------------------------------------------------------

    async def ensure_host(self) -> ipaddress.IPv4Address:
        """bpffs, pins (adopted or loaded), VXLAN device, probe port, tc programs. Idempotent."""
        return await asyncio.to_thread(self._setup)

    def _attach(self, att: Attachment) -> None:
        s = self.s
        tx_off = not s.offload
        if att.kind == TargetKind.HOST:
            dp = dataclasses.replace(att, port=host_port_name(att.uid), peer=host_tmp_name(att.uid))
            netlink.plumb_handoff(dp, tx_off=False)
            netlink.configure_internal(dataclasses.replace(att, port=att.interface), tx_off=tx_off)
            device = dp.port
        elif att.kind == TargetKind.NETNS:
            assert att.netns_path is not None
            netns = netlink.check_netns(att.netns_path, s.allowed_netns_dirs)
            netlink.plumb_veth(att, netns, tx_off=tx_off)
            device = att.port
        else:
            netlink.plumb_handoff(att, tx_off=tx_off)
            device = att.port
        index = kernel.link_index(device)
        if index is None:
            raise DatapathError(f"port {device} vanished while it was plumbed")
        # the pass observed just before: a device seen with from_ep on this very ifindex keeps
        # it (a bpftool dump per attachment was most of a pass at a few hundred ports)
        if index not in self._ifindexes.values():
            kernel.attach(device, self._prog("from_ep"))

    async def attach(self, attachment: Attachment) -> None:
        """The veth (a pair in the host's namespace for a host target), then ``from_ep`` on the
        datapath end's ingress. Idempotent."""
        await asyncio.to_thread(self._attach, attachment)

    def _observe(self) -> Observed:
        links = kernel.links()
        on = kernel.attached()
        from_ep = self._prog_id("from_ep")
        if from_ep is None:
            raise DatapathError(f"program from_ep is not pinned under {self.s.pin_dir}")
        uid_links: dict[str, list[str]] = {}
        for name, (_, alias) in links.items():
            if alias.startswith(IFALIAS_PREFIX) and alias != kernel.DEVICE_ALIAS:
                uid_links.setdefault(alias.removeprefix(IFALIAS_PREFIX), []).append(name)
        ports: list[ObservedPort] = []
        stray: list[tuple[str, str]] = []
        ifindexes: dict[str, int] = {}
        for uid, names in sorted(uid_links.items()):
            for name in sorted(names):
                if name.startswith(naming.PORT_PREFIX):
                    port = name
                elif name.startswith(HOST_PORT_PREFIX):
                    others = [n for n in names if not n.startswith(HOST_PORT_PREFIX)]
                    if not others:
                        stray.append((name, uid))
                        continue
                    port = others[0]
                else:
                    continue
                index = links[name][0]
                if on.get(index) == from_ep:
                    ports.append(ObservedPort(port=port, uid=uid, handle=index))
                    ifindexes[port] = index
                else:
                    stray.append((port, uid))
        self._ifindexes = ifindexes
        return Observed(ports=tuple(sorted(ports, key=lambda p: p.port)), links=tuple(stray))

    async def observe(self, *, wait_for: Collection[str] = (), timeout: float = 10.0) -> Observed:
        """Endpoint ports whose datapath end runs ``from_ep`` (ready, with its ifindex), and
        tagged veths that do not (yet). Raises DatapathError when netlink or bpftool cannot be
        read."""
        deadline = time.monotonic() + timeout
        while True:
            observed = await asyncio.to_thread(self._observe)
            ready = {p.port for p in observed.ports}
            if set(wait_for) <= ready or time.monotonic() >= deadline:
                return observed
            await asyncio.sleep(0.1)

    def _program(self, plan: HostPlan, observed: Observed) -> ProgramReport:
        ifindexes = {p.port: p.handle for p in observed.ports if p.handle is not None}
        peer_ports = frozenset(
            a.port for seg in plan.segments for a in seg.local if a.kind == TargetKind.NETNS
        )
        want = maps.desired(
            plan,
            ifindexes,
            vxlan_ifindex=self._vxlan_ifindex,
            probe_ifindex=self._probe_ifindex,
            build=self._build,
            peer_ports=peer_ports,
        )
        for vni in want.truncated:
            log.warning(
                "flood list truncated vni=%d max_ports=%d max_vteps=%d",
                vni,
                maps.MAX_PORTS,
                maps.MAX_VTEPS,
            )
        added = deleted = repaired = 0
        for name, entries in want.forwarding.items():
            m = self._map(name)
            d = maps.diff(
                entries,
                m.items(),
                complete=plan.complete or name == MapName.CONFIG,
                written=self._written.get(name),
            )
            for key, value in d.write.items():
                m.update(key, value)
            for key in d.delete:
                m.delete(key)
            added += len(d.write) - d.repaired
            repaired += d.repaired
            deleted += len(d.delete)
            self._written[name] = entries
        for name, keys in want.counters.items():
            m = self._map(name)
            have = set(m.keys())
            for key in keys - have:
                m.update(key, maps.ZERO_COUNTERS)
            if plan.complete:
                for key in have - keys:
                    m.delete(key)
        if repaired:
            log.warning("map entries changed outside the agent, replaced count=%d", repaired)
        if added or deleted or repaired:
            log.info(
                "map entries applied added=%d deleted=%d repaired=%d", added, deleted, repaired
            )
        return ProgramReport(added=added, deleted=deleted, repaired=repaired)

    async def program(self, plan: HostPlan, observed: Observed, *, verify: bool) -> ProgramReport:
        """Every forwarding map compared entry by entry with the plan (reads are cheap, so
        every pass verifies) and only differences written. Idempotent."""
        return await asyncio.to_thread(self._program, plan, observed)

    async def detach(self, port: str) -> bool:
        """The endpoint's veth (both ends, its tc filter with it), if tagged ours. Idempotent."""
        return await asyncio.to_thread(netlink.unplumb, port)

    async def probe(
        self, targets: Collection[ProbeTarget], *, timeout: float
    ) -> dict[ProbeTarget, float | None] | None:
        """Probes out of the probe port (``from_probe`` puts them into the tunnel; the peer's
        datapath answers; ``from_vxlan`` hands replies back). Read-only."""
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

    def _tables(self) -> maps.Tables:
        return maps.Tables.decode({name: self._map(name).items() for name in maps.FORWARDING})

    async def trace(self, query: TraceQuery) -> TraceOutcome:
        """The programs' decisions replayed on the maps as they are (``trace.walk``)."""
        observed = await self.observe()
        ifindexes = {p.port: p.handle for p in observed.ports if p.handle is not None}
        tables = await asyncio.to_thread(self._tables)
        if query.from_port is not None and query.from_port not in ifindexes:
            return TraceOutcome(
                result=Result.ERROR,
                message=f"port {query.from_port} does not run from_ep on this host",
            )
        return tracing.walk(query, tables, ifindexes=ifindexes)

    async def dump(self) -> dict[str, str]:
        """Maps, attached programs and the VXLAN device, as bpftool, tc and ip print them."""
        s = self.s

        def collect() -> dict[str, str]:
            parts = {
                "bpftool-net": kernel.text("bpftool", "net", "show"),
                "tc-vxlan": kernel.text("tc", "filter", "show", "dev", s.vxlan_device, "ingress"),
                "ip-vxlan": kernel.text("ip", "-d", "link", "show", s.vxlan_device),
            }
            for name in MapName:
                pin = str(s.pin_dir / "maps" / name.value)
                parts[f"map-{name.value}"] = kernel.text("bpftool", "map", "dump", "pinned", pin)
            return parts

        return await asyncio.to_thread(collect)

    def _health(self) -> Health:
        s = self.s
        problems = kernel.pins_present(s.pin_dir, tuple(m.value for m in MapName))
        links = kernel.links()
        on = kernel.attached()
        for device, prog in ((s.vxlan_device, "from_vxlan"), (s.probe_datapath_port, "from_probe")):
            if device not in links:
                problems.append(f"device {device} missing")
            elif on.get(links[device][0]) is None or on.get(links[device][0]) != self._prog_id(
                prog
            ):
                problems.append(f"{prog} not attached to {device}")
        if self._maps:
            self._map(MapName.CONFIG).lookup(maps.u32(0))
        if problems:
            return Health(
                healthy=False,
                reason=c.Reason.DATAPATH_UNAVAILABLE.value,
                message="eBPF datapath incomplete: " + ", ".join(problems),
            )
        return Health(healthy=True)

    async def health(self) -> Health:
        """Pins present, the VXLAN device and the probe port there with our programs attached,
        the maps readable. Read-only."""
        try:
            return await asyncio.to_thread(self._health)
        except DatapathError as exc:
            return Health(
                healthy=False, reason=c.Reason.DATAPATH_UNAVAILABLE.value, message=str(exc)
            )

    def _cleanup(self) -> dict[str, int]:
        s = self.s
        removed = {"links": 0, "devices": 0, "pins": 0}
        for name in netlink.agent_links():
            if name in (s.vxlan_device, s.probe_port, s.probe_datapath_port):
                continue
            if netlink.unplumb(name):
                removed["links"] += 1
        for device in (s.vxlan_device, s.probe_port, s.probe_datapath_port):
            if kernel.delete_device(device):
                removed["devices"] += 1
        self._close_maps()
        if kernel.is_bpffs(s.bpffs):
            removed["pins"] = kernel.remove_pins(s.pin_dir)
        return removed

    async def cleanup(self) -> dict[str, int]:
        """Endpoint veths, the VXLAN device, the probe port (their qdiscs and filters go with
        them) and every pin under the pin directory. Idempotent."""
        return await asyncio.to_thread(self._cleanup)

    async def close(self) -> None:
        """Close the map file descriptors (the pins keep the maps)."""
        self._close_maps()

    # -- metrics ---------------------------------------------------------------------------

    def collector(self) -> Collector:
        return _Counters(self)


class _Counters(Collector):
    """Per-VNI, per-port and per-drop-reason counters read from the maps at scrape time."""

    def __init__(self, dp: EbpfDatapath) -> None:
        self.dp = dp

    def collect(self) -> Iterator[CounterMetricFamily]:
        dp = self.dp
        if not dp._maps:
            return
        vni_packets = CounterMetricFamily(
            "voile_datapath_vni_packets",
            "Packets per VNI through the eBPF datapath (tx: from local endpoints, rx: from the "
            "tunnel).",
            labels=["vni", "direction"],
        )
        vni_bytes = CounterMetricFamily(
            "voile_datapath_vni_bytes", "Bytes per VNI.", labels=["vni", "direction"]
        )
        port_packets = CounterMetricFamily(
            "voile_datapath_port_packets",
            "Packets per endpoint port (rx: sent by the endpoint, tx: delivered to it).",
            labels=["port", "direction"],
        )
        drops = CounterMetricFamily(
            "voile_datapath_drops", "Packets dropped by the eBPF programs.", labels=["reason"]
        )
        names = {index: port for port, index in dp._ifindexes.items()}
        try:
            for key, value in dp._map(MapName.VNI_STATS).items().items():
                rx_p, rx_b, tx_p, tx_b = maps.counters(value)
                vni = str(maps.key_u32(key))
                vni_packets.add_metric([vni, "rx"], rx_p)
                vni_packets.add_metric([vni, "tx"], tx_p)
                vni_bytes.add_metric([vni, "rx"], rx_b)
                vni_bytes.add_metric([vni, "tx"], tx_b)
            for key, value in dp._map(MapName.PORT_STATS).items().items():
                rx_p, _, tx_p, _ = maps.counters(value)
                index = maps.key_u32(key)
                port = names.get(index, f"ifindex-{index}")
                port_packets.add_metric([port, "rx"], rx_p)
                port_packets.add_metric([port, "tx"], tx_p)
            drop_map = dp._map(MapName.DROPS)
            for reason in maps.Drop:
                raw = drop_map.lookup(maps.u32(int(reason)))
                total = drop_map.per_cpu_sum(raw, 1)[0] if raw else 0
                drops.add_metric([reason.name.lower()], total)
        except DatapathError:
            return
        yield vni_packets
        yield vni_bytes
        yield port_packets
        yield drops
