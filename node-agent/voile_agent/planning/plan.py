"""From the host's attachments and the remote endpoints to one ``HostPlan``. Pure."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping

from voile_agent.planning.model import (
    Attachment,
    HostPlan,
    RemoteEndpoint,
    Segment,
    SegmentPlan,
)


def host_plan(
    *,
    vtep: ipaddress.IPv4Address,
    segments: Mapping[str, Segment],
    local: Iterable[Attachment],
    remote: Iterable[RemoteEndpoint],
    complete: bool = True,
) -> HostPlan:
    """The segments that have at least one local attachment, each with its remote endpoints
    (one per MAC, sorted; a remote with a local MAC is dropped: the local one wins) and its
    flood list (the VTEPs of those remotes, sorted, never our own).

    A network's segment comes from ``segments`` by name; an attachment whose network is not
    (or no longer) known still forwards with the VNI and MTU it was allocated with."""
    by_vni: dict[int, list[Attachment]] = defaultdict(list)
    seg_of: dict[int, Segment] = {}
    for att in sorted(local, key=lambda a: (a.vni, a.port)):
        by_vni[att.vni].append(att)
        known = segments.get(att.network)
        seg_of.setdefault(
            att.vni,
            known
            if known is not None and known.vni == att.vni
            else Segment(
                network=att.network,
                vni=att.vni,
                mtu=att.mtu,
                cidr=ipaddress.IPv4Network(f"{att.ip}/{att.prefix_length}", strict=False),
                gateway=att.gateway,
            ),
        )
    remotes: dict[int, dict[str, RemoteEndpoint]] = defaultdict(dict)
    for r in sorted(remote, key=lambda r: (r.vni, r.mac, r.uid)):
        if r.vni in by_vni and r.vtep != vtep:
            remotes[r.vni].setdefault(r.mac, r)
    plans = []
    for vni in sorted(by_vni):
        attachments = tuple(by_vni[vni])
        local_macs = {a.mac for a in attachments}
        rs = tuple(r for mac, r in sorted(remotes[vni].items()) if mac not in local_macs)
        plans.append(
            SegmentPlan(
                segment=seg_of[vni],
                local=attachments,
                remote=rs,
                flood=tuple(sorted({r.vtep for r in rs})),
            )
        )
    return HostPlan(vtep=vtep, segments=tuple(plans), complete=complete)
