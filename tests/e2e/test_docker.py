"""Docker hosts on Voile networks, driven through the docker CLI (`voile lab docker HOST -- ...`).

Real: etcd + kube-apiserver, the operator, one Open vSwitch pair and one voile-agent per simulated
host, and per host a private dockerd (Debian's docker.io 20.10, its own mount namespace, data and
exec roots) calling the agent's libnetwork driver and IPAM 'voile', busybox in the containers;
for the three-way test also podman on host-2 through the CNI plugin (`voile lab podman`).
The lab has its own run id, directory and underlay octet (12); one lab for the module, and
`lab down` must leave no daemon, shim, cgroup, namespace or file behind.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import venv_bin
from tests.e2e.labtools import kubectl
from voile.api import constants as c
from voile.lab import docker as lab_docker
from voile.lab.host import run_id
from voile.lab.lab import Lab

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(lab_docker.DOCKERD).exists(),
    reason="needs root and Debian's docker.io",
)

IMAGE = lab_docker.IMAGE
HOSTS = ("host-1", "host-2", "host-3")
CIDR = "198.19.12.0/24"
SAME_CIDR = "198.19.13.0/24"
CREATE = ("network", "create", "-d", "voile", "--ipam-driver", "voile")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("dk-lab"), run_id=f"dk{run_id()[:4]}", underlay_octet=12)
    cgroups: list[str] = []
    try:
        lab.up(hosts=3, datapath="ovs")
        net(lab, "dblue", CIDR)
        for host in HOSTS:
            cgroups.append(lab.docker_of(host).cgroup_parent)
            docker(lab, host, *CREATE, "--ipam-opt", "voile.dev/network=dblue", "dblue")
        yield lab
    finally:
        lab.down()
        assert not lab.directory.exists()
        assert [p for p in Path("/run/netns").glob(f"voile-{lab.run_id}*")] == []
        mine = [p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, str(lab.directory))]
        assert mine == [], "processes of the lab left running"
        assert [g for g in cgroups if list(Path("/sys/fs/cgroup").glob(f"*/{g}"))] == []
        with open("/proc/self/mountinfo") as info:
            assert str(lab.directory) not in info.read()


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


# -- helpers -----------------------------------------------------------------------------------


def net(lab: Lab, name: str, cidr: str, **spec: str) -> None:
    extra = "".join(f", {k}: {v}" for k, v in spec.items())
    kubectl(
        lab,
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: voile.dev/v1alpha1\nkind: OverlayNetwork\n"
            f"metadata: {{name: {name}}}\nspec: {{cidr: {cidr}{extra}}}\n"
        ),
    )


def docker(
    lab: Lab, host: str, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return lab.docker_of(host).cli(*args, check=check, timeout=timeout)


def run(lab: Lab, host: str, name: str, network: str = "dblue", *extra: str) -> dict[str, str]:
    """`docker run -d` of a sleeping busybox; the container's address and MAC."""
    # --stop-timeout: sleep as PID 1 ignores SIGTERM; a daemon stopping waits 1 s, not 10.
    docker(lab, host, "run", "-d", "--name", name, "--network", network, "--stop-timeout", "1",
           *extra, IMAGE, "sleep", "3600")  # fmt: skip
    fmt = "{{json .NetworkSettings.Networks}}"
    nets = json.loads(docker(lab, host, "inspect", "--format", fmt, name).stdout)
    info = nets[network]
    return {"ip": info["IPAddress"], "mac": info["MacAddress"], "host": host, "name": name}


def ping(lab: Lab, ct: dict[str, str], address: str, count: int = 3) -> str:
    """Ping from a container; the summary line (ping's exit status ignored)."""
    out = docker(lab, ct["host"], "exec", ct["name"], "ping", "-c", str(count), "-W", "2",
                 address, check=False).stdout  # fmt: skip
    return next((line for line in out.splitlines() if "packets transmitted" in line), out)


def lost_nothing(summary: str) -> bool:
    return " 0% packet loss" in summary


def endpoints(lab: Lab, host: str | None = None) -> list[dict[str, Any]]:
    """The docker-owned Endpoints (of one host)."""
    items = json.loads(
        kubectl(lab, "get", "vep", "-A", "-l", f"{c.LABEL_OWNER_KIND}=docker", "-o", "json")
    )["items"]
    return [e for e in items if host is None or e["spec"]["node"] == host]


