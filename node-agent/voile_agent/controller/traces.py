"""Answering Traces (crds/traces.yaml): the agent of the source's node traces the packet out of
the source's port, the agent of the destination's node traces it as it arrives from the tunnel,
each through its own datapath (``Datapath.trace``), and each writes its own stage by
server-side apply (field manager ``voile-agent-<node>``, so two agents never remove each
other's stage). The agent that sees both stages also writes the verdict."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from voile import kube
from voile.api import constants as c
from voile.api import naming
from voile.api import trace as tr
from voile.api.model import Endpoint
from voile.api.trace import Result, Stage, StageReport, TraceSpec, Tunnel
from voile.errors import DatapathError, ValidationError
from voile_agent.controller.informer import Informer
from voile_agent.datapath.base import Datapath, TraceQuery
from voile_agent.planning import state

log = logging.getLogger(__name__)

TRACES = "traces"


def _path(name: str | None = None, subresource: str | None = None) -> str:
    return kube.path(c.GROUP, c.VERSION, TRACES, name=name, subresource=subresource)


def _raw(obj: dict[str, Any]) -> dict[str, Any]:
    """Traces are parsed where they are answered (``tr.parse_trace``): a bad one is logged there."""
    return obj


class TraceResponder:
    def __init__(self, client: kube.KubeClient, node: str, datapath: Datapath) -> None:
        self.client = client
        self.node = node
        self.datapath = datapath
        self.manager = f"voile-agent-{node}"[:128]
        self._wake = asyncio.Event()
        self.informers = [
            Informer(
                client,
                _path(),
                parse=_raw,
                on_change=self._wake.set,
                field_selector=f"spec.{side}={node}",
                kind="traces",
                name=f"traces/{side}",
            )
            for side in ("sourceNode", "destinationNode")
        ]
        self._done: set[tuple[str, str, Stage]] = set()  # (name, uid, stage) answered

    async def run(self) -> None:
        for informer in self.informers:
            informer.start()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for obj in [o for i in self.informers for o in i.items()]:
                    await self._answer(obj)
        finally:
            for informer in self.informers:
                await informer.stop()

    async def _answer(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        try:
            spec = tr.parse_trace(obj)
        except ValidationError as exc:
            log.info("trace ignored name=%s error=%s", meta.get("name"), exc)
            return
        have = tr.parse_stages(obj)
        todo = [s for s in spec.stages_of(self.node) if s not in have]
        key_uid = str(meta.get("uid", ""))
        todo = [s for s in todo if (spec.name, key_uid, s) not in self._done]
        if not todo and not self._owes_verdict(spec, obj, have):
            return
        src, dst = await self._endpoint(spec.source), await self._endpoint(spec.destination)
        reports = dict(have)
        for stage in todo:
            reports[stage] = await self._stage(spec, stage, src, dst)
            self._done.add((spec.name, key_uid, stage))
        mine = [reports[s] for s in spec.stages_of(self.node)]
        verdict, why = tr.verdict(spec, reports, destination_vtep=dst.status.vtep if dst else None)
        status: dict[str, Any] = {"stages": [r.to_api() for r in mine]}
        if verdict != tr.Verdict.PENDING:
            status["verdict"] = verdict.value
            status["message"] = why[:2048]
        body = {
            "apiVersion": c.API_VERSION,
            "kind": "Trace",
            "metadata": {"name": spec.name},
            "status": status,
        }
        try:
            await self.client.patch(
                _path(spec.name, "status"), body, kind="apply", field_manager=self.manager
            )
        except kube.NotFound:
            return
        except kube.ApiError as exc:
            log.warning("trace not answered name=%s error=%s", spec.name, exc)
            for stage in todo:
                self._done.discard((spec.name, key_uid, stage))
            return
        log.info("trace answered name=%s stages=%s verdict=%s (%s)", spec.name,
                 ",".join(s.value for s in todo), verdict.value, why)  # fmt: skip

    def _owes_verdict(
        self, spec: TraceSpec, obj: dict[str, Any], have: dict[Stage, StageReport]
    ) -> bool:
        """The destination's agent writes the verdict once the source stage appears."""
        return (
            self.node == spec.destination_node
            and Stage.SOURCE in have
            and Stage.DESTINATION in have
            and not (obj.get("status") or {}).get("verdict")
        )

    async def _endpoint(self, ref: tr.Ref) -> Endpoint | None:
        obj = await self.client.get(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ref.namespace, name=ref.name)
        )
        return state.parse(obj) if obj else None

    async def _stage(
        self, spec: TraceSpec, stage: Stage, src: Endpoint | None, dst: Endpoint | None
    ) -> StageReport:
        def error(message: str) -> StageReport:
            return StageReport(
                stage=stage, node=self.node, datapath=self.datapath.kind,
                result=Result.ERROR, message=message,
            )  # fmt: skip

        if src is None or dst is None:
            missing = spec.source if src is None else spec.destination
            return error(f"Endpoint {missing.key} does not exist")
        s, d = src.status, dst.status
        if s.ip is None or s.mac is None or d.ip is None or d.mac is None:
            return error("both Endpoints need an address and a MAC (are they allocated?)")
        to_port = naming.interfaces(dst)[0] if dst.spec.node == self.node else None
        if stage == Stage.SOURCE:
            query = TraceQuery(
                protocol=spec.protocol, src_mac=s.mac, src_ip=s.ip, dst_mac=d.mac, dst_ip=d.ip,
                from_port=naming.interfaces(src)[0], to_port=to_port,
            )  # fmt: skip
        else:
            if s.vtep is None or s.vni is None:
                return error(f"the source {src.key} has no VTEP or VNI yet")
            query = TraceQuery(
                protocol=spec.protocol, src_mac=s.mac, src_ip=s.ip, dst_mac=d.mac, dst_ip=d.ip,
                from_tunnel=Tunnel(vtep=s.vtep, vni=s.vni), to_port=to_port,
            )  # fmt: skip
        try:
            outcome = await self.datapath.trace(query)
        except DatapathError as exc:
            return error(str(exc))
        return StageReport(
            stage=stage,
            node=self.node,
            datapath=self.datapath.kind,
            result=outcome.result,
            message=outcome.message,
            rule=outcome.rule,
            tunnels=outcome.tunnels,
            hops=outcome.hops,
        )
