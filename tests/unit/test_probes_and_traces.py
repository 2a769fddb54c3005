"""Data-path probes and traces, pure: the probe frame and its reply, what rounds of results
mean, the OpenFlow rules that answer and send probes, the parsing of ofproto/trace (texts
captured from Open vSwitch 3.1 here: tests/unit/data), and a Trace's verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from voile.api import trace as tr
from voile.api.trace import Result, Stage, StageReport, Tunnel
from voile_agent.controller.probes import Prober
from voile_agent.datapath.base import TraceQuery
from voile_agent.datapath.ovs import flows as flowplan
from voile_agent.datapath.ovs import trace as ovstrace
from voile_agent.planning import probes
from voile_agent.planning.model import HostPlan, Segment, SegmentPlan
from voile_agent.planning.probes import HealthTracker, PathState, ProbeTarget

IP = ipaddress.IPv4Address
DATA = Path(__file__).parent / "data"
ME, PEER = IP("198.18.0.1"), IP("198.18.0.2")


def reflect(frame: bytes) -> bytes:
    """What the peer's datapath does to a probe (flows.probe_flows): swap MACs and IPs, the
    responder's MAC as source, UDP destination port REPLY_PORT."""
    ip, udp = bytearray(frame[14:34]), bytearray(frame[34:])
    responder = bytes.fromhex(probes.RESPONDER_MAC.replace(":", ""))
    ip[12:16], ip[16:20] = frame[30:34], frame[26:30]
    udp[2:4] = struct.pack("!H", probes.REPLY_PORT)
    return frame[6:12] + responder + b"\x08\x00" + bytes(ip) + bytes(udp)


@pytest.mark.parametrize("size", [probes.SMALL, 1450, 8950])
def test_a_probe_is_an_ip_packet_of_exactly_its_size_with_df_and_no_tenant_address(
    size: int,
) -> None:
    target = ProbeTarget(vni=4096, vtep=PEER, size=size)
    frame = probes.build_probe(target, source=ME, probe_id=7, sequence=3)
    assert len(frame) == size + probes.ETH_HEADER
    total, flags = struct.unpack("!H2xH", frame[16:22])
    assert total == size and flags & 0x4000, "DF is set"
    assert frame[26:30] == ME.packed and frame[30:34] == PEER.packed
    assert frame[0:6].hex(":") == probes.RESPONDER_MAC
    assert frame[6:12].hex(":") == probes.sender_mac(4096) == "0e:76:00:00:10:00"
    # The header checksum is right: summing the header with it gives 0xffff.
    words = struct.unpack("!10H", frame[14:34])
    assert sum(words) % 0xFFFF == 0
    assert struct.unpack("!H", frame[36:38])[0] == probes.PROBE_PORT


def test_a_reflected_probe_is_recognised_and_others_are_not() -> None:
    target = ProbeTarget(vni=77, vtep=PEER, size=300)
    frame = probes.build_probe(target, source=ME, probe_id=41, sequence=9)
    reply = probes.parse_reply(reflect(frame), local=ME)
    assert reply == probes.Reply(vni=77, vtep=PEER, probe_id=41, sequence=9, size=300)
    assert probes.parse_reply(frame, local=ME) is None, "our own request is not a reply"
    assert probes.parse_reply(reflect(frame), local=PEER) is None, "not addressed to us"
    assert probes.parse_reply(b"\0" * 20, local=ME) is None


def test_health_needs_two_rounds_to_call_a_path_broken_and_one_to_heal() -> None:
    small, full = (ProbeTarget(vni=1, vtep=PEER, size=s) for s in (probes.SMALL, 1450))
    tracker = HealthTracker(threshold=2)
    tracker.update({small: 0.001, full: 0.002})
    (path,) = tracker.states()
    assert path.state == PathState.OK and path.rtt_ms == 1.0
    tracker.update({small: 0.001, full: None})
    assert tracker.states()[0].state == PathState.UNKNOWN
    tracker.update({small: 0.001, full: None})
    assert tracker.states()[0].state == PathState.MTU
    tracker.update({small: None, full: None})
    tracker.update({small: None, full: None})
    assert tracker.states()[0].state == PathState.UNREACHABLE
    assert tracker.states()[0].lost == 6 and tracker.states()[0].sent == 10
    tracker.update({small: 0.001, full: 0.001})
    assert tracker.states()[0].state == PathState.OK
    tracker.update({})
    assert tracker.states() == [], "a path that is no longer probed is forgotten"


