"""Tracing one packet through the integration bridge with ``ovs-appctl ofproto/trace``, pure:
the flow to trace, and what the trace's text says (the rules met, local outputs, tunnel copies,
the verdict)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping

from voile.api.trace import Result, Tunnel
from voile_agent.datapath.base import TraceOutcome, TraceQuery

_RULE = re.compile(r"^\s{0,2}(\d+)\. (?:(.*?), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?\s*$")
_NO_MATCH = re.compile(r"^\s{0,2}(\d+)\. No match\.")
_OUTPUT = re.compile(r"^\s+output:(\d+)\s*$")
_SET_TUN_ID = re.compile(r"set_field:(0x[0-9a-f]+|\d+)->tun_id")
_SET_TUN_DST = re.compile(r"set_field:([0-9.]+)->tun_dst")


def trace_flow(
    query: TraceQuery, *, in_port: int, local_vtep: ipaddress.IPv4Address | None = None
) -> str:
    """The flow ``ofproto/trace`` takes for the query's packet."""
    parts = [f"in_port={in_port}"]
    if query.from_tunnel is not None:
        parts += [
            f"tun_id={query.from_tunnel.vni}",
            f"tun_src={query.from_tunnel.vtep}",
        ]
        if local_vtep is not None:
            parts.append(f"tun_dst={local_vtep}")
    if query.protocol == "arp":
        parts += [
            "arp",
            f"dl_src={query.src_mac}",
            "dl_dst=ff:ff:ff:ff:ff:ff",
            "arp_op=1",
            f"arp_sha={query.src_mac}",
            f"arp_spa={query.src_ip}",
            f"arp_tpa={query.dst_ip}",
        ]
        return ",".join(parts)
    parts += [query.protocol, f"dl_src={query.src_mac}", f"dl_dst={query.dst_mac}"]
    parts += [f"nw_src={query.src_ip}", f"nw_dst={query.dst_ip}", "nw_ttl=64"]
    if query.protocol == "icmp":
        parts += ["icmp_type=8", "icmp_code=0"]
    else:
        parts += ["tp_src=40000", "tp_dst=8080"]
    return ",".join(parts)


@dataclasses.dataclass(kw_only=True, slots=True)
class _Walk:
    hops: list[str] = dataclasses.field(default_factory=list)
    rule: str | None = None
    outputs: list[int] = dataclasses.field(default_factory=list)
    tunnels: list[Tunnel] = dataclasses.field(default_factory=list)
    tun_id: int | None = None
    tun_dst: ipaddress.IPv4Address | None = None
    answered: bool = False  # sent back out of the port it came in (the ARP responder)


def parse_trace(
    text: str, *, ports: Mapping[int, str], tunnel_ofport: int | None, to_port: str | None
) -> TraceOutcome:
    """What ofproto/trace says happens to the packet on the integration bridge (the lines of
    other bridges, e.g. the underlay's, are left out)."""
    walk = _Walk()
    bridges = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("bridge("):
            bridges += 1
            continue
        if line.startswith(("Final flow:", "Datapath actions:")) or bridges > 1:
            break
        if bridges == 0:
            continue
        rule = _RULE.match(line)
        if rule:
            table, match, priority, cookie = rule.groups()
            walk.rule = f"table={table},priority={priority}" + (f",{match}" if match else "")
            walk.rule += f" (cookie {cookie})" if cookie else ""
            walk.hops.append(walk.rule)
            continue
        if _NO_MATCH.match(line):
            walk.rule = line.strip()
            walk.hops.append(walk.rule)
            continue
        for found in _SET_TUN_ID.finditer(line):
            walk.tun_id = int(found.group(1), 0)
        for found in _SET_TUN_DST.finditer(line):
            walk.tun_dst = ipaddress.IPv4Address(found.group(1))
        if line.strip() == "IN_PORT":
            walk.answered = True
        out = _OUTPUT.match(line)
        if out is None:
            continue
        if i + 1 < len(lines) and "skipping output to input port" in lines[i + 1]:
            continue
        port = int(out.group(1))
        if port != tunnel_ofport:
            walk.outputs.append(port)
        elif walk.tun_dst is not None and walk.tun_id is not None:
            walk.tunnels.append(Tunnel(vtep=walk.tun_dst, vni=walk.tun_id))
    actions = next((x for x in lines if x.startswith("Datapath actions:")), "")
    names = [ports.get(p, f"port {p}") for p in walk.outputs]
    if to_port is not None and to_port in names:
        return TraceOutcome(
            result=Result.DELIVERED,
            hops=tuple(walk.hops),
            rule=walk.rule,
            tunnels=tuple(walk.tunnels),
            message=f"output to {to_port}",
        )
    if walk.answered and "arp" in text.split("\n", 1)[0]:
        return TraceOutcome(
            result=Result.ANSWERED,
            hops=tuple(walk.hops),
            rule=walk.rule,
            message="answered in place by the local ARP responder",
        )
    if walk.tunnels:
        return TraceOutcome(
            result=Result.TUNNEL,
            hops=tuple(walk.hops),
            rule=walk.rule,
            tunnels=tuple(walk.tunnels),
            message=", ".join(f"to {t.vtep} in VNI {t.vni}" for t in walk.tunnels),
        )
    where = f"output to {', '.join(names)}" if names else actions.strip() or "no output"
    return TraceOutcome(
        result=Result.DROPPED,
        hops=tuple(walk.hops),
        rule=walk.rule,
        message=f"not delivered to the destination ({where})",
    )
