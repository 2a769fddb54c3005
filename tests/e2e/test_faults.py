"""The fault suite: every component of the lab dies, stalls or restarts under a 100 pps ping.

Real: etcd + kube-apiserver, the operator (supervised), per simulated host an ovsdb-server and an
ovs-vswitchd (netdev, supervised as systemd would: restarted when they exit) and a voile-agent.
The faults are the ones a user injects with `voile lab restart|pause|resume`
(voile/lab/faults.py), and fuzzed requests at the agent's doors (tests/fuzzing.py). The agent
SIGKILL fault is in test_lab.py; the operator chaos row (two replicas, SIGKILL every 5 s over
2,000 allocations) in test_operator.py, and at any size in bench/bench_chaos.py.
docs/faults.md has the table and the measured figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import fuzzing
from tests.catalogue import network
from tests.e2e.labtools import kubectl, ping
from voile import processes
from voile.lab import cni, faults
from voile.lab.host import del_netns
from voile.lab.lab import AGENT_METRICS_PORT, Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

NETWORK = "faults"
INTERVAL = 0.01  # 100 packets per second
FUZZ_REQUESTS = 1000  # per door here; bench/bench_fuzz.py sends 10,000
METRICS = b"GET /metrics HTTP/1.1\r\nHost: voile\r\n\r\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), run_id="fault", underlay_octet=31)
    try:
        lab.up(hosts=3, datapath="ovs")  # the faults of OVS daemons
        kubectl(lab, "apply", "-f", "-", input=_network_yaml())
        for host in (1, 2, 3):
            lab.attach(f"host-{host}", f"f{host}", NETWORK)
        _wait_converged(lab, ["f1", "f2", "f3"])
        yield lab
    finally:
        lab.down()
    assert not Path(lab.directory).exists()
    leftovers = [p.name for p in Path("/run/netns").glob("voile-fault*")]
    assert leftovers == [], f"lab down left namespaces: {leftovers}"


def _wait_converged(lab: Lab, names: list[str], timeout: float = 30) -> None:
    """Until every container answers every other: Ready says an Endpoint is plumbed on its own
    host; the peers program their way to it in their next pass. The tests compare flows and
    count losses from here."""
    deadline = time.monotonic() + timeout
    pairs = list(itertools.combinations(names, 2))
    while pairs:
        pairs = [(a, b) for a, b in pairs if not ping(lab, a, address(lab, b), count=1)]
        if pairs and time.monotonic() > deadline:
            raise AssertionError(f"no answer within {timeout:.0f}s between {pairs}")


def _network_yaml() -> str:
    return json.dumps(network(NETWORK, cidr="198.18.131.0/24"))


class Pinger:
    """``ping -D`` at 100 pps from one attached container until stopped (or ``seconds`` of
    packets sent): what was lost, and the longest time between two replies (the outage), from
    ping's own timestamps."""

    def __init__(self, lab: Lab, source: str, address: str, *, seconds: float) -> None:
        count = int(seconds / INTERVAL)
        argv = ["ping", "-D", "-i", str(INTERVAL), "-c", str(count), "-W", "1", address]
        # A file, not a pipe: ping blocks once a pipe nobody reads is full (800 lines).
        self.file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.container_netns(source), *argv],
            stdout=self.file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.out = ""

    def stop(self, timeout: float = 300) -> None:
        """SIGINT: ping prints its statistics and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.file.seek(0)
            self.out = self.file.read()
            self.file.close()

    def _stats(self) -> tuple[int, int]:
        match = re.search(r"(\d+) packets transmitted, (\d+) received", self.out)
        assert match, self.out[-500:]
        return int(match.group(1)), int(match.group(2))

    @property
    def count(self) -> int:
        return self._stats()[0]

    @property
    def lost(self) -> int:
        """Echo requests without a reply, not counting the last ones still in flight when ping
        was stopped (SIGINT counts them as lost): a tail of more than a second is an outage and
        counts whole."""
        sent, _ = self._stats()
        seqs = {int(n) for n in re.findall(r"bytes from .* icmp_seq=(\d+)", self.out)}
        last = max(seqs, default=0)
        missing = sum(1 for n in range(1, last + 1) if n not in seqs)
        tail = sent - last
        return missing + (tail if tail * INTERVAL > 1.0 else 0)

    @property
    def longest_gap(self) -> float:
        stamps = [float(s) for s in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", self.out, re.M)]
        assert stamps, self.out[-500:]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


@contextlib.contextmanager
def pinging(lab: Lab, source: str, address: str, *, seconds: float = 300) -> Iterator[Pinger]:
    """A pinger for the block's duration (stopped 2 s after it ends)."""
    pinger = Pinger(lab, source, address, seconds=seconds)
    try:
        yield pinger
        time.sleep(2)
    finally:
        pinger.stop()


