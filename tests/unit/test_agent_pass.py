"""Whole reconcile passes (controller.reconcile.Reconciler) against in-memory fakes at our own
seams: the API view and writer (the watches' caches and the agent's writes) and the datapath
(the real ``null`` backend, which keeps every backend's contract in memory). What is real: the
controller's steps, the planner, the shared model. What is not: the API server and the kernel
(tests/functional runs the same passes on real OVS)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Sequence
from typing import Any

import pytest

from voile.api import conditions
from voile.api import constants as c
from voile.api.conditions import Condition
from voile.api.model import Endpoint, Invalid
from voile.errors import DatapathError, PlumbingError
from voile_agent.controller.reconcile import WAITING_QUIET, WRITTEN_TTL, Reconciler
from voile_agent.datapath.base import Observed
from voile_agent.datapath.null import NullDatapath
from voile_agent.planning import state
from voile_agent.planning.model import Attachment, HostPlan, Segment

NODE = "host-1"
VTEP = "198.18.0.1"


def raw(name: str, *, node: str = NODE, ip: str | None = None, vtep: str | None = None,
        network: str = "blue", uid: str | None = None) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {}
    if ip is not None:
        last = int(ip.rsplit(".", 1)[1])
        status = {
            "ip": ip,
            "mac": f"0a:58:c6:13:01:{last:02x}",
            "prefixLength": 24,
            "vni": 100,
            "mtu": 1450,
            "conditions": [{"type": "Allocated", "status": "True", "reason": "Allocated"}],
        }
    if vtep is not None:
        status["vtep"] = vtep
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid or f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "network": network,
            "node": node,
            "target": {"netns": {"path": f"/run/netns/{name}", "interface": "eth0"}},
        },
        "status": status,
    }


class FakeApi:
    """The view and the writer over one dict of objects, as the watches would show them."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.segs = {
            "blue": Segment(
                network="blue", vni=100, mtu=1450, cidr=ipaddress.IPv4Network("198.19.1.0/24")
            )
        }
        self.watched: set[str] = set()
        self.synced = True
        self.writes: list[tuple[str, str]] = []
        self.invalid: list[Invalid] = []

    def put(self, obj: dict[str, Any]) -> None:
        self.objects[obj["metadata"]["name"]] = obj

    def delete(self, name: str) -> None:
        obj = self.objects[name]
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            del self.objects[name]

    def _parsed(self, node_is_us: bool) -> list[Endpoint]:
        result = []
        for obj in self.objects.values():
            if (obj["spec"]["node"] == NODE) == node_is_us:
                ep = state.parse(obj)
                assert ep is not None
                result.append(ep)
        return result

    # View
    def local(self) -> Sequence[Endpoint]:
        return self._parsed(True)

    def invalid_local(self) -> Sequence[Invalid]:
        return list(self.invalid)

    def segments(self) -> dict[str, Segment]:
        return dict(self.segs)

    def remote(self) -> Sequence[Endpoint]:
        return [ep for ep in self._parsed(False) if ep.spec.network in self.watched]

    async def watch_networks(self, networks: Collection[str]) -> None:
        self.watched = set(networks)

    async def remote_synced(self, *, timeout: float) -> bool:
        return self.synced

    # Writer
    async def add_finalizer(self, ep: Endpoint, *, vtep: str) -> bool:
        meta = self.objects[ep.name]["metadata"]
        if c.AGENT_FINALIZER in meta.setdefault("finalizers", []):
            return False
        meta["finalizers"].append(c.AGENT_FINALIZER)
        meta.setdefault("annotations", {})[c.ANNOTATION_VTEP] = vtep
        self.writes.append(("finalizer+", ep.name))
        return True

    async def remove_finalizer(self, ep: Endpoint) -> bool:
        obj = self.objects.get(ep.name)
        if obj is None or c.AGENT_FINALIZER not in obj["metadata"].get("finalizers", []):
            return False
        obj["metadata"]["finalizers"].remove(c.AGENT_FINALIZER)
        self.writes.append(("finalizer-", ep.name))
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"]["finalizers"]:
            del self.objects[ep.name]
        return True

    async def write_status(self, ep: Endpoint, *, vtep: str | None, cond: Condition) -> bool:
        status = self.objects[ep.name].setdefault("status", {})
        if vtep is not None:
            status["vtep"] = vtep
        kept = [x for x in status.get("conditions", []) if x["type"] != cond.type]
        status["conditions"] = [*kept, cond.to_api(now="2026-01-01T00:00:00Z")]
        self.writes.append((f"status {cond.reason}", ep.name))
        return True

    async def write_invalid(self, obj: Invalid, cond: Condition) -> bool:
        self.writes.append((f"status {cond.reason}", obj.name))
        return True

    def ready(self, name: str) -> Condition | None:
        ep = state.parse(self.objects[name])
        assert ep is not None
        return conditions.find(ep.status.conditions, c.ConditionType.READY)


