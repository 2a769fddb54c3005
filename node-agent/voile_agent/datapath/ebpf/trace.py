"""Where the eBPF programs would send one packet, decided from the maps as they are. Pure.

The same decisions as ``bpf/voile.c``, in the same order, on the decoded maps (``maps.Tables``),
so ``kubectl voile trace`` on an eBPF host names the map entry that carries a packet, or the
exact drop reason (``maps.Drop``) the program would count.
"""

from __future__ import annotations

from collections.abc import Mapping

from voile.api.trace import Result, Tunnel
from voile_agent.datapath.base import TraceOutcome, TraceQuery
from voile_agent.datapath.ebpf.maps import DROP_TEXT, Drop, Tables


def _dropped(hops: list[str], reason: Drop) -> TraceOutcome:
    rule = f"drop {reason.name.lower()}"
    return TraceOutcome(
        result=Result.DROPPED,
        hops=(*hops, rule),
        rule=rule,
        message=f"dropped: {DROP_TEXT[reason]}",
    )


def _unicast(mac: str) -> bool:
    return not int(mac[:2], 16) & 1


def walk(
    query: TraceQuery,
    tables: Tables,
    *,
    ifindexes: Mapping[str, int],
) -> TraceOutcome:
    """The path of ``query``'s packet: out of a local port (``from_ep``) or in from the tunnel
    (``from_vxlan``), ending in delivered, answered, tunnel, or the drop reason."""
    names = {index: name for name, index in ifindexes.items()}
    hops: list[str] = []
    if query.from_tunnel is not None:
        return _from_tunnel(query, tables, names, hops)
    port = query.from_port or ""
    ifindex = ifindexes.get(port)
    if ifindex is None:
        return TraceOutcome(result=Result.ERROR, message=f"port {port} is not on this host")
    hops.append(f"from_ep on {port} (ifindex {ifindex})")
    ep = tables.ports.get(ifindex)
    if ep is None:
        return _dropped(hops, Drop.UNKNOWN_PORT)
    hops.append(f"voile_ports[{ifindex}] = vni {ep.vni} {ep.mac} {ep.ip}")
    if query.src_mac != ep.mac:
        return _dropped(hops, Drop.SPOOFED_MAC)
    vni = ep.vni
    dst_mac = query.dst_mac
    if query.protocol == "arp":
        if query.src_ip != ep.ip:
            return _dropped(hops, Drop.SPOOFED_ARP)
        answer = tables.arp.get((vni, query.dst_ip))
        if answer is not None:
            rule = f"voile_arp[vni {vni}, {query.dst_ip}] = {answer}"
            return TraceOutcome(
                result=Result.ANSWERED,
                hops=(*hops, rule),
                rule=rule,
                message=f"answered in place by the local ARP responder ({answer})",
            )
        dst_mac = "ff:ff:ff:ff:ff:ff"
    elif query.src_ip != ep.ip:
        return _dropped(hops, Drop.SPOOFED_IP)
    if _unicast(dst_mac):
        entry = tables.fdb.get((vni, dst_mac))
        if entry is not None:
            rule = f"voile_fdb[vni {vni}, {dst_mac}]"
            if entry.ifindex == ifindex:
                return _dropped([*hops, rule], Drop.HAIRPIN)
            if entry.ifindex:
                return _local(query, names, [*hops, rule], entry.ifindex, entry.peer)
            if entry.vtep is None:
                return _dropped([*hops, rule], Drop.NO_TUNNEL)
            if not tables.vxlan_ifindex:
                return _dropped([*hops, rule], Drop.NO_TUNNEL)
            tunnel = Tunnel(vtep=entry.vtep, vni=vni)
            return TraceOutcome(
                result=Result.TUNNEL,
                hops=(*hops, f"{rule} = remote {entry.vtep}", "redirect to the VXLAN device"),
                rule=rule,
                tunnels=(tunnel,),
                message=f"to {entry.vtep} in VNI {vni}",
            )
    return _flood(query, tables, names, hops, vni, ifindex, from_tunnel=False)


def _local(
    query: TraceQuery, names: Mapping[int, str], hops: list[str], ifindex: int, peer: bool
) -> TraceOutcome:
    name = names.get(ifindex, f"ifindex {ifindex}")
    how = "bpf_redirect_peer" if peer else "bpf_redirect"
    rule = f"{how} to {name}"
    if query.to_port is not None and name == query.to_port:
        return TraceOutcome(
            result=Result.DELIVERED, hops=(*hops, rule), rule=rule, message=f"output to {name}"
        )
    return TraceOutcome(
        result=Result.DROPPED,
        hops=(*hops, rule),
        rule=rule,
        message=f"not delivered to the destination (output to {name})",
    )


def _flood(
    query: TraceQuery,
    tables: Tables,
    names: Mapping[int, str],
    hops: list[str],
    vni: int,
    in_ifindex: int,
    *,
    from_tunnel: bool,
) -> TraceOutcome:
    entry = tables.flood.get(vni)
    if entry is None:
        return _dropped(hops, Drop.UNKNOWN_VNI)
    outputs = [names.get(p, f"ifindex {p}") for p in entry.ports if p != in_ifindex]
    tunnels = () if from_tunnel else tuple(Tunnel(vtep=v, vni=vni) for v in entry.vteps)
    rule = f"voile_flood[vni {vni}]"
    hops = [*hops, f"{rule}: {len(outputs)} local, {len(tunnels)} VTEP copies"]
    if query.to_port is not None and query.to_port in outputs:
        return TraceOutcome(
            result=Result.DELIVERED,
            hops=tuple(hops),
            rule=rule,
            tunnels=tunnels,
            message=f"output to {query.to_port} (flooded)",
        )
    if tunnels:
        return TraceOutcome(
            result=Result.TUNNEL,
            hops=tuple(hops),
            rule=rule,
            tunnels=tunnels,
            message=", ".join(f"to {t.vtep} in VNI {t.vni}" for t in tunnels),
        )
    where = f"output to {', '.join(outputs)}" if outputs else "no output"
    return TraceOutcome(
        result=Result.DROPPED,
        hops=tuple(hops),
        rule=rule,
        message=f"not delivered to the destination ({where})",
    )


def _from_tunnel(
    query: TraceQuery, tables: Tables, names: Mapping[int, str], hops: list[str]
) -> TraceOutcome:
    assert query.from_tunnel is not None
    vni = query.from_tunnel.vni
    hops.append(f"from_vxlan: tunnel key vni {vni} from {query.from_tunnel.vtep}")
    if vni not in tables.flood:
        return _dropped(hops, Drop.UNKNOWN_VNI)
    dst_mac = query.dst_mac if query.protocol != "arp" else "ff:ff:ff:ff:ff:ff"
    if _unicast(dst_mac):
        entry = tables.fdb.get((vni, dst_mac))
        if entry is not None:
            rule = f"voile_fdb[vni {vni}, {dst_mac}]"
            if entry.ifindex:
                return _local(query, names, [*hops, rule], entry.ifindex, entry.peer)
            return _dropped([*hops, rule], Drop.NO_LOCAL_DESTINATION)
    return _flood(query, tables, names, hops, vni, 0, from_tunnel=True)