def address(lab: Lab, name: str) -> str:
    return kubectl(lab, "get", "vep", name, "-o", "jsonpath={.status.ip}")


def ready_reason(lab: Lab, name: str) -> str:
    out = kubectl(
        lab,
        "get",
        "vep",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].reason}",
        check=False,
        timeout=10,
    )
    return out.strip()


def wait_reason(lab: Lab, name: str, reason: str, *, timeout: float) -> float:
    """Seconds until Endpoint ``name`` shows Ready reason ``reason``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready_reason(lab, name) == reason:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(
        f"{name}: Ready reason not {reason} within {timeout}s: {ready_reason(lab, name)}"
    )


def plumbing_events(lab: Lab) -> int:
    """Lines of the agents' logs that (re)plumbed something: a re-plumb after a fault adds one."""
    total = 0
    for log in Path(lab.directory, "fabric").glob("host-*/agent.log"):
        text = log.read_text(errors="replace")
        total += text.count("veth created") + text.count("endpoint port ensured")
    return total


def agent_log_count(lab: Lab, text: str) -> int:
    """Lines of every agent's log that contain ``text``."""
    logs = Path(lab.directory, "fabric").glob("host-*/agent.log")
    return sum(log.read_text(errors="replace").count(text) for log in logs)


def operator_log_count(lab: Lab, text: str = "node lost node=") -> int:
    return Path(lab.directory, "operator.log").read_text(errors="replace").count(text)


def voile_flows(lab: Lab, index: int) -> set[str]:
    out = lab.host(index).ofctl(
        "dump-flows", "br-voile", "--no-stats", "cookie=0x5601000000000000/0xffff000000000000"
    )
    return {line.strip() for line in out.splitlines() if "cookie=" in line}


def test_vswitchd_killed_costs_under_two_seconds_and_flows_come_back_first(lab: Lab) -> None:
    dst = address(lab, "f2")
    before = voile_flows(lab, 2)
    old = faults.pid(lab, "host-2", "vswitchd")
    with pinging(lab, "f1", dst) as pinger:
        time.sleep(2)
        new = faults.restart(lab, "host-2", "vswitchd", sig=signal.SIGKILL)
        time.sleep(3)
    assert new != old
    gap, lost = pinger.longest_gap, pinger.lost
    print(f"vswitchd SIGKILL: {lost} of {pinger.count} lost, longest gap {gap:.2f}s")
    assert gap <= 2.0, f"{gap:.2f}s without replies through the restarted host"
    host = lab.host(2)
    # The supervisor restarted it with flow-restore-wait; the agent cleared it after its flows.
    supervise_log = (host.directory / "supervise-ovs-vswitchd.log").read_text()
    assert "restarting" in supervise_log
    agent_log = (host.directory / "agent.log").read_text()
    assert "flows restored after an ovs-vswitchd restart" in agent_log
    assert "flow-restore-wait" not in host.vsctl("get", "Open_vSwitch", ".", "other_config")
    assert voile_flows(lab, 2) == before


def test_ovsdb_paused_then_killed_is_reported_and_recovers(lab: Lab) -> None:
    other = address(lab, "f3")
    through = address(lab, "f2")
    assert ready_reason(lab, "f2") == "Ready"
    with (
        pinging(lab, "f1", other) as elsewhere,
        pinging(lab, "f1", through) as faulty,
    ):
        time.sleep(1)
        faults.pause(lab, "host-2", "ovsdb")
        paused = time.monotonic()
        reported = wait_reason(lab, "f2", "DatapathUnavailable", timeout=15)
        time.sleep(max(0.0, 20 - (time.monotonic() - paused)))
        faults.restart(lab, "host-2", "ovsdb", sig=signal.SIGKILL)
        recovered = wait_reason(lab, "f2", "Ready", timeout=15)
    print(
        f"ovsdb pause: reported after {reported:.1f}s, Ready {recovered:.1f}s after the restart; "
        f"lost elsewhere {elsewhere.lost}/{elsewhere.count}, "
        f"through it {faulty.lost}/{faulty.count}"
    )
    assert reported <= 10
    assert recovered <= 10
    assert elsewhere.lost == 0
    # The node-level condition in the agent's Lease: healthy again, the fault counted.
    lease = json.loads(
        kubectl(lab, "get", "lease", "-n", "voile-system", "voile-agent-host-2", "-o", "json")
    )
    health = json.loads(lease["metadata"]["annotations"]["voile.dev/datapath-health"])
    assert health["status"] == "True" and health["faults"] >= 1, health