def test_targets_are_two_sizes_per_peer_of_each_network_and_the_report_is_compact() -> None:
    targets = probes.targets_for([(5, 1450, [PEER, IP("198.18.0.3")]), (6, 1450, [])])
    assert len(targets) == 4 and {t.size for t in targets} == {probes.SMALL, 1450}
    rep = probes.report(at="T", vtep=ME, realized=[6, 5], paths=[])
    assert rep == {"v": 1, "at": "T", "vtep": "198.18.0.1", "vnis": [5, 6], "paths": []}


def plan() -> HostPlan:
    seg = Segment(network="n", vni=4096, mtu=1450, cidr=ipaddress.IPv4Network("198.19.0.0/24"))
    return HostPlan(
        vtep=ME, segments=(SegmentPlan(segment=seg, local=(), remote=(), flood=(PEER,)),)
    )


def test_probe_flows_answer_each_carried_vni_and_send_by_source_mac() -> None:
    flows = flowplan.probe_flows(plan(), probe_ofport=9, tunnel_ofport=1)
    (answer,) = [f for f in flows if "tun_id=4096" in f.match]
    assert f"nw_dst={ME}" in answer.match and answer.actions.endswith("IN_PORT")
    assert f"set_field:{probes.REPLY_PORT}->udp_dst" in answer.actions
    (send,) = [f for f in flows if f.match.startswith("in_port=9")]
    assert "NXM_NX_TUN_ID[0..23]" in send.actions and send.actions.endswith("output:1")
    (back,) = [f for f in flows if f"tp_dst={probes.REPLY_PORT}" in f.match]
    assert back.actions == "output:9"
    assert all(f.priority > 100 for f in flows), "ahead of the classifier: never to an endpoint"
    assert flowplan.probe_flows(plan(), probe_ofport=9, tunnel_ofport=None) == []


def test_trace_flow_for_both_stages() -> None:
    q = TraceQuery(
        protocol="icmp", src_mac="0a:58:c6:12:01:01", src_ip=IP("198.18.1.1"),
        dst_mac="0a:58:c6:12:01:02", dst_ip=IP("198.18.1.2"), from_port="vo1",
    )  # fmt: skip
    assert ovstrace.trace_flow(q, in_port=3).startswith("in_port=3,icmp,dl_src=0a:58")
    q2 = dataclasses.replace(q, protocol="arp", from_port=None,
                             from_tunnel=Tunnel(vtep=PEER, vni=4096))  # fmt: skip
    flow = ovstrace.trace_flow(q2, in_port=1, local_vtep=ME)
    assert "tun_id=4096" in flow and f"tun_src={PEER}" in flow and "arp_tpa=198.18.1.2" in flow


def test_parsing_a_trace_to_the_tunnel() -> None:
    out = ovstrace.parse_trace(
        (DATA / "trace-tunnel.txt").read_text(),
        ports={3: "vo-web"},
        tunnel_ofport=1,
        to_port="vo-db",
    )
    assert out.result == Result.TUNNEL
    assert out.tunnels == (Tunnel(vtep=IP("198.18.16.2"), vni=4096),)
    assert len(out.hops) == 2, "the underlay bridge's rules are not ours"
    assert out.hops[1].startswith("table=20,priority=100,reg0=0x1000")


def test_parsing_a_drop_names_the_rule() -> None:
    out = ovstrace.parse_trace(
        (DATA / "trace-drop.txt").read_text(), ports={}, tunnel_ofport=1, to_port="vo-b1"
    )
    assert out.result == Result.DROPPED
    assert out.rule == "table=0,priority=0 (cookie 0x5601598e0decb53e)"
    skip = ovstrace.parse_trace(
        (DATA / "trace-skip.txt").read_text(), ports={4: "vo-a1"}, tunnel_ofport=1, to_port=None
    )
    assert skip.result == Result.DROPPED, "output to its own port is skipped: nothing leaves"
    assert skip.rule is not None and "priority=10" in skip.rule


