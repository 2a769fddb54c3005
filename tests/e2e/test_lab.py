"""The lab end to end, driven as a user would: `voile lab` commands, kubectl, ping.

Real: etcd + kube-apiserver, the operator process, one Open vSwitch pair and one voile-agent per
simulated host (network namespaces), kubectl, ping. The lab here uses its own run id, directory and
underlay, so a user's own `voile lab` on the same machine is not touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import venv_bin
from voile.lab.host import add_netns, del_netns
from voile.lab.lab import Lab

from .labtools import kubectl_voile, ping

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), run_id="e2e", underlay_octet=7)
    try:
        lab.up(hosts=3)
        yield lab
    finally:
        lab.down()
    assert not Path(lab.directory).exists()
    leftovers = [p.name for p in Path("/run/netns").glob("voile-e2e*")]
    assert leftovers == [], f"lab down left namespaces: {leftovers}"


def kubectl(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    proc = subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


def in_ns(netns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_ready(lab: Lab, namespace: str, name: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = kubectl(
            lab,
            "get",
            "vep",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.status.ip} {.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        last = proc.stdout + proc.stderr
        parts = proc.stdout.split()
        if len(parts) == 2 and parts[1] == "True":
            return {"ip": parts[0]}
        time.sleep(0.3)
    raise AssertionError(f"{namespace}/{name} not Ready within {timeout}s: {last}")


def test_examples_apply_with_kubectl_and_connect_across_hosts(lab: Lab) -> None:
    """examples/01: a network and two endpoints on host-1 and host-2, applied with kubectl."""
    for ns in ("web", "db"):
        add_netns(ns)
    try:
        kubectl(lab, "apply", "-f", str(EXAMPLES / "01-basic-network"))
        web = wait_ready(lab, "default", "web")
        db = wait_ready(lab, "default", "db")
        assert in_ns("web", "ping", "-c", "3", "-W", "2", db["ip"]).returncode == 0
        assert in_ns("db", "ping", "-c", "3", "-W", "2", web["ip"]).returncode == 0
        mtu = kubectl(lab, "get", "onet", "blue", "-o", "jsonpath={.status.mtu}").stdout
        link = in_ns("web", "ip", "-o", "link", "show", "eth0").stdout
        assert f"mtu {mtu} " in link
        kubectl(
            lab,
            "delete",
            "-f",
            str(EXAMPLES / "01-basic-network" / "endpoints.yaml"),
            "--wait=true",
            "--timeout=60s",
        )
    finally:
        for ns in ("web", "db"):
            del_netns(ns)


def test_voile_lab_cli_attach_exec_status(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", str(EXAMPLES / "01-basic-network" / "network.yaml"))
    env = {**os.environ, "VOILE_LAB_DIR": str(lab.directory)}
    addresses = {}
    for host, name in (("host-1", "c1"), ("host-2", "c2"), ("host-3", "c3")):
        proc = subprocess.run(
            [venv_bin("voile"), "lab", "attach", host, name, "--network", "blue"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        addresses[name] = proc.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"198\.18\.1\.\d+", addresses[name])
    for src in addresses:
        for dst, address in addresses.items():
            if src != dst:
                proc = subprocess.run(
                    [
                        venv_bin("voile"),
                        "lab",
                        "exec",
                        src,
                        "--",
                        "ping",
                        "-c",
                        "2",
                        "-W",
                        "2",
                        address,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert proc.returncode == 0, f"{src} -> {dst}: {proc.stdout}{proc.stderr}"
                # Not even the first packet is lost: every peer knew the new endpoint (its VTEP
                # is announced before it is plumbed) and resolved the remote VTEP ahead of time.
                assert " 0% packet loss" in proc.stdout, f"{src} -> {dst}: {proc.stdout}"
    status = subprocess.run(
        [venv_bin("voile"), "lab", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for word in ("host-1", "host-3", "blue", "default/c1", "198.18.1.0/24"):
        assert word in status.stdout


def test_overlapping_cidrs_are_isolated(lab: Lab) -> None:
    """examples/03: tenant-a and tenant-b share 198.18.3.0/24 and never see each other."""
    kubectl(lab, "apply", "-f", str(EXAMPLES / "03-overlapping-cidrs" / "networks.yaml"))
    a1 = lab.attach("host-1", "a1", "tenant-a", "198.18.3.10")
    a2 = lab.attach("host-2", "a2", "tenant-a", "198.18.3.11")
    b1 = lab.attach("host-1", "b1", "tenant-b", "198.18.3.11")
    b2 = lab.attach("host-2", "b2", "tenant-b", "198.18.3.10")
    assert (a1, a2, b1, b2) == ("198.18.3.10", "198.18.3.11", "198.18.3.11", "198.18.3.10")
    assert ping(lab, "a1", a2)
    assert ping(lab, "b2", b1)

    # Same address, same derived MAC (0a:58:<ip>) in both networks: tell them apart by who
    # receives the echo requests. a1 pings .11: a2 (its own network) sees them, b1 never does.
    def echo_requests_seen(listener: str, sender: str, address: str) -> int:
        capture = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.container_netns(listener),
                "timeout",
                "8",
                "tcpdump",
                "-i",
                "eth0",
                "-nn",
                "-l",
                "icmp[icmptype] == icmp-echo",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            time.sleep(1.5)  # tcpdump is listening
            assert ping(lab, sender, address, count=5)
            out, _ = capture.communicate(timeout=20)
        finally:
            if capture.poll() is None:
                capture.kill()
                capture.wait()
        return sum(1 for line in out.splitlines() if "echo request" in line)

    assert echo_requests_seen("a2", "a1", "198.18.3.11") >= 5
    assert echo_requests_seen("b1", "a1", "198.18.3.11") == 0
    assert echo_requests_seen("b2", "b1", "198.18.3.10") >= 5
    assert echo_requests_seen("a1", "b1", "198.18.3.10") == 0

    # kubectl voile trace follows the packet through both hosts' real datapaths.
    same = kubectl_voile(lab, "trace", "default/a1", "default/a2")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "[source] node host-1" in same.stdout and "[destination] node host-2" in same.stdout
    assert "=> tunnel" in same.stdout and "verdict: delivered" in same.stdout
    # Across the two networks, the same addresses: the trace shows where it is dropped.
    other = kubectl_voile(lab, "trace", "default/a1", "default/b2")
    assert other.returncode == 1, other.stdout + other.stderr
    assert "verdict: Dropped" in other.stdout and "dropped by " in other.stdout
    if lab.datapath == "ovs":
        assert "dropped by table=" in other.stdout
    status = kubectl_voile(lab, "status")
    assert status.returncode == 0, status.stdout
    assert "tenant-a" in status.stdout and "default/b2" in status.stdout
    for name in ("a1", "a2", "b1", "b2"):
        lab.detach(name)


def test_deleting_an_endpoint_cleans_its_host(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", str(EXAMPLES / "01-basic-network" / "network.yaml"))
    lab.attach("host-3", "gone", "blue")
    host = lab.host(3)
    uid = kubectl(lab, "get", "vep", "gone", "-o", "jsonpath={.metadata.uid}").stdout
    assert uid
    if lab.datapath == "ovs":
        ports = host.vsctl(
            "--columns=name,external_ids",
            "find",
            "Interface",
            f'external_ids:voile.dev/endpoint-uid="{uid}"',
        )
        assert "name" in ports
        port = re.search(r'name\s*:\s*"?([\w.-]+)"?', ports)
    else:  # the veth tagged with the endpoint's uid, running from_ep
        port = re.search(rf"^\d+: ([\w.-]+)@.*\n(?:\s+.*\n)*?\s+alias voile:{uid}$",
                         host.exec("ip", "-d", "link", "show").stdout, re.M)  # fmt: skip
    assert port is not None
    if lab.datapath == "ebpf":
        assert (
            "from_ep" in host.exec("tc", "filter", "show", "dev", port.group(1), "ingress").stdout
        )
    lab.detach("gone")
    if lab.datapath == "ovs":
        assert (
            host.vsctl(
                "--columns=name",
                "find",
                "Interface",
                f'external_ids:voile.dev/endpoint-uid="{uid}"',
            ).strip()
            == ""
        )
    links = host.exec("ip", "-o", "link", "show").stdout
    assert port.group(1) not in links
    assert f"voile:{uid}" not in host.exec("ip", "-d", "link", "show").stdout


def test_restarting_agent_and_operator_under_ping_loses_nothing(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", str(EXAMPLES / "01-basic-network" / "network.yaml"))
    src = lab.attach("host-1", "p1", "blue")
    dst = lab.attach("host-2", "p2", "blue")
    assert src and ping(lab, "p1", dst)
    count = 800  # 8 s at 100 packets per second
    pinger = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.container_netns("p1"),
            "ping",
            "-i",
            "0.01",
            "-c",
            str(count),
            "-W",
            "1",
            dst,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1)
        lab.restart("agent/host-1", sig=signal.SIGKILL)
        lab.restart("agent/host-2", sig=signal.SIGKILL)
        time.sleep(1)
        lab.restart("operator", sig=signal.SIGKILL)
        out, _ = pinger.communicate(timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    assert int(match.group(1)) == count
    assert int(match.group(2)) == count, out.splitlines()[-2:]
    wait_ready(lab, "default", "p1")
    lab.detach("p1")
    lab.detach("p2")


def test_removing_a_host_and_adding_it_back(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", str(EXAMPLES / "01-basic-network" / "network.yaml"))
    lab.attach("host-1", "r1", "blue")
    r3 = lab.attach("host-3", "r3", "blue")
    assert ping(lab, "r1", r3)
    lab.remove_host("host-3")
    assert not ping(lab, "r1", r3, count=1)
    lab.up(hosts=3)
    wait_ready(lab, "default", "r3", timeout=90)
    deadline = time.monotonic() + 30
    while not ping(lab, "r1", r3, count=1) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ping(lab, "r1", r3)
    lab.detach("r1")
    lab.detach("r3")
