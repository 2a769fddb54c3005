"""Trace: one packet from one Endpoint to another through the real datapaths (crds/traces.yaml).
Pure: the request, the stages the agents report, and the verdict that follows from them."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping
from typing import Any

from voile.errors import ValidationError

Raw = Mapping[str, Any]


class Stage(str, enum.Enum):
    SOURCE = "source"  # out of the source's port, on the source's node
    DESTINATION = "destination"  # in from the tunnel, on the destination's node


class Result(str, enum.Enum):
    DELIVERED = "delivered"  # output to the destination's port
    TUNNEL = "tunnel"  # sent into the tunnel (copies listed)
    ANSWERED = "answered"  # answered where it entered (an ARP request, by the ARP responder)
    DROPPED = "dropped"
    ERROR = "error"  # the stage could not be traced (message says why)


class Verdict(str, enum.Enum):
    PENDING = "Pending"
    DELIVERED = "Delivered"
    DROPPED = "Dropped"
    ERROR = "Error"


PROTOCOLS = ("icmp", "udp", "tcp", "arp")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Ref:
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TraceSpec:
    name: str
    source: Ref
    destination: Ref
    source_node: str
    destination_node: str
    protocol: str = "icmp"

    def stages_of(self, node: str) -> list[Stage]:
        """The stages the agent of ``node`` traces: one when both ends are on it."""
        if node == self.source_node:
            return [Stage.SOURCE]
        if node == self.destination_node:
            return [Stage.DESTINATION]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Tunnel:
    vtep: ipaddress.IPv4Address
    vni: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StageReport:
    stage: Stage
    node: str
    datapath: str
    result: Result
    message: str = ""
    rule: str | None = None
    tunnels: tuple[Tunnel, ...] = ()
    hops: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stage": self.stage.value,
            "node": self.node,
            "datapath": self.datapath,
            "result": self.result.value,
            "message": self.message[:1024],
            "tunnels": [{"vtep": str(t.vtep), "vni": t.vni} for t in self.tunnels[:256]],
            "hops": [h[:2048] for h in self.hops[:64]],
        }
        if self.rule:
            body["rule"] = self.rule[:2048]
        return body


def _ref(raw: object, field: str) -> Ref:
    if not isinstance(raw, Mapping) or not raw.get("namespace") or not raw.get("name"):
        raise ValidationError(field, "must be {namespace, name}")
    return Ref(namespace=str(raw["namespace"]), name=str(raw["name"]))


def parse_trace(obj: Raw) -> TraceSpec:
    spec = obj.get("spec") or {}
    protocol = str(spec.get("protocol") or "icmp")
    if protocol not in PROTOCOLS:
        raise ValidationError("spec.protocol", f"{protocol!r} is not one of {PROTOCOLS}")
    return TraceSpec(
        name=str((obj.get("metadata") or {}).get("name", "")),
        source=_ref(spec.get("source"), "spec.source"),
        destination=_ref(spec.get("destination"), "spec.destination"),
        source_node=str(spec.get("sourceNode") or ""),
        destination_node=str(spec.get("destinationNode") or ""),
        protocol=protocol,
    )


def parse_stages(obj: Raw) -> dict[Stage, StageReport]:
    result = {}
    for raw in (obj.get("status") or {}).get("stages") or ():
        try:
            stage = Stage(raw.get("stage"))
            outcome = Result(raw.get("result"))
        except ValueError:
            continue
        tunnels = []
        for t in raw.get("tunnels") or ():
            try:
                tunnels.append(Tunnel(vtep=ipaddress.IPv4Address(t["vtep"]), vni=int(t["vni"])))
            except (KeyError, ValueError, TypeError):
                continue
        result[stage] = StageReport(
            stage=stage,
            node=str(raw.get("node", "")),
            datapath=str(raw.get("datapath", "")),
            result=outcome,
            message=str(raw.get("message", "")),
            rule=raw.get("rule"),
            tunnels=tuple(tunnels),
            hops=tuple(str(h) for h in raw.get("hops") or ()),
        )
    return result


def verdict(
    spec: TraceSpec,
    stages: Mapping[Stage, StageReport],
    *,
    destination_vtep: ipaddress.IPv4Address | None,
) -> tuple[Verdict, str]:
    """What the stages say about the packet, and why."""
    src = stages.get(Stage.SOURCE)
    if src is None:
        return Verdict.PENDING, f"waiting for the agent of {spec.source_node}"
    if src.result == Result.ERROR:
        return Verdict.ERROR, f"{src.node}: {src.message}"
    if src.result == Result.DROPPED:
        return Verdict.DROPPED, f"dropped on {src.node} by {src.rule or 'the datapath'}"
    if src.result == Result.ANSWERED:
        return Verdict.DELIVERED, f"answered on {src.node}: {src.message}"
    if src.result == Result.DELIVERED:
        if spec.source_node == spec.destination_node:
            return Verdict.DELIVERED, f"delivered on {src.node}"
        where = spec.destination_node
        return Verdict.DROPPED, f"{src.node} delivered it locally, not towards {where}"
    # Tunnelled: it must reach the destination's VTEP, where the destination stage decides.
    if destination_vtep is not None and all(t.vtep != destination_vtep for t in src.tunnels):
        sent = ", ".join(f"{t.vtep} (VNI {t.vni})" for t in src.tunnels) or "nowhere"
        return (
            Verdict.DROPPED,
            f"{src.node} never sends it to {spec.destination_node} ({destination_vtep}); "
            f"copies go to {sent}; last rule {src.rule or '-'}",
        )
    dst = stages.get(Stage.DESTINATION)
    if dst is None:
        return Verdict.PENDING, f"waiting for the agent of {spec.destination_node}"
    if dst.result == Result.DELIVERED:
        return Verdict.DELIVERED, f"delivered on {dst.node}"
    if dst.result == Result.ERROR:
        return Verdict.ERROR, f"{dst.node}: {dst.message}"
    return Verdict.DROPPED, f"dropped on {dst.node} by {dst.rule or 'the datapath'}"
