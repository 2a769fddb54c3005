"""The datapath watchdog's decisions (pure), the gate that keeps calls to a stuck daemon from
piling up, and the watchdog loop against a fake datapath."""

from __future__ import annotations

import asyncio

import pytest

from voile.api import constants as c
from voile.errors import DatapathBusy
from voile_agent.controller.watchdog import Watchdog
from voile_agent.datapath.base import Health
from voile_agent.host import tools
from voile_agent.planning.watchdog import Check, HealthState

OK = Check(healthy=True)
DOWN = Check(healthy=False, reason=c.Reason.DATAPATH_UNAVAILABLE.value, message="no echo")
RESTARTED = Check(healthy=False, reason=c.Reason.DATAPATH_RESTARTED.value, message="no canary")


def test_a_fault_is_reported_once_after_it_lasted_and_repaired_when_it_ends() -> None:
    s = HealthState(report_after=2.0)
    assert s.step(OK, 0.0) == type(s.step(OK, 0.0))()  # healthy: nothing to do
    first = s.step(DOWN, 12.0, began=11.0)
    assert first.changed and not first.report and not first.repair
    assert s.faults == 1
    assert s.step(DOWN, 13.5).report  # 2.5 s since the check that found it began
    assert not s.step(DOWN, 14.0).report  # once per fault
    assert s.step(DOWN, 21.0, began=19.0).report is False
    slow = HealthState(report_after=2.0)
    assert slow.step(DOWN, 12.0, began=10.0).report  # a check that hung 2 s: at once
    back = s.step(OK, 24.0)
    assert back.repair and back.changed and not back.report
    assert not s.reported
    again = s.step(DOWN, 30.0)
    assert again.changed and s.faults == 2


def test_a_restarted_switch_is_repaired_at_once_on_every_check() -> None:
    s = HealthState(report_after=2.0)
    assert s.step(RESTARTED, 1.0).repair
    assert s.step(RESTARTED, 1.5).repair
    assert not s.step(RESTARTED, 1.6).report
    assert s.step(OK, 1.8).repair


def test_the_node_condition_follows_the_state() -> None:
    s = HealthState()
    s.step(DOWN, 1.0)
    note = s.as_annotation(wall_since="2026-01-01T00:00:00Z")
    assert note["status"] == "False" and note["reason"] == "DatapathUnavailable"
    assert note["faults"] == 1
    s.step(OK, 2.0)
    assert s.as_annotation(wall_since="x")["status"] == "True"


async def test_calls_to_a_stuck_daemon_do_not_pile_up() -> None:
    gate = "test-gate"
    calls = [
        asyncio.create_task(tools.run_tool("sleep", "5", timeout=10, what="sleep", gate=gate))
        for _ in range(tools.GATE_LIMIT)
    ]
    await asyncio.sleep(0.2)
    assert tools.in_flight(gate) == tools.GATE_LIMIT
    with pytest.raises(DatapathBusy):
        await tools.run_tool("true", timeout=5, what="true", gate=gate)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert tools.in_flight(gate) == 0
    assert await tools.run_tool("echo", "ok", timeout=5, what="echo", gate=gate) == "ok\n"


class FakeDatapath:
    def __init__(self) -> None:
        self.answers: list[Health | None] = []  # None: hang

    async def health(self) -> Health:
        answer = self.answers.pop(0) if self.answers else Health(healthy=True)
        if answer is None:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")
        return answer


async def test_the_watchdog_bounds_a_hanging_check_and_reports_without_waiting() -> None:
    dp = FakeDatapath()
    repairs: list[int] = []
    reports: list[Check] = []
    changes: list[int] = []

    async def report(check: Check) -> None:
        reports.append(check)
        await asyncio.sleep(3600)  # an API server that does not answer

    dog = Watchdog(
        dp,  # type: ignore[arg-type]
        on_repair=lambda: repairs.append(1),
        on_report=report,
        on_change=lambda: changes.append(1),
        deadline=0.1,
        report_after=0.0,
    )
    dp.answers = [None, None]
    await asyncio.wait_for(dog.tick(), 1)  # bounded by the deadline, not the hang
    assert dog.fault is not None and dog.fault.reason == "DatapathUnavailable"
    await asyncio.wait_for(dog.tick(), 1)
    await asyncio.sleep(0)
    assert len(reports) == 1 and changes == [1]
    await asyncio.wait_for(dog.tick(), 1)  # healthy again: the report task did not block it
    assert dog.fault is None and repairs == [1]
    assert dog.annotation()["faults"] == 1
    assert dog._reporting is not None
    dog._reporting.cancel()