def claims(lab: Lab, network: str) -> list[str]:
    items = json.loads(kubectl(lab, "get", "ipclaims", "-o", "json"))["items"]
    return sorted(i["spec"]["ip"] for i in items if i["spec"]["network"] == network)


def host_links(lab: Lab, host: str) -> list[str]:
    """The host's Voile veth ends (vo/vh) and any docker_gwbridge, in its namespace."""
    out = lab.host(int(host.split("-")[1])).exec("ip", "-o", "link", "show").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return sorted(n for n in names if re.fullmatch(r"v[oh][0-9a-f]{11}|docker_gwbridge", n))


def ovs_ports(lab: Lab, host: str) -> list[str]:
    ports = lab.host(int(host.split("-")[1])).vsctl("list-ports", "br-voile").split()
    return sorted(p for p in ports if p.startswith("vo"))


def snapshot(lab: Lab, host: str) -> dict[str, Any]:
    """Everything a container of HOST leaves in Voile: Endpoints, claims, ports, links."""
    return {
        "endpoints": sorted(e["metadata"]["name"] for e in endpoints(lab, host)),
        "claims": claims(lab, "dblue"),
        "ports": ovs_ports(lab, host),
        "links": host_links(lab, host),
    }


def settled(lab: Lab, host: str, expected: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Wait until HOST shows ``expected`` again (deletion finishes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(lab, host)
        if now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.3)


# -- connectivity ------------------------------------------------------------------------------


def test_containers_on_two_hosts_ping_from_the_first_packet_and_carry_tcp(lab: Lab) -> None:
    before = snapshot(lab, "host-1")
    server = run(lab, "host-2", "srv")
    assert re.fullmatch(r"198\.19\.12\.\d+", server["ip"])
    assert server["mac"] == "0a:58:" + ":".join(f"{int(b):02x}" for b in server["ip"].split("."))
    # A container's very first packets: docker run straight into ping, nothing lost.
    for _ in range(2):
        out = docker(lab, "host-1", "run", "--rm", "--network", "dblue", IMAGE,
                     "ping", "-c", "3", "-W", "2", server["ip"], check=False).stdout  # fmt: skip
        assert " 0% packet loss" in out, out
    client = run(lab, "host-1", "cli")
    assert lost_nothing(ping(lab, client, server["ip"]))
    assert lost_nothing(ping(lab, server, client["ip"]))
    # TCP: a megabyte of random bytes, many full-size segments through the tunnel, intact.
    docker(lab, "host-2", "exec", "-d", "srv", "nc", "-l", "-p", "5001", "-e", "sh", "-c",
           "cat > /tmp/got; md5sum < /tmp/got > /tmp/got.md5")  # fmt: skip
    time.sleep(0.5)
    sent = docker(lab, "host-1", "exec", "cli", "sh", "-c",
                  "head -c 1000000 /dev/urandom > /tmp/sent; md5sum < /tmp/sent; "
                  f"nc -w 5 {server['ip']} 5001 < /tmp/sent").stdout.split()[0]  # fmt: skip
    deadline = time.monotonic() + 10
    got = ""
    while not got and time.monotonic() < deadline:
        time.sleep(0.2)
        got = docker(lab, "host-2", "exec", "srv", "cat", "/tmp/got.md5", check=False).stdout
    assert got.split()[:1] == [sent]
    # MTU of the network, no docker_gwbridge (DisableGatewayService), eth0 named by Docker.
    link = docker(lab, "host-1", "exec", "cli", "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1450 " in link
    assert "docker_gwbridge" not in host_links(lab, "host-1")
    assert "default" not in docker(lab, "host-1", "exec", "cli", "ip", "route").stdout
    docker(lab, "host-1", "rm", "-f", "cli")
    docker(lab, "host-2", "rm", "-f", "srv")
    assert settled(lab, "host-1", before) == before


def test_docker_podman_and_a_lab_namespace_on_three_hosts(lab: Lab) -> None:
    """One OverlayNetwork, three kinds of workload on three hosts: a Docker container (host-1,
    this driver), a podman container (host-2, the CNI plugin) and a `voile lab attach`
    namespace (host-3); each pings the others."""
    if not Path("/usr/bin/podman").exists():
        pytest.skip("needs Debian's podman")
    ct = run(lab, "host-1", "tri")
    ns_ip = lab.attach("host-3", "dk-ns", "dblue")
    podman = lab.podman("host-2")  # `voile lab podman host-2 -- ...`: a conflist per network
    try:
        podman.run("run", "-d", "--name", "tri-pm", "--network", "dblue", IMAGE)
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        pm_ip = podman.run("inspect", "--format", fmt, "tri-pm").stdout.strip()
        assert lost_nothing(ping(lab, ct, pm_ip)), "docker -> podman"
        assert lost_nothing(ping(lab, ct, ns_ip)), "docker -> lab namespace"
        out = podman.run("exec", "tri-pm", "ping", "-c", "3", "-W", "2", ct["ip"], check=False)
        assert " 0% packet loss" in out.stdout, f"podman -> docker: {out.stdout}{out.stderr}"
        out = podman.run("exec", "tri-pm", "ping", "-c", "3", "-W", "2", ns_ip, check=False)
        assert " 0% packet loss" in out.stdout, f"podman -> lab namespace: {out.stdout}"
        for address in (ct["ip"], pm_ip):
            proc = subprocess.run(
                [venv_bin("voile"), "lab", "exec", "dk-ns", "--", "ping", "-c", "3", "-W", "2",
                 address],
                env={**os.environ, "VOILE_LAB_DIR": str(lab.directory)},
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert " 0% packet loss" in proc.stdout, proc.stdout + proc.stderr
    finally:
        podman.run("rm", "-f", "tri-pm", check=False)
        lab.detach("dk-ns")
        docker(lab, "host-1", "rm", "-f", "tri")


def test_same_cidr_networks_on_the_same_docker_hosts_stay_isolated(lab: Lab) -> None:
    net(lab, "dk-ta", SAME_CIDR)
    net(lab, "dk-tb", SAME_CIDR)
    for host in ("host-1", "host-2"):
        for name in ("dk-ta", "dk-tb"):
            # The network is named once, to the IPAM: the driver takes the pool it just gave.
            docker(lab, host, *CREATE, "--subnet", SAME_CIDR,
                   "--ipam-opt", f"voile.dev/network={name}", name)  # fmt: skip
    a1 = run(lab, "host-1", "ta1", "dk-ta", "--ip", "198.19.13.10")
    a2 = run(lab, "host-2", "ta2", "dk-ta", "--ip", "198.19.13.11")
    b1 = run(lab, "host-1", "tb1", "dk-tb", "--ip", "198.19.13.11")
    b2 = run(lab, "host-2", "tb2", "dk-tb", "--ip", "198.19.13.10")
    b3 = run(lab, "host-2", "tb3", "dk-tb", "--ip", "198.19.13.12")
    try:
        assert lost_nothing(ping(lab, a1, "198.19.13.11"))  # a2
        assert lost_nothing(ping(lab, b1, "198.19.13.10"))  # b2
        assert lost_nothing(ping(lab, b2, "198.19.13.12"))  # b3
        # .12 exists only in dk-tb: from dk-ta it is nobody, on either host.
        assert " 100% packet loss" in ping(lab, a1, b3["ip"], count=2)
        assert " 100% packet loss" in ping(lab, a2, b3["ip"], count=2)
        # The same address on both networks is two machines: each answers its own network.
        for ct, text in ((a2, "ta2"), (b1, "tb1")):
            docker(lab, ct["host"], "exec", "-d", ct["name"], "nc", "-l", "-p", "5002",
                   "-e", "echo", text)  # fmt: skip
        time.sleep(0.5)
        for ct, text in ((a1, "ta2"), (b2, "tb1")):
            out = docker(lab, ct["host"], "exec", ct["name"], "sh", "-c",
                         "echo | nc -w 3 198.19.13.11 5002").stdout  # fmt: skip
            assert out.strip() == text, (ct["name"], out)
        ta = json.loads(docker(lab, "host-2", "network", "inspect", "dk-ta").stdout)[0]
        assert ta["IPAM"]["Config"] == [{"Subnet": SAME_CIDR}]
    finally:
        for ct in (a1, a2, b1, b2, b3):
            docker(lab, ct["host"], "rm", "-f", ct["name"])
        for host in ("host-1", "host-2"):
            docker(lab, host, "network", "rm", "dk-ta", "dk-tb")
        kubectl(lab, "delete", "onet", "dk-ta", "dk-tb", "--wait=true", "--timeout=60s")


# -- nothing left behind -----------------------------------------------------------------------


def test_rm_kill_disconnect_and_network_rm_leave_nothing(lab: Lab) -> None:
    host = "host-1"
    before = snapshot(lab, host)
    for how in ("rm -f", "kill", "disconnect"):
        ct = run(lab, host, f"gone-{how.split()[0]}")
        during = snapshot(lab, host)
        assert len(during["endpoints"]) == len(before["endpoints"]) + 1
        assert ct["ip"] in during["claims"] and len(during["ports"]) == len(before["ports"]) + 1
        if how == "rm -f":
            docker(lab, host, "rm", "-f", ct["name"])
        elif how == "kill":
            docker(lab, host, "kill", ct["name"])
        else:
            docker(lab, host, "network", "disconnect", "dblue", ct["name"])
            assert "eth0" not in docker(lab, host, "exec", ct["name"], "ip", "link").stdout
        assert settled(lab, host, before) == before, how
        docker(lab, host, "rm", "-f", ct["name"], check=False)
    # A network removed: its driver entry goes, the OverlayNetwork stays.
    state = lab.host(1).state_dir / "docker-networks.json"
    docker(lab, host, *CREATE, "--ipam-opt", "voile.dev/network=dblue", "dblue-2")
    assert len(json.loads(state.read_text())["networks"]) == 2
    docker(lab, host, "network", "rm", "dblue-2")
    assert len(json.loads(state.read_text())["networks"]) == 1
    assert snapshot(lab, host) == before


def test_fifty_containers_run_and_removed_leave_nothing(lab: Lab) -> None:
    host = "host-2"
    before = snapshot(lab, host)
    names = [f"many-{i}" for i in range(50)]
    started = time.monotonic()

    def start(name: str) -> str:
        return docker(lab, host, "run", "-d", "--name", name, "--network", "dblue", IMAGE,
                      "sleep", "600", timeout=180).stdout.strip()  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(start, names))
    assert len(ids) == 50
    during = snapshot(lab, host)
    assert len(during["endpoints"]) == len(before["endpoints"]) + 50
    assert len(during["claims"]) == len(before["claims"]) + 50
    assert len(during["ports"]) == len(before["ports"]) + 50
    docker(lab, host, "rm", "-f", *names, timeout=300)
    assert settled(lab, host, before, timeout=60) == before
    assert time.monotonic() - started < 240


# -- restarts ----------------------------------------------------------------------------------


def test_agent_killed_and_restarted_running_containers_lose_nothing(lab: Lab) -> None:
    before = {host: snapshot(lab, host) for host in ("host-1", "host-2")}
    src = run(lab, "host-1", "ag-src")
    dst = run(lab, "host-2", "ag-dst")
    assert lost_nothing(ping(lab, src, dst["ip"]))
    count = 800  # 8 s at 100 packets per second
    pinger = subprocess.Popen(
        [lab_docker.DOCKER_CLI, "exec", "ag-src", "ping", "-i", "0.01", "-c", str(count),
         "-W", "1", dst["ip"]],
        env=lab.docker_of("host-1").env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        lab.restart("agent/host-1", sig=signal.SIGKILL)
        lab.restart("agent/host-2", sig=signal.SIGKILL)
        out, _ = pinger.communicate(timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert f"{count} packets transmitted, {count} packets received" in out, out[-300:]
    # Docker keeps working with the network: a new container, and the old ones go cleanly.
    new = run(lab, "host-1", "ag-new")
    assert lost_nothing(ping(lab, new, dst["ip"]))
    for ct in (src, dst, new):
        docker(lab, ct["host"], "rm", "-f", ct["name"])
    for host, then in before.items():
        assert settled(lab, host, then) == then


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_dockerd_restarted_networks_usable_nothing_leaked(lab: Lab, sig: int) -> None:
    host = "host-3"
    before = snapshot(lab, host)
    ct = run(lab, host, f"dr-{sig}")
    daemon = lab.docker_of(host)
    pid = daemon.pid()
    assert pid is not None
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while daemon.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.pid() is None
    # The container stopped (SIGTERM) or was left to the restarted daemon to clean (SIGKILL);
    # either way Docker released its endpoint through the driver once it was back.
    lab.docker_of(host)
    assert settled(lab, host, before) == before
    assert docker(lab, host, "inspect", "-f", "{{.State.Running}}", ct["name"]).stdout.strip() == (
        "false"
    )
    again = run(lab, host, f"dr2-{sig}")
    assert lost_nothing(ping(lab, again, lab.attach("host-1", f"dr-ns-{sig}", "dblue")))
    lab.detach(f"dr-ns-{sig}")
    docker(lab, host, "rm", "-f", ct["name"], again["name"])
    assert settled(lab, host, before) == before


# -- errors through the docker CLI -------------------------------------------------------------


def voile_docker(lab: Lab, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The user's door: `voile lab docker HOST -- ARGS`."""
    return subprocess.run(
        [venv_bin("voile"), "lab", "docker", host, "--", *args],
        env={**os.environ, "VOILE_LAB_DIR": str(lab.directory)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


ERRORS = [
    (
        (*CREATE, "--ipam-opt", "voile.dev/network=dk-nope", "e1"),
        "remote: OverlayNetwork 'dk-nope' does not exist",
    ),
    (
        (*CREATE, "--subnet", "198.19.99.0/24", "--ipam-opt", "voile.dev/network=dblue", "e2"),
        "remote: --subnet 198.19.99.0/24 disagrees with OverlayNetwork 'dblue', whose CIDR is "
        "198.19.12.0/24",
    ),
    (
        ("network", "create", "-d", "voile", "--subnet", CIDR, "e3"),
        "create the network with --ipam-driver voile",
    ),
    (
        (*CREATE, "-o", "voile.dev/network=dblue", "e4"),
        "name the OverlayNetwork with --ipam-opt voile.dev/network=NAME",
    ),
    (
        (*CREATE, "--ipam-opt", "voile.dev/network=dblue", "-o", "mtu=9000", "e5"),
        "unknown option -o mtu",
    ),
    (
        (*CREATE, "--subnet", CIDR, "--aux-address", "a=198.19.12.200", "e6"),
        "--aux-address is not supported",
    ),
    (
        (*CREATE, "--subnet", CIDR, "--gateway", "198.19.12.1", "e7"),
        "OverlayNetwork 'dblue' has no gateway",
    ),
]


def test_each_error_case_through_the_docker_cli_gives_its_message(lab: Lab) -> None:
    host = "host-3"
    before = snapshot(lab, host)
    for args, message in ERRORS:
        proc = voile_docker(lab, host, *args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
    listed = docker(lab, host, "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert not {"e1", "e2", "e3", "e4", "e5", "e6", "e7"} & set(listed)
    # Addresses: outside the network (dockerd refuses it itself), taken by another host's
    # container, the network's own address; and a MAC that another container has.
    docker(lab, host, *CREATE, "--subnet", CIDR, "dk-sub")  # CIDR unique: no name needed
    holder = run(lab, "host-1", "holder", "dblue", "--mac-address", "02:00:00:00:12:01")
    cases = [
        (("--ip", "198.19.99.5"), "198.19.99.5: It does not belong to any of this network"),
        (("--ip", holder["ip"]), f"spec.ip {holder['ip']} is held by endpoint"),
        (("--ip", "198.19.12.0"), "is the network, broadcast or gateway address"),
        (("--mac-address", "02:00:00:00:12:01"), "--mac-address 02:00:00:00:12:01 is already used"),
    ]
    for extra, message in cases:
        proc = voile_docker(lab, host, "run", "--rm", "--network", "dk-sub", *extra, IMAGE, "true")
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr)
    # --ip and --mac-address themselves become static requests.
    static = run(lab, host, "static", "dk-sub", "--ip", "198.19.12.77",
                 "--mac-address", "02:00:00:00:12:77")  # fmt: skip
    assert (static["ip"], static["mac"]) == ("198.19.12.77", "02:00:00:00:12:77")
    ep = next(e for e in endpoints(lab, host) if e["status"].get("ip") == "198.19.12.77")
    assert (ep["spec"]["ip"], ep["spec"]["mac"]) == ("198.19.12.77", "02:00:00:00:12:77")
    assert ep["metadata"]["annotations"][c.ANNOTATION_DOCKER_ENDPOINT]
    assert lost_nothing(ping(lab, static, holder["ip"]))
    docker(lab, host, "rm", "-f", "static")
    docker(lab, "host-1", "rm", "-f", "holder")
    docker(lab, host, "network", "rm", "dk-sub")
    assert settled(lab, host, before) == before
