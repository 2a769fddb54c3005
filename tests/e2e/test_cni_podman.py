"""podman across lab hosts, through Voile's CNI plugin, driven as a user drives it
(`voile lab podman HOST -- ...` is ``Lab.podman(host)``).

Real: etcd + kube-apiserver, the operator, one Open vSwitch pair and one voile-agent per simulated
host, Debian's podman 4.3 (CNI backend, runc) per host with its own storage, the static plugin,
busybox inside the containers. The lab here has its own run id, directory and underlay octet
(11), so a user's lab or another session's is not touched; one lab for the whole module, removed
by `lab down`, which must leave no container, mount, namespace or file behind.
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

from tests.cni import invoke
from tests.conftest import venv_bin
from tests.e2e.labtools import api, kubectl
from voile import kube
from voile.api import constants as c
from voile.api import naming
from voile.api.model import parse_endpoint
from voile.lab import cni
from voile.lab import podman as lab_podman
from voile.lab.host import SimulatedHost, run_id
from voile.lab.lab import Lab

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/podman").exists(),
    reason="needs root and Debian's podman",
)

IMAGE = lab_podman.IMAGE
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MULTUS_CRD = Path(__file__).with_name("multus-crd.yaml")
PORT_NAME = re.compile(r"^vo[0-9a-f]{11}$")
HOSTS = ("host-1", "host-2", "host-3")
SANDBOXES: set[str] = set()  # every container netns seen: none may outlive `lab down`
RUNTIMES: dict[str, lab_podman.Podman] = {}  # each host's podman, conflists current


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("cni-lab"), run_id=f"cni{run_id()[:3]}", underlay_octet=11)
    try:
        lab.up(hosts=3, datapath="ovs")
        yield lab
    finally:
        containers = set()
        for runtime in RUNTIMES.values():
            containers |= set(runtime.containers())  # left running: `down` must remove them
        RUNTIMES.clear()
        lab.down()
        assert not lab.directory.exists()
        assert [p for p in Path("/run/netns").glob(f"voile-{lab.run_id}*")] == []
        assert [s for s in SANDBOXES if Path(s).exists()] == [], "netns of containers left"
        assert [p for c_id in containers for p in lab_podman.CNI_RESULTS.glob(f"*-{c_id}-*")] == []
        assert list(lab_podman.SHORT_ROOT.glob(f"{lab.run_id}-*")) == []
        with open("/proc/self/mountinfo") as info:
            mounts = info.read()
        assert str(lab.directory) not in mounts
        assert f"{lab_podman.SHORT_ROOT}/{lab.run_id}-" not in mounts


# -- helpers -----------------------------------------------------------------------------------


def network(lab: Lab, name: str, cidr: str) -> str:
    kubectl(
        lab,
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: voile.dev/v1alpha1\nkind: OverlayNetwork\n"
            f"metadata: {{name: {name}}}\nspec: {{cidr: {cidr}}}\n"
        ),
    )
    for host in HOSTS:  # what `voile lab podman` does on each call: a conflist per network
        RUNTIMES[host] = lab.podman(host)
    return name


def podman(lab: Lab, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    runtime = RUNTIMES.get(host) or RUNTIMES.setdefault(host, lab.podman(host))
    return runtime.run(*args, check=check)


def run(lab: Lab, host: str, name: str, net: str, *extra: str) -> dict[str, str]:
    """`podman run -d` on HOST; the container's id, address, MAC and sandbox."""
    podman(lab, host, "run", "-d", "--name", name, "--network", net, *extra, IMAGE)
    fmt = (
        "{{.Id}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{.MacAddress}}{{end}} "
        "{{.NetworkSettings.SandboxKey}}"
    )
    cid, ip, mac, sandbox = podman(lab, host, "inspect", "--format", fmt, name).stdout.split()
    SANDBOXES.add(sandbox)
    return {"id": cid, "ip": ip, "mac": mac, "sandbox": sandbox, "host": host, "name": name}


def exec_in(lab: Lab, ct: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    return podman(lab, ct["host"], "exec", ct["name"], *cmd, check=False)


def cni_endpoints(lab: Lab) -> list[dict[str, Any]]:
    async def go(client: kube.KubeClient) -> list[dict[str, Any]]:
        items, _ = await client.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS), label_selector=f"{c.LABEL_OWNER_KIND}=cni"
        )
        return items

    result: list[dict[str, Any]] = api(lab, go)
    return result


def endpoint_of(lab: Lab, container_id: str) -> dict[str, Any] | None:
    for ep in cni_endpoints(lab):
        if ep["metadata"]["annotations"].get(c.ANNOTATION_OWNER_ID) == container_id:
            return ep
    return None