def test_apiserver_paused_then_restarted_and_etcd_restarted_lose_nothing(lab: Lab) -> None:
    dst = address(lab, "f2")
    plumbed = plumbing_events(lab)
    addresses = {name: address(lab, name) for name in ("f1", "f2", "f3")}
    events = len(kubectl(lab, "get", "events", "-A", "-o", "name").split())
    lists, lost_verdicts = agent_log_count(lab, "listed informer="), operator_log_count(lab)
    with pinging(lab, "f1", dst) as pinger:
        time.sleep(1)
        faults.pause(lab, "controlplane", "apiserver")
        time.sleep(60)
        faults.resume(lab, "controlplane", "apiserver")
        time.sleep(5)  # the agents' watches go on (or resume) from where they were
        lists_after_pause = agent_log_count(lab, "listed informer=")
        faults.restart(lab, "controlplane", "apiserver", sig=signal.SIGTERM)
        faults.restart(lab, "controlplane", "etcd", sig=signal.SIGTERM)
    print(
        f"apiserver pause + etcd restart: {pinger.lost} of {pinger.count} lost; agents' lists "
        f"during the pause {lists_after_pause - lists}, after the restarts "
        f"{agent_log_count(lab, 'listed informer=') - lists_after_pause}, watches resumed "
        f"{agent_log_count(lab, 'watch resuming')}"
    )
    assert pinger.lost == 0
    assert lists_after_pause == lists, "an agent listed again after the pause"
    assert operator_log_count(lab) == lost_verdicts, "the outage made a node look lost"
    assert plumbing_events(lab) == plumbed, "an Endpoint was plumbed again"
    assert {name: address(lab, name) for name in addresses} == addresses
    storm = len(kubectl(lab, "get", "events", "-A", "-o", "name").split()) - events
    assert storm <= 10, f"{storm} Events after the outage"
    # The watches resumed and the operator is back: a new Endpoint is allocated and plumbed.
    new = lab.attach("host-3", "f4", NETWORK, timeout=120)
    assert new not in addresses.values()
    assert (
        subprocess.run(
            ["ip", "netns", "exec", lab.container_netns("f1"), "ping", "-c", "2", "-W", "2", new],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    lab.detach("f4")


def _forwarding_to(lab: Lab, vtep: str) -> list[int]:
    """The hosts (of 1 and 2) with a flow that sends to ``vtep`` (unicast or flood)."""
    return [i for i in (1, 2) if any(f"{vtep}->tun_dst" in f for f in voile_flows(lab, i))]


def _wait(what: str, predicate: Callable[[], bool], *, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_host_recreated_peers_stop_sending_and_its_endpoints_recover(lab: Lab) -> None:
    """host-3 'reboots': its namespace, OVS and agent destroyed, then made again. While it is
    gone the operator finds it lost (its Lease stands still for its 12 s) and hosts 1 and 2
    stop sending to its VTEP; back, its Endpoint is plumbed again and answers, and one whose
    workload's namespace went with the host says why; the traffic between the other hosts loses
    nothing."""
    lab.attach("host-3", "f5", NETWORK)
    vtep = kubectl(lab, "get", "vep", "f3", "-o", "jsonpath={.status.vtep}")
    between, towards = address(lab, "f2"), address(lab, "f3")
    assert _forwarding_to(lab, vtep) == [1, 2]
    with (
        pinging(lab, "f1", between) as others,
        pinging(lab, "f2", towards) as gone,
    ):
        time.sleep(1)
        lab.remove_host("host-3")
        stopped = _wait(
            "hosts 1 and 2 stop sending to host-3",
            lambda: _forwarding_to(lab, vtep) == [],
            timeout=40,
        )
        reason = ready_reason(lab, "f3")
        del_netns(lab.container_netns("f5"))  # this workload did not survive the reboot
        time.sleep(2)
        started = time.monotonic()
        lab.up(hosts=3)
        ready = wait_reason(lab, "f3", "Ready", timeout=60) + time.monotonic() - started
        answering = _wait(
            "f2 reaches f3 again",
            lambda: ping_once(lab, "f2", towards),
            timeout=30,
        )
        assert _forwarding_to(lab, vtep) == [1, 2]
        wait_reason(lab, "f5", "NamespaceNotFound", timeout=30)
    lab.detach("f5")
    print(
        f"host re-created: peers stopped sending {stopped:.1f}s after it went; "
        f"f3 Ready {ready:.1f}s after `lab up`, answering {answering:.1f}s later; "
        f"lost between the others {others.lost}/{others.count}, "
        f"towards it {gone.lost}/{gone.count}"
    )
    assert reason == "NodeLost"
    assert others.lost == 0
    assert stopped <= 25  # its Lease's 12 s + one heartbeat + one health round + a pass


def ping_once(lab: Lab, source: str, address: str) -> bool:
    argv = ["ping", "-c", "1", "-W", "1", address]
    cmd = ["ip", "netns", "exec", lab.container_netns(source), *argv]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def test_fuzzed_requests_at_every_door_crash_nothing_and_leave_nothing(lab: Lab) -> None:
    host = lab.host(3)
    agent = faults.pid(lab, "host-3", "agent")
    endpoints = kubectl(lab, "get", "vep", "-A", "-o", "name")
    claims = kubectl(lab, "get", "ipclaims", "-o", "name")
    ports = host.vsctl("list-ports", "br-voile")
    doors = {
        "local attach API": (str(host.attach_socket), fuzzing.LOCAL_API_PATHS),
        "Docker driver": (str(host.docker_plugin_socket), fuzzing.DOCKER_PATHS),
    }
    for door, (sock, paths) in doors.items():
        report = fuzzing.fuzz(sock, paths, FUZZ_REQUESTS)
        print(f"fuzz {door}: {report.requests} requests, {dict(report.statuses)}, "
              f"slowest {report.slowest:.2f}s")  # fmt: skip
        assert report.requests == FUZZ_REQUESTS
        assert report.failures == [], report.failures[:5]
    conf = lab.cni_conf("host-3", NETWORK)["plugins"][0]
    report = fuzzing.fuzz_cni(str(cni.plugin()), conf, FUZZ_REQUESTS)
    print(f"fuzz CNI plugin: {report.requests} invocations, exit codes {dict(report.statuses)}")
    assert report.requests == FUZZ_REQUESTS
    assert report.failures == [], report.failures[:5]
    assert faults.pid(lab, "host-3", "agent") == agent, "the agent restarted"
    status = fuzzing.send(str(host.attach_socket), b"GET /v1/status HTTP/1.1\r\nHost: v\r\n\r\n")
    assert status.status == 200, status
    assert kubectl(lab, "get", "vep", "-A", "-o", "name") == endpoints
    assert kubectl(lab, "get", "ipclaims", "-o", "name") == claims
    assert host.vsctl("list-ports", "br-voile") == ports


def test_fuzzed_metrics_port_answers_4xx_keeps_serving_and_leaks_no_fd_or_thread(
    lab: Lab,
) -> None:
    """The agent's metrics port (the chart's metrics.agentPort, in the host's namespace)."""
    host = lab.host(3)
    agent = faults.pid(lab, "host-3", "agent")
    door = fuzzing.TcpDoor(AGENT_METRICS_PORT, host.netns_path)
    for _ in range(50):  # warm: the handler threads' first run, the registry's collectors
        assert fuzzing.send(door, METRICS).status == 200
    before = processes.resources(agent)
    report = fuzzing.fuzz(door, fuzzing.METRICS_PATHS, FUZZ_REQUESTS, fuzzing.metrics_verdict)
    print(f"fuzz metrics port: {report.requests} requests, {dict(report.statuses)}, "
          f"slowest {report.slowest:.2f}s, agent fds/threads before {before}")  # fmt: skip
    assert report.requests == FUZZ_REQUESTS
    assert report.failures == [], report.failures[:5]
    assert {200, 404, 405} <= set(report.statuses), report.statuses
    assert faults.pid(lab, "host-3", "agent") == agent, "the agent restarted"
    served = fuzzing.send(door, METRICS)
    assert served.status == 200 and b"voile_agent_reconcile_seconds" in served.body
    after = processes.settled_resources(agent, at_most=before, timeout=10)
    assert after.fds <= before.fds and after.threads <= before.threads, (before, after)
