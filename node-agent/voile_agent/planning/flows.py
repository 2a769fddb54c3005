"""OpenFlow rules of the integration bridge, computed from the host's endpoints, the remote
endpoints of the same networks and the observed OpenFlow port numbers.

Pipeline (every rule is keyed by the network register, so nothing leaves its VNI and two networks
with the same CIDR never meet):

    table 0  CLASSIFY   tunnel + tun_id=VNI            -> reg0=VNI, L2
                        endpoint port + own MAC + own IP -> reg0=VNI, L2   (IPv4)
                        endpoint port + own MAC/IP in ARP -> reg0=VNI, ARP
                        anything else                   -> drop (anti-spoofing)
    table 10 ARP        request for a known IP of the network -> answered in place (IN_PORT)
                        otherwise                        -> L2
    table 20 L2         dst = local MAC                  -> that port
                        dst = remote MAC                 -> tun_id=VNI, tun_dst=VTEP, tunnel
                        from the tunnel, other           -> the local ports of the VNI only
                        from a local port, other         -> other local ports + each remote VTEP
                                                            of the network (head-end replication)

Split horizon needs no rule: OpenFlow never outputs a packet to its own in_port unless asked with
IN_PORT, so nothing received from the tunnel goes back into it, and a flood skips its sender.

Ownership and diffs: each flow's cookie is ``0x5601 << 48 | hash48(text)``. Observed versus desired
is then a set difference of cookies, a flow whose text is unchanged is never touched (its counters
and duration keep running across agent restarts), and a changed flow is replaced in one bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

from voile_agent.planning.model import LocalEndpoint, RemoteEndpoint

COOKIE_PREFIX = 0x5601
COOKIE_SHIFT = 48
COOKIE_MASK = 0xFFFF << COOKIE_SHIFT
COOKIE_MATCH = f"cookie={COOKIE_PREFIX << COOKIE_SHIFT:#x}/{COOKIE_MASK:#x}"

TABLE_CLASSIFY = 0
TABLE_ARP = 10
TABLE_L2 = 20

NETWORK_REG = "reg0"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, order=True)
class Flow:
    table: int
    priority: int
    match: str
    actions: str

    @property
    def text(self) -> str:
        """Canonical ovs-ofctl text without the cookie; the cookie is derived from it."""
        match = f"{self.match}," if self.match else ""
        return f"table={self.table},priority={self.priority},{match}actions={self.actions}"

    @property
    def cookie(self) -> int:
        return flow_cookie(self.text)


def flow_cookie(text: str) -> int:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")
    return (COOKIE_PREFIX << COOKIE_SHIFT) | digest


def is_voile_cookie(cookie: int) -> bool:
    return cookie & COOKIE_MASK == COOKIE_PREFIX << COOKIE_SHIFT


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlumbedEndpoint:
    """A local endpoint whose port exists on the bridge with an OpenFlow port number."""

    endpoint: LocalEndpoint
    ofport: int


def _arp_responder(ip: str, mac: str) -> str:
    """The classic in-place ARP reply: swap addresses, become the target, send back."""
    return (
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
        f"set_field:{mac}->eth_src,"
        "set_field:2->arp_op,"
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
        f"set_field:{mac}->arp_sha,"
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
        f"set_field:{ip}->arp_spa,"
        "IN_PORT"
    )


def _to_tunnel(vni: int, vtep: str, tunnel_ofport: int) -> str:
    return f"set_field:{vni}->tun_id,set_field:{vtep}->tun_dst,output:{tunnel_ofport}"


def plan_flows(
    *,
    tunnel_ofport: int | None,
    local: Sequence[PlumbedEndpoint],
    remote: Iterable[RemoteEndpoint],
) -> list[Flow]:
    """Every flow the bridge should hold, sorted. Pure.

    Remote endpoints matter only for networks present on this host; a remote with the same MAC
    as a local endpoint of the same network is ignored (the local one wins). Without a tunnel
    port number, remote forwarding is left out and local switching still works.
    """
    flows: set[Flow] = {Flow(table=TABLE_CLASSIFY, priority=0, match="", actions="drop")}
    flows.add(Flow(table=TABLE_ARP, priority=0, match="", actions=f"goto_table:{TABLE_L2}"))
    flows.add(Flow(table=TABLE_L2, priority=0, match="", actions="drop"))

    locals_by_vni: dict[int, list[PlumbedEndpoint]] = defaultdict(list)
    for item in sorted(local, key=lambda p: (p.endpoint.vni, p.ofport)):
        locals_by_vni[item.endpoint.vni].append(item)
    remotes_by_vni: dict[int, dict[str, RemoteEndpoint]] = defaultdict(dict)
    for r in sorted(remote, key=lambda r: (r.vni, r.mac, r.uid)):
        if r.vni in locals_by_vni:
            remotes_by_vni[r.vni].setdefault(r.mac, r)

    for vni, plumbed in locals_by_vni.items():
        set_net = f"set_field:{vni}->{NETWORK_REG}"
        local_macs = {p.endpoint.mac for p in plumbed}
        remotes = [r for mac, r in remotes_by_vni[vni].items() if mac not in local_macs]
        vteps = sorted({str(r.vtep) for r in remotes}, key=lambda v: tuple(map(int, v.split("."))))
        known_ips: dict[str, str] = {}
        for r in remotes:
            known_ips.setdefault(str(r.ip), r.mac)
        for p in plumbed:
            ep = p.endpoint
            known_ips[str(ep.ip)] = ep.mac
            # Anti-spoofing: only the endpoint's own MAC and IP get a network register.
            flows.add(
                Flow(
                    table=TABLE_CLASSIFY,
                    priority=100,
                    match=f"in_port={p.ofport},dl_src={ep.mac},ip,nw_src={ep.ip}",
                    actions=f"{set_net},goto_table:{TABLE_L2}",
                )
            )
            flows.add(
                Flow(
                    table=TABLE_CLASSIFY,
                    priority=100,
                    match=f"in_port={p.ofport},dl_src={ep.mac},arp,arp_sha={ep.mac},arp_spa={ep.ip}",
                    actions=f"{set_net},goto_table:{TABLE_ARP}",
                )
            )
            flows.add(
                Flow(
                    table=TABLE_L2,
                    priority=100,
                    match=f"{NETWORK_REG}={vni},dl_dst={ep.mac}",
                    actions=f"output:{p.ofport}",
                )
            )
        for ip, mac in known_ips.items():
            flows.add(
                Flow(
                    table=TABLE_ARP,
                    priority=100,
                    match=f"{NETWORK_REG}={vni},arp,arp_op=1,arp_tpa={ip}",
                    actions=_arp_responder(ip, mac),
                )
            )
        local_out = ",".join(f"output:{p.ofport}" for p in plumbed)
        if tunnel_ofport is not None:
            flows.add(
                Flow(
                    table=TABLE_CLASSIFY,
                    priority=100,
                    match=f"in_port={tunnel_ofport},tun_id={vni}",
                    actions=f"{set_net},goto_table:{TABLE_L2}",
                )
            )
            for r in remotes:
                flows.add(
                    Flow(
                        table=TABLE_L2,
                        priority=100,
                        match=f"{NETWORK_REG}={vni},dl_dst={r.mac}",
                        actions=_to_tunnel(vni, str(r.vtep), tunnel_ofport),
                    )
                )
            # From the tunnel: local ports of this VNI only, never back into the tunnel.
            flows.add(
                Flow(
                    table=TABLE_L2,
                    priority=50,
                    match=f"{NETWORK_REG}={vni},in_port={tunnel_ofport}",
                    actions=local_out,
                )
            )
        replicate = [local_out]
        if tunnel_ofport is not None:
            replicate += [_to_tunnel(vni, v, tunnel_ofport) for v in vteps]
        flows.add(
            Flow(
                table=TABLE_L2,
                priority=10,
                match=f"{NETWORK_REG}={vni}",
                actions=",".join(replicate),
            )
        )
    return sorted(flows)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FlowDiff:
    add: tuple[Flow, ...]
    delete: tuple[int, ...]  # cookies of stale flows

    @property
    def empty(self) -> bool:
        return not self.add and not self.delete

    def bundle_lines(self) -> list[str]:
        """Lines of one ``ovs-ofctl --bundle add-flows`` file: stale flows go by exact cookie,
        missing ones are added; the switch applies all of it atomically or nothing."""
        lines = [f"delete cookie={cookie:#x}/-1" for cookie in self.delete]
        lines += [f"add cookie={flow.cookie:#x},{flow.text}" for flow in self.add]
        return lines


def diff_flows(desired: Iterable[Flow], observed_cookies: Iterable[int]) -> FlowDiff:
    """What to add and delete so the bridge holds exactly ``desired`` among Voile's flows. Pure.

    Flows whose cookie is not Voile's are not ours and are never deleted.
    """
    want: dict[int, Flow] = {}
    for flow in desired:
        want.setdefault(flow.cookie, flow)
    have = {c for c in observed_cookies if is_voile_cookie(c)}
    return FlowDiff(
        add=tuple(flow for cookie, flow in sorted(want.items()) if cookie not in have),
        delete=tuple(sorted(have - want.keys())),
    )


def with_repairs(diff: FlowDiff, desired: Iterable[Flow], drifted: Iterable[int]) -> FlowDiff:
    """``diff`` plus the replacement of every desired flow that exists on the bridge under its
    cookie but differs from the plan (changed in place, e.g. by ``ovs-ofctl mod-flows``): deleted
    by exact cookie and added again in the same atomic bundle. Pure."""
    want = {flow.cookie: flow for flow in desired}
    adding = {flow.cookie for flow in diff.add}
    repair = sorted(c for c in set(drifted) if c in want and c not in adding)
    return FlowDiff(
        add=diff.add + tuple(want[c] for c in repair),
        delete=diff.delete + tuple(repair),
    )


def flows_for_port(flows: Iterable[Flow], ofport: int) -> list[Flow]:
    """The flows that name an OpenFlow port (used by tests and diagnostics)."""
    needle_in, needle_out = f"in_port={ofport},", f"output:{ofport}"
    return [
        f
        for f in flows
        if needle_in in f"{f.match}," or any(a == needle_out for a in f.actions.split(","))
    ]