def stage(which: Stage, result: Result, **kw: object) -> StageReport:
    return StageReport(stage=which, node=kw.pop("node", "h1"), datapath="ovs", result=result,
                       **kw)  # type: ignore[arg-type]  # fmt: skip


SPEC = tr.TraceSpec(
    name="t",
    source=tr.Ref(namespace="d", name="a"),
    destination=tr.Ref(namespace="d", name="b"),
    source_node="h1",
    destination_node="h2",
)


@pytest.mark.parametrize(
    ("stages", "verdict"),
    [
        ({}, tr.Verdict.PENDING),
        ({Stage.SOURCE: stage(Stage.SOURCE, Result.DROPPED, rule="r")}, tr.Verdict.DROPPED),
        ({Stage.SOURCE: stage(Stage.SOURCE, Result.TUNNEL,
                              tunnels=(Tunnel(vtep=PEER, vni=1),))}, tr.Verdict.PENDING),
        ({Stage.SOURCE: stage(Stage.SOURCE, Result.TUNNEL, tunnels=(Tunnel(vtep=PEER, vni=1),)),
          Stage.DESTINATION: stage(Stage.DESTINATION, Result.DELIVERED, node="h2")},
         tr.Verdict.DELIVERED),
        ({Stage.SOURCE: stage(Stage.SOURCE, Result.TUNNEL,
                              tunnels=(Tunnel(vtep=IP("198.18.0.9"), vni=1),))},
         tr.Verdict.DROPPED),
        ({Stage.SOURCE: stage(Stage.SOURCE, Result.ANSWERED)}, tr.Verdict.DELIVERED),
    ],
    ids=["pending", "dropped-at-source", "waiting-for-destination", "delivered",
         "never-sent-there", "arp-answered"],
)  # fmt: skip
def test_verdicts(stages: dict[Stage, StageReport], verdict: tr.Verdict) -> None:
    got, why = tr.verdict(SPEC, stages, destination_vtep=PEER)
    assert got == verdict, why


# -- the prober's metrics ------------------------------------------------------------------------


def test_the_prober_counts_loss_per_network_and_peer_times_replies_and_gauges_broken_paths() -> (
    None
):
    here, up, down = (ipaddress.IPv4Address(f"198.18.60.{i}") for i in (1, 2, 3))
    seg = Segment(network="metric-net", vni=4242, mtu=1450,
                  cidr=ipaddress.IPv4Network("198.19.60.0/24"))  # fmt: skip
    plan = HostPlan(vtep=here, segments=(SegmentPlan(segment=seg, local=(), remote=(),
                                                     flood=(up, down)),))  # fmt: skip

    class Answering:
        """Answers every probe to ``up``, none to ``down``."""

        async def probe(
            self, targets: Any, *, timeout: float
        ) -> dict[probes.ProbeTarget, float | None]:
            return {t: (0.002 if t.vtep == up else None) for t in targets}

    prober = Prober(Answering(), lambda: plan)  # type: ignore[arg-type]

    def value(name: str, peer: ipaddress.IPv4Address, size: str = "small") -> float:
        labels = {"network": "metric-net", "peer": str(peer), "size": size}
        return REGISTRY.get_sample_value(name, labels) or 0.0

    lost_before = value("voile_agent_probes_lost_total", down)
    rtt_before = value("voile_agent_probe_rtt_seconds_count", up)
    for _ in range(2):
        states = asyncio.run(prober.round())
    assert {p.vtep: p.state for p in states} == {
        up: probes.PathState.OK,
        down: probes.PathState.UNREACHABLE,
    }
    assert value("voile_agent_probes_lost_total", down) - lost_before == 2
    assert value("voile_agent_probes_lost_total", down, "full") >= 2
    assert value("voile_agent_probes_lost_total", up) == 0
    assert value("voile_agent_probe_rtt_seconds_count", up) - rtt_before == 2
    assert REGISTRY.get_sample_value("voile_agent_broken_paths") == 1
    report = prober.report()
    assert (
        report is not None
        and {"vni": 4242, "vtep": str(down), "state": "unreachable"}
        in (
            report["paths"]  # type: ignore[operator]
        )
    )