def claims(lab: Lab, net: str) -> list[str]:
    async def go(client: kube.KubeClient) -> list[str]:
        items, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS))
        return [i["metadata"]["name"] for i in items if i["spec"].get("network") == net]

    result: list[str] = api(lab, go)
    return result


def ports_and_veths(host: SimulatedHost) -> set[str]:
    """Endpoint ports on the host's br-voile, and agent veths in its namespace."""
    ports = set(host.vsctl("list-ports", "br-voile").split())
    links = {
        line.split(":")[1].strip().split("@")[0]
        for line in host.exec("ip", "-o", "link", "show").stdout.splitlines()
    }
    return {name for name in ports | links if PORT_NAME.match(name)}


def wait_until(what: str, check: Any, timeout: float = 30.0, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def leaves_nothing(lab: Lab, ct: dict[str, str], net: str, port: str, *, within: float) -> None:
    """No Endpoint, port, veth or address claim of the container within ``within`` seconds."""
    host = lab.host(int(ct["host"][-1]))
    wait_until(
        f"{ct['name']} leaves nothing",
        lambda: (
            endpoint_of(lab, ct["id"]) is None
            and port not in ports_and_veths(host)
            and f"{net}-{ct['ip'].replace('.', '-')}" not in claims(lab, net)
        ),
        timeout=within,
    )


def port_of(lab: Lab, ct: dict[str, str]) -> str:
    ep = endpoint_of(lab, ct["id"])
    assert ep is not None, ct
    port, _, _ = naming.interfaces(parse_endpoint(ep))
    return port


# -- tests -------------------------------------------------------------------------------------


def test_containers_on_two_hosts_ping_from_the_first_packet_and_carry_tcp(lab: Lab) -> None:
    net = network(lab, "cni-blue", "198.18.50.0/24")
    web = run(lab, "host-1", "web", net)
    db = run(lab, "host-2", "db", net)
    assert web["ip"].startswith("198.18.50.") and db["ip"].startswith("198.18.50.")
    for src, dst in ((web, db), (db, web)):
        proc = exec_in(lab, src, "ping", "-c", "3", "-W", "2", dst["ip"])
        assert " 0% packet loss" in proc.stdout, proc.stdout + proc.stderr
    server = subprocess.Popen(
        RUNTIMES["host-2"].argv("exec", "db", "nc", "-l", "-p", "5001"),
        env=RUNTIMES["host-2"].env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        payload = "voile-over-tcp-" + run_id()
        wait_until(
            "the TCP message arrives",
            lambda: (
                exec_in(
                    lab, web, "sh", "-c", f"echo {payload} | nc -w 2 {db['ip']} 5001"
                ).returncode
                == 0
            ),
            timeout=20,
            interval=0.5,
        )
        out, _ = server.communicate(timeout=20)
        assert payload in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)


def test_voile_lab_cli(lab: Lab) -> None:
    """`voile lab podman|cni-conf|cni-path` as a user types them."""
    env = {**os.environ, "VOILE_LAB_DIR": str(lab.directory)}

    def voile(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_bin("voile"), "lab", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    net = network(lab, "cni-cli", "198.18.57.0/24")
    ran = voile("podman", "host-3", "--", "run", "-d", "--name", "cli", "--network", net, IMAGE)
    assert ran.returncode == 0, ran.stderr
    listed = voile("podman", "host-3", "--", "ps", "--format", "{{.Names}} {{.Networks}}")
    assert "cli " + net in listed.stdout, listed.stdout + listed.stderr
    conf = json.loads(voile("cni-conf", "host-3", net).stdout)
    assert conf["name"] == net and conf["cniVersion"] == "1.0.0"
    (plugin,) = conf["plugins"]
    assert plugin["type"] == "voile" and plugin["socket"] == str(lab.host(3).attach_socket)
    path = Path(voile("cni-path").stdout.strip())
    assert (path / "voile").is_file()
    assert voile("podman", "host-3", "--", "rm", "-f", "-t", "0", "cli").returncode == 0
    assert voile("podman", "host-9", "--", "ps").returncode != 0  # no such host: a clear error


def test_podman_container_and_lab_namespace_on_a_third_host(lab: Lab) -> None:
    net = network(lab, "cni-mixed", "198.18.51.0/24")
    ct = run(lab, "host-1", "mixed", net)
    probe = lab.attach("host-3", "probe", net)
    assert " 0% packet loss" in exec_in(lab, ct, "ping", "-c", "2", "-W", "2", probe).stdout
    probe_ns = lab.container_netns("probe")
    proc = subprocess.run(
        ["ip", "netns", "exec", probe_ns, "ping", "-c", "2", "-W", "2", ct["ip"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    lab.detach("probe")


def test_two_networks_with_the_same_cidr_stay_isolated(lab: Lab) -> None:
    """tenant-a and tenant-b share a CIDR and addresses; each container reaches only its own
    network's owner of an address (told apart by MAC, given with podman --mac-address)."""
    a, b = network(lab, "cni-ta", "198.18.52.0/24"), network(lab, "cni-tb", "198.18.52.0/24")
    a1 = run(lab, "host-1", "a1", a, "--mac-address", "02:0a:00:00:00:01")
    a2 = run(lab, "host-2", "a2", a, "--mac-address", "02:0a:00:00:00:02")
    b1 = run(lab, "host-3", "b1", b, "--mac-address", "02:0b:00:00:00:01")
    b2 = run(lab, "host-1", "b2", b, "--mac-address", "02:0b:00:00:00:02")
    b3 = run(lab, "host-2", "b3", b, "--mac-address", "02:0b:00:00:00:03")
    assert (a1["ip"], b1["ip"]) == ("198.18.52.1", "198.18.52.1")
    assert a2["ip"] == b2["ip"] == "198.18.52.2" and b3["ip"] == "198.18.52.3"
    assert a2["mac"] == "02:0a:00:00:00:02"
    for src, dst in ((a1, a2), (b1, b2)):
        assert exec_in(lab, src, "ping", "-c", "2", "-W", "2", dst["ip"]).returncode == 0
        neigh = exec_in(lab, src, "ip", "neigh", "show", dst["ip"]).stdout
        assert dst["mac"] in neigh, (src["name"], neigh)
    assert exec_in(lab, a1, "ping", "-c", "2", "-W", "1", b3["ip"]).returncode != 0
    for ct in (a1, a2, b1, b2, b3):
        podman(lab, ct["host"], "rm", "-f", "-t", "0", ct["name"])


@pytest.mark.parametrize("how", ["stop", "kill", "rm"])
def test_stop_kill_and_rm_leave_nothing(lab: Lab, how: str) -> None:
    net = network(lab, "cni-life", "198.18.53.0/24")
    ct = run(lab, "host-2", f"life-{how}", net)
    port = port_of(lab, ct)
    assert port in ports_and_veths(lab.host(2))
    args = {"stop": ["stop", "-t", "2"], "kill": ["kill"], "rm": ["rm", "-f", "-t", "0"]}[how]
    started = time.monotonic()
    podman(lab, "host-2", *args, ct["name"])
    leaves_nothing(lab, ct, net, port, within=10)
    print(f"{how}: nothing left after {time.monotonic() - started:.1f}s")
    podman(lab, "host-2", "rm", "-f", "-t", "0", ct["name"], check=False)


def test_fifty_containers_started_and_removed_leave_nothing(lab: Lab) -> None:
    """50 containers (`podman run --rm`, 5 at a time over the 3 hosts: each one ADD, its
    command, DEL) on a /27 with 30 addresses: 50 attachments only fit if every address comes
    back; then no claim, Endpoint, port or veth is left."""
    net = network(lab, "cni-loop", "198.18.54.0/27")
    deadline = time.monotonic() + 600

    def one(i: int) -> str:
        assert time.monotonic() < deadline, "the loop is over its time bound"
        out = podman(
            lab, HOSTS[i % 3], "run", "--rm", "--network", net, IMAGE, "ip", "-4", "-o", "addr"
        ).stdout
        (address,) = re.findall(r"inet (198\.18\.54\.\d+)/27", out)
        return str(address)

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        addresses = list(pool.map(one, range(50)))
    assert len(addresses) == 50 and len(set(addresses)) <= 30
    wait_until(
        "every address free, no Endpoint, port or veth",
        lambda: (
            claims(lab, net) == []
            and [e for e in cni_endpoints(lab) if e["spec"]["network"] == net] == []
            and all(not ports_and_veths(lab.host(i)) - _busy(lab, i) for i in (1, 2, 3))
        ),
        timeout=30,
    )


def _busy(lab: Lab, index: int) -> set[str]:
    """Ports of Endpoints that other tests of the module still hold on host-<index>."""
    ports = set()
    for ep in cni_endpoints(lab):
        if ep["spec"]["node"] == f"host-{index}":
            ports.add(naming.interfaces(parse_endpoint(ep))[0])
    return ports


def test_agent_killed_while_add_is_in_flight_leaks_nothing(lab: Lab) -> None:
    """The operator is paused so that the ADD is still waiting when the agent is killed; podman
    fails the run (code 11) and tears down; once the agent is back nothing is left."""
    net = network(lab, "cni-crash", "198.18.55.0/24")
    state = lab._state()
    # The operator runs under the lab's supervisor, in the process group the lab started.
    operator = int(state["pids"]["operator"])
    runtime = RUNTIMES["host-3"]
    os.killpg(operator, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(
            runtime.argv("run", "-d", "--name", "inflight", "--network", net, IMAGE),
            env=runtime.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ep = wait_until(
            "the ADD created its Endpoint",
            lambda: [e for e in cni_endpoints(lab) if e["spec"]["network"] == net],
            timeout=30,
            interval=0.05,
        )[0]
        lab.stop_process("agent/host-3", sig=signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert '"voile" failed' in err or "voile" in err, err
    finally:
        os.killpg(operator, signal.SIGCONT)
    lab.restart("agent/host-3")
    owner = ep["metadata"]["annotations"][c.ANNOTATION_OWNER_ID]
    wait_until(
        "nothing left of the interrupted ADD",
        lambda: (
            endpoint_of(lab, owner) is None
            and claims(lab, net) == []
            and not ports_and_veths(lab.host(3)) - _busy(lab, 3)
        ),
        timeout=60,
    )
    podman(lab, "host-3", "rm", "-f", "-t", "0", "inflight", check=False)


def test_agent_down_during_del_leaks_nothing(lab: Lab) -> None:
    net = network(lab, "cni-down", "198.18.56.0/24")
    ct = run(lab, "host-2", "orphan", net)
    port = port_of(lab, ct)
    lab.stop_process("agent/host-2", sig=signal.SIGKILL)
    try:
        podman(lab, "host-2", "rm", "-f", "-t", "0", "orphan")  # DEL is best effort: exit 0
        record = lab.host(2).cni_spool_dir / f"{ct['id']}-eth0.json"
        assert record.exists()
        assert endpoint_of(lab, ct["id"]) is not None
    finally:
        lab.restart("agent/host-2")
    leaves_nothing(lab, ct, net, port, within=60)
    assert not record.exists()


def test_multus_nad_through_the_plugin(lab: Lab) -> None:
    """examples/05-multus: the NetworkAttachmentDefinition's configuration, read back from the
    API server, run through the real plugin as Multus delegates to it (the pod annotation's ips
    and mac in runtimeConfig for the declared capabilities, the pod in CNI_ARGS, the interface
    it names); a podman container on another host reaches the pod's net1."""
    kubectl(lab, "apply", "-f", str(MULTUS_CRD))
    crd = "crd/network-attachment-definitions.k8s.cni.cncf.io"
    kubectl(lab, "wait", "--for=condition=Established", "--timeout=60s", crd)
    kubectl(lab, "apply", "-f", str(EXAMPLES / "05-multus"))
    nad = json.loads(
        kubectl(lab, "get", "net-attach-def", "-n", "default", "voile-storage", "-o", "json")
    )
    conf = json.loads(nad["spec"]["config"])
    pod = json.loads(kubectl(lab, "get", "pod", "-n", "default", "app", "-o", "json"))
    (selection,) = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert selection["name"] == nad["metadata"]["name"] == conf["name"]

    host = lab.host(1)
    # The lab's per-host socket and spool; on a node the plugin's defaults are the agent's.
    delegate = {**conf, "socket": str(host.attach_socket), "spoolDir": str(host.cni_spool_dir)}
    delegate["runtimeConfig"] = {
        cap: selection[cap] for cap, on in conf["capabilities"].items() if on and cap in selection
    }
    sandbox = "".join(f"{b:02x}" for b in os.urandom(32))
    netns = host.endpoint_namespace("app")
    args = (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=app;"
        f"K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={pod['metadata']['uid']}"
    )
    plugin = cni.plugin()
    how = {"container_id": sandbox, "netns": netns, "ifname": selection["interface"], "args": args}
    reply = invoke(plugin, "ADD", delegate, **how)
    assert reply.rc == 0, reply
    result = reply.json
    assert result["ips"][0]["address"] == "198.18.5.10/24"
    assert result["interfaces"][1] == {
        "name": "net1",
        "mac": "02:00:c6:12:05:0a",
        "mtu": result["interfaces"][1]["mtu"],
        "sandbox": netns,
    }
    ep = endpoint_of(lab, sandbox)
    assert ep is not None and ep["metadata"]["namespace"] == "default"
    assert ep["metadata"]["labels"][c.LABEL_POD_NAME] == "app"
    assert ep["metadata"]["labels"][c.LABEL_POD_NAMESPACE] == "default"
    RUNTIMES["host-2"] = lab.podman("host-2")  # the example made the network: its conflist
    peer = run(lab, "host-2", "storage-peer", "storage")
    assert exec_in(lab, peer, "ping", "-c", "2", "-W", "2", "198.18.5.10").returncode == 0
    assert invoke(plugin, "DEL", delegate, **how).rc == 0
    assert endpoint_of(lab, sandbox) is None
    podman(lab, "host-2", "rm", "-f", "-t", "0", "storage-peer")
    kubectl(lab, "delete", "-f", str(EXAMPLES / "05-multus"), "--wait=false")