class Datapath(NullDatapath):
    """The null backend, with the failures a real datapath has."""

    def __init__(self) -> None:
        super().__init__(vtep_ip=VTEP)
        self.fail_observe = False
        self.refuse: dict[str, PlumbingError] = {}
        self.attached: list[str] = []
        self.detached: list[str] = []
        self.api: FakeApi | None = None
        self.finalized_at_attach: list[bool] = []

    async def attach(self, attachment: Attachment) -> None:
        if attachment.name in self.refuse:
            raise self.refuse[attachment.name]
        self.attached.append(attachment.name)
        if self.api is not None:
            meta = self.api.objects[attachment.name]["metadata"]
            self.finalized_at_attach.append(c.AGENT_FINALIZER in meta.get("finalizers", []))
        await super().attach(attachment)

    async def observe(self, *, wait_for: Collection[str] = (), timeout: float = 10.0) -> Observed:
        if self.fail_observe:
            raise DatapathError("OVSDB at unix:/x has not answered yet")
        return await super().observe(wait_for=wait_for, timeout=timeout)

    async def detach(self, port: str) -> bool:
        self.detached.append(port)
        return await super().detach(port)


@dataclasses.dataclass
class Host:
    api: FakeApi
    dp: Datapath
    agent: Reconciler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def host(clock: Clock) -> Host:
    api, dp = FakeApi(), Datapath()
    dp.api = api
    return Host(api, dp, Reconciler(node=NODE, view=api, writer=api, datapath=dp, clock=clock))


def entries(plan: HostPlan | None) -> dict[str, Any]:
    assert plan is not None
    (seg,) = plan.segments
    return {
        "local": sorted(a.name for a in seg.local),
        "remote": sorted(r.uid for r in seg.remote),
        "flood": [str(v) for v in seg.flood],
    }


async def test_a_new_endpoint_gets_finalizer_then_port_then_vtep_and_ready_in_one_write(
    host: Host,
) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    result = await host.agent.run_pass(verify=False)
    assert result.plumbed == 1 and not result.retry
    assert host.api.writes == [("finalizer+", "web"), ("status Ready", "web")]
    assert host.dp.finalized_at_attach == [True], "the finalizer is on before plumbing"
    ready = host.api.ready("web")
    assert ready is not None and ready.is_true
    assert host.api.objects["web"]["status"]["vtep"] == VTEP
    assert entries(host.dp.plan) == {"local": ["web"], "remote": [], "flood": []}
    # A second pass changes nothing anywhere.
    host.api.writes.clear()
    again = await host.agent.run_pass(verify=False)
    assert host.api.writes == [] and (again.flows_added, again.flows_deleted) == (0, 0)
    assert host.dp.attached == ["web"], "an unchanged attachment is not plumbed again"
    await host.agent.run_pass(verify=True)
    assert host.dp.attached == ["web", "web"], "a verify pass plumbs everything again"


async def test_unallocated_endpoints_wait_and_get_no_port(host: Host, clock: Clock) -> None:
    host.api.put(raw("web"))
    result = await host.agent.run_pass(verify=False)
    assert result.plumbed == 0 and host.dp.ports == {}
    # Nobody has said anything yet: the operator gets WAITING_QUIET seconds before the agent
    # writes that the Endpoint waits for it (in a burst the operator allocates most first).
    assert host.api.writes == [("finalizer+", "web")] and result.retry
    assert host.api.ready("web") is None
    clock.now += WAITING_QUIET
    await host.agent.run_pass(verify=False)
    ready = host.api.ready("web")
    assert ready is not None and ready.reason == c.Reason.WAITING_FOR_ALLOCATION.value


async def test_what_the_operator_says_already_is_not_written_again(
    host: Host, clock: Clock
) -> None:
    obj = raw("web")
    obj["status"] = {"conditions": [
        {"type": "Allocated", "status": "False", "reason": "PoolExhausted", "message": "full"}
    ]}  # fmt: skip
    host.api.put(obj)
    await host.agent.run_pass(verify=False)
    clock.now += 10 * WAITING_QUIET
    result = await host.agent.run_pass(verify=False)
    assert host.api.writes == [("finalizer+", "web")] and not result.retry
    assert host.api.ready("web") is None


