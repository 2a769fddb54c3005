"""OpenFlow rules of the integration bridge: the neutral ``HostPlan`` rendered with the
observed OpenFlow port numbers. Pure.

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
from collections.abc import Iterable, Mapping, Sequence

from voile_agent.planning import probes
from voile_agent.planning.model import Attachment, HostPlan, SegmentPlan

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


TABLE_CANARY = 250
# A flow no packet reaches (no rule goes to its table): when it is gone, ovs-vswitchd has lost
# its flow table (it restarted) and every flow must be installed again, as neutron's OVS agent
# finds out with its canary flow.
CANARY = Flow(table=TABLE_CANARY, priority=0, match="", actions="drop")


def flow_cookie(text: str) -> int:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")
    return (COOKIE_PREFIX << COOKIE_SHIFT) | digest


def is_voile_cookie(cookie: int) -> bool:
    return cookie & COOKIE_MASK == COOKIE_PREFIX << COOKIE_SHIFT


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
    plan: HostPlan, *, ofports: Mapping[str, int], tunnel_ofport: int | None
) -> list[Flow]:
    """Every flow the bridge should hold for ``plan``, sorted. Pure.

    ``ofports`` maps the plan's local ports to their OpenFlow numbers; an attachment without
    one is left out (it is not on the bridge yet). Without a tunnel port number, remote
    forwarding is left out and local switching still works.
    """
    flows: set[Flow] = {Flow(table=TABLE_CLASSIFY, priority=0, match="", actions="drop")}
    flows.add(Flow(table=TABLE_ARP, priority=0, match="", actions=f"goto_table:{TABLE_L2}"))
    flows.add(Flow(table=TABLE_L2, priority=0, match="", actions="drop"))
    for seg in plan.segments:
        plumbed = sorted(
            ((ofports[a.port], a) for a in seg.local if a.port in ofports), key=lambda p: p[0]
        )
        if plumbed:
            flows.update(_segment_flows(seg, plumbed, tunnel_ofport))
    return sorted(flows)


PROBE_PRIORITY = 200
_SENDERS = f"{probes.SENDER_PREFIX}:00:00:00/ff:ff:ff:00:00:00"


def probe_flows(
    plan: HostPlan, *, probe_ofport: int | None, tunnel_ofport: int | None
) -> list[Flow]:
    """The probes' flows (planning.probes), ahead of the classifier, so that no probe ever
    reaches an endpoint: answer a peer's probe in every segment this host carries (swap
    addresses, back through the tunnel to where it came from); send our probes into the
    segment named by their source MAC, to the VTEP named by their destination IP; hand our
    replies to the probe port. Pure."""
    if tunnel_ofport is None:
        return []
    vtep = str(plan.vtep)
    flows = []
    for seg in plan.segments:
        flows.append(
            Flow(
                table=TABLE_CLASSIFY,
                priority=PROBE_PRIORITY,
                match=f"in_port={tunnel_ofport},tun_id={seg.vni},udp,"
                f"dl_dst={probes.RESPONDER_MAC},nw_dst={vtep},tp_dst={probes.PROBE_PORT}",
                actions="move:NXM_NX_TUN_IPV4_SRC[]->NXM_NX_TUN_IPV4_DST[],"
                "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
                f"set_field:{probes.RESPONDER_MAC}->eth_src,"
                "move:NXM_OF_IP_SRC[]->NXM_NX_REG1[],"
                "move:NXM_OF_IP_DST[]->NXM_OF_IP_SRC[],"
                "move:NXM_NX_REG1[]->NXM_OF_IP_DST[],"
                f"set_field:{probes.REPLY_PORT}->udp_dst,"
                "IN_PORT",
            )
        )
    if probe_ofport is not None:
        flows.append(
            Flow(
                table=TABLE_CLASSIFY,
                priority=PROBE_PRIORITY,
                match=f"in_port={probe_ofport},udp,dl_src={_SENDERS},tp_dst={probes.PROBE_PORT}",
                actions="set_field:0->tun_id,"
                "move:NXM_OF_ETH_SRC[0..23]->NXM_NX_TUN_ID[0..23],"
                "move:NXM_OF_IP_DST[]->NXM_NX_TUN_IPV4_DST[],"
                f"output:{tunnel_ofport}",
            )
        )
        flows.append(
            Flow(
                table=TABLE_CLASSIFY,
                priority=PROBE_PRIORITY,
                match=f"in_port={tunnel_ofport},udp,dl_dst={_SENDERS},nw_dst={vtep},"
                f"tp_dst={probes.REPLY_PORT}",
                actions=f"output:{probe_ofport}",
            )
        )
    return sorted(flows)


def _segment_flows(
    seg: SegmentPlan, plumbed: Sequence[tuple[int, Attachment]], tunnel_ofport: int | None
) -> set[Flow]:
    vni = seg.vni
    set_net = f"set_field:{vni}->{NETWORK_REG}"
    flows: set[Flow] = set()
    known_ips: dict[str, str] = {}
    for r in seg.remote:
        known_ips.setdefault(str(r.ip), r.mac)
    for ofport, ep in plumbed:
        known_ips[str(ep.ip)] = ep.mac
        # Anti-spoofing: only the endpoint's own MAC and IP get a network register.
        flows.add(
            Flow(
                table=TABLE_CLASSIFY,
                priority=100,
                match=f"in_port={ofport},dl_src={ep.mac},ip,nw_src={ep.ip}",
                actions=f"{set_net},goto_table:{TABLE_L2}",
            )
        )
        flows.add(
            Flow(
                table=TABLE_CLASSIFY,
                priority=100,
                match=f"in_port={ofport},dl_src={ep.mac},arp,arp_sha={ep.mac},arp_spa={ep.ip}",
                actions=f"{set_net},goto_table:{TABLE_ARP}",
            )
        )
        flows.add(
            Flow(
                table=TABLE_L2,
                priority=100,
                match=f"{NETWORK_REG}={vni},dl_dst={ep.mac}",
                actions=f"output:{ofport}",
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
    local_out = ",".join(f"output:{ofport}" for ofport, _ in plumbed)
    if tunnel_ofport is not None:
        flows.add(
            Flow(
                table=TABLE_CLASSIFY,
                priority=100,
                match=f"in_port={tunnel_ofport},tun_id={vni}",
                actions=f"{set_net},goto_table:{TABLE_L2}",
            )
        )
        for r in seg.remote:
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
        replicate += [_to_tunnel(vni, str(v), tunnel_ofport) for v in seg.flood]
    flows.add(
        Flow(
            table=TABLE_L2,
            priority=10,
            match=f"{NETWORK_REG}={vni}",
            actions=",".join(replicate),
        )
    )
    return flows


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