async def test_an_endpoint_that_loses_its_allocation_shows_it_in_ready(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    await host.agent.run_pass(verify=False)
    obj = raw("web")  # the operator took the address back (Allocated=False)
    obj["metadata"]["finalizers"] = [c.AGENT_FINALIZER]
    obj["status"] = {
        "vtep": VTEP,
        "conditions": [
            {"type": "Allocated", "status": "False", "reason": "AddressTaken", "message": "x"},
            *host.api.objects["web"]["status"]["conditions"][1:],
        ],
    }
    host.api.put(obj)
    await host.agent.run_pass(verify=False)
    ready = host.api.ready("web")
    assert ready is not None and ready.reason == c.Reason.WAITING_FOR_ALLOCATION.value
    assert host.dp.ports == {}


async def test_a_local_endpoint_that_does_not_parse_is_reported_once_per_version(
    host: Host,
) -> None:
    bad = Invalid(namespace="default", name="odd", uid="uid-odd", resource_version="7", error="x")
    host.api.invalid = [bad]
    await host.agent.run_pass(verify=False)
    await host.agent.run_pass(verify=False)
    assert host.api.writes == [("status InvalidSpec", "odd")]
    host.api.invalid = [dataclasses.replace(bad, resource_version="8")]
    await host.agent.run_pass(verify=False)
    assert host.api.writes == [("status InvalidSpec", "odd")] * 2


async def test_remote_endpoints_appear_and_go(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    await host.agent.run_pass(verify=False)
    host.api.put(raw("db", node="host-2", ip="198.19.1.3", vtep="198.18.0.2"))
    host.api.put(raw("cache", node="host-3", ip="198.19.1.4", vtep="198.18.0.3"))
    host.api.put(raw("other", node="host-4", ip="198.19.2.4", vtep="198.18.0.4", network="red"))
    await host.agent.run_pass(verify=False)
    assert host.api.watched == {"blue"}, "only networks present here are watched"
    assert entries(host.dp.plan) == {
        "local": ["web"],
        "remote": ["uid-cache", "uid-db"],
        "flood": ["198.18.0.2", "198.18.0.3"],
    }
    del host.api.objects["cache"]
    result = await host.agent.run_pass(verify=False)
    assert entries(host.dp.plan)["flood"] == ["198.18.0.2"] and result.flows_deleted > 0


def node_lost(obj: dict[str, Any]) -> dict[str, Any]:
    """The operator's verdict on an Endpoint whose node's Lease stood still."""
    lost = {"type": "Ready", "status": "Unknown", "reason": "NodeLost", "message": "lost"}
    status = obj.setdefault("status", {})
    status["conditions"] = [x for x in status.get("conditions", []) if x["type"] != "Ready"]
    status["conditions"].append(lost)
    return obj


async def test_a_lost_nodes_endpoints_leave_forwarding_and_come_back(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    host.api.put(raw("db", node="host-2", ip="198.19.1.3", vtep="198.18.0.2"))
    host.api.put(raw("cache", node="host-3", ip="198.19.1.4", vtep="198.18.0.3"))
    await host.agent.run_pass(verify=False)
    await host.agent.run_pass(verify=False)
    node_lost(host.api.objects["cache"])
    result = await host.agent.run_pass(verify=False)
    assert entries(host.dp.plan) == {
        "local": ["web"],
        "remote": ["uid-db"],
        "flood": ["198.18.0.2"],
    }
    assert result.flows_deleted > 0
    host.api.put(raw("cache", node="host-3", ip="198.19.1.4", vtep="198.18.0.3"))  # back
    await host.agent.run_pass(verify=False)
    assert entries(host.dp.plan)["flood"] == ["198.18.0.2", "198.18.0.3"]


async def test_our_own_endpoint_found_lost_is_reported_ready_again_at_once(host: Host) -> None:
    """The verdict on a live agent (its Lease went unheard) is answered by the next pass, even
    though the same Ready was written moments ago (the write cache would skip it)."""
    host.api.put(raw("web", ip="198.19.1.2"))
    await host.agent.run_pass(verify=False)
    assert host.api.ready("web").reason == "Ready"  # type: ignore[union-attr]
    node_lost(host.api.objects["web"])
    host.api.writes.clear()
    await host.agent.run_pass(verify=False)
    assert host.api.writes == [("status Ready", "web")]
    assert host.api.ready("web").reason == "Ready"  # type: ignore[union-attr]


async def test_a_partial_remote_view_removes_nothing(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    host.api.put(raw("db", node="host-2", ip="198.19.1.3", vtep="198.18.0.2"))
    await host.agent.run_pass(verify=False)
    held = set(host.dp.entries)
    del host.api.objects["db"]
    host.api.synced = False
    result = await host.agent.run_pass(verify=False)
    assert result.retry and result.flows_deleted == 0 and host.dp.entries == held


async def test_deletion_unplumbs_then_releases_the_finalizer(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    await host.agent.run_pass(verify=False)
    port = next(iter(host.dp.ports))
    host.api.delete("web")
    await host.agent.run_pass(verify=False)
    assert host.dp.detached == [port] and host.dp.ports == {}
    assert "web" not in host.api.objects, "our finalizer was the last one"
    assert host.dp.entries == set()


async def test_a_restart_that_finds_its_state_changes_nothing(host: Host) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    host.api.put(raw("db", node="host-2", ip="198.19.1.3", vtep="198.18.0.2"))
    await host.agent.run_pass(verify=False)
    held_ports, held_entries = dict(host.dp.ports), set(host.dp.entries)
    host.api.writes.clear()
    restarted = Reconciler(node=NODE, view=host.api, writer=host.api, datapath=host.dp)
    result = await restarted.run_pass(verify=True)
    assert (result.flows_added, result.flows_deleted, result.ports_deleted) == (0, 0, 0)
    assert host.dp.ports == held_ports and host.dp.entries == held_entries
    assert host.api.writes == []


async def test_stale_ports_of_endpoints_gone_while_the_agent_was_away_are_removed(
    host: Host,
) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    host.api.put(raw("old", ip="198.19.1.9"))
    await host.agent.run_pass(verify=False)
    # "old" vanished from the API (finalizer removed by the operator's dead-agent takeover).
    del host.api.objects["old"]
    restarted = Reconciler(node=NODE, view=host.api, writer=host.api, datapath=host.dp)
    result = await restarted.run_pass(verify=False)
    assert result.ports_deleted == 1
    assert [p.uid for p in host.dp.ports.values()] == ["uid-web"]


async def test_a_failed_observation_aborts_the_pass_before_anything_is_deleted(
    host: Host,
) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    host.api.put(raw("gone", ip="198.19.1.5"))
    await host.agent.run_pass(verify=False)
    held_ports, held_entries = dict(host.dp.ports), set(host.dp.entries)
    host.api.delete("gone")
    host.dp.fail_observe = True
    with pytest.raises(DatapathError):
        await host.agent.run_pass(verify=True)
    assert host.dp.detached == [] and host.dp.ports == held_ports
    assert host.dp.entries == held_entries
    assert "gone" in host.api.objects, "no finalizer released on a failed read"
    host.dp.fail_observe = False
    await host.agent.run_pass(verify=False)
    assert "gone" not in host.api.objects and len(host.dp.ports) == 1


async def test_a_refused_endpoint_reports_its_reason_and_others_go_on(host: Host) -> None:
    host.dp.refuse["bad"] = PlumbingError(c.Reason.NAMESPACE_NOT_ALLOWED.value, "outside")
    host.api.put(raw("bad", ip="198.19.1.7"))
    host.api.put(raw("good", ip="198.19.1.8"))
    result = await host.agent.run_pass(verify=False)
    assert result.failed == 1 and result.plumbed == 1 and result.retry
    bad, good = host.api.ready("bad"), host.api.ready("good")
    assert bad is not None and bad.reason == c.Reason.NAMESPACE_NOT_ALLOWED.value
    assert good is not None and good.is_true


async def test_a_conflict_on_the_finalizer_holds_the_endpoint_without_removing_it(
    host: Host, clock: Clock
) -> None:
    host.api.put(raw("web", ip="198.19.1.2"))
    await host.agent.run_pass(verify=False)
    host.api.objects["web"]["metadata"]["finalizers"] = []  # someone took it off
    clock.now += WRITTEN_TTL

    async def conflict(ep: Endpoint, *, vtep: str) -> bool:
        from voile import kube

        raise kube.Conflict(409, "Conflict", "the object has been modified")

    host.api.add_finalizer = conflict  # type: ignore[method-assign]
    result = await host.agent.run_pass(verify=False)
    assert result.retry and host.dp.detached == [] and len(host.dp.ports) == 1


async def test_the_finalizer_announces_the_hosts_vtep_before_anything_is_plumbed(
    host: Host,
) -> None:
    host.api.put(raw("web"))  # not allocated yet: nothing to plumb
    await host.agent.run_pass(verify=False)
    meta = host.api.objects["web"]["metadata"]
    assert host.dp.ports == {} and host.api.writes == [("finalizer+", "web")]
    assert meta["annotations"][c.ANNOTATION_VTEP] == str(host.agent.vtep)


async def test_a_finalizer_just_added_is_not_applied_again_while_the_cache_lags(
    host: Host, clock: Clock
) -> None:
    host.api.put(raw("web"))
    await host.agent.run_pass(verify=False)
    stale = raw("web")  # the watch cache still shows the version before the finalizer
    host.api.put(stale)
    await host.agent.run_pass(verify=False)
    assert host.api.writes == [("finalizer+", "web")]
    clock.now += WRITTEN_TTL
    host.api.put(raw("web"))
    await host.agent.run_pass(verify=False)
    added = [w for w in host.api.writes if w[0] == "finalizer+"]
    assert added == [("finalizer+", "web")] * 2, "then it is applied again"
