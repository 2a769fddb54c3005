"""Pods on Voile through the real chain: kubectl -> kube-apiserver -> kubelet -> containerd (CRI)
-> CNI -> the `voile` plugin -> the host's agent (`voile lab up --nodes`).

Real: etcd + kube-apiserver, the operator, one Open vSwitch pair and one voile-agent per simulated
host, and on each host Debian's containerd 1.6 and the pinned kubelet registered as a Node,
busybox Pods from imported images, podman for the mixed test, kubectl. The lab has its own run id,
directory and underlay octet (14), so a user's lab or another session's is not touched; one lab
for the whole module, removed by `lab down`, which must leave no process, mount, cgroup,
namespace, file or sysctl change behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import venv_bin
from tests.e2e.labtools import api, kubectl
from voile import kube
from voile.api import constants as c
from voile.api import naming
from voile.api.model import parse_endpoint
from voile.controlplane import cache_dir
from voile.lab import images
from voile.lab.host import run_id
from voile.lab.lab import Lab
from voile.lab.node import KUBELET_SYSCTLS, cmdlines, shim_pids, wait_all

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not Path("/usr/bin/containerd").exists()
    or not (cache_dir() / "bin" / "kubelet-v1.34.4").exists(),
    reason="needs root, containerd and the kubelet `make setup` builds",
)

HOSTS = ("host-1", "host-2", "host-3")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_NET, DEFAULT_PREFIX = "blue", "198.18.1."  # examples/01: the conflists' default network
OTHER_NET, OTHER_PREFIX = "red", "198.18.6."  # examples/06: chosen by annotation
PORT_NAME = re.compile(r"^vo[0-9a-f]{11}$")
T = TypeVar("T")


def sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text() for key in KUBELET_SYSCTLS}


def cgroups_of(lab: Lab) -> list[str]:
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/voile-{lab.run_id}-*")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    before = sysctls()
    lab = Lab(tmp_path_factory.mktemp("kn-lab"), run_id=f"kn{run_id()[:3]}", underlay_octet=14)
    try:
        lab.up(hosts=3, nodes=True, pod_network=DEFAULT_NET, datapath="ovs")
        kubectl(
            lab,
            "apply",
            "-f", str(EXAMPLES / "01-basic-network" / "network.yaml"),
            "-f", str(EXAMPLES / "06-pods" / "network.yaml"),
        )  # fmt: skip
        yield lab
    finally:
        socks = [str(lab.node(i).socket) for i in (1, 2, 3)]
        lab.down()
        assert not lab.directory.exists()
        assert [p for p in Path("/run/netns").glob(f"voile-{lab.run_id}*")] == []
        assert cgroups_of(lab) == [], "node cgroups left"
        assert sysctls() == before, "kubelet changed the machine's sysctls"
        with open("/proc/self/mountinfo") as info:
            assert str(lab.directory) not in info.read()
        assert [p for s in socks for p in shim_pids(cmdlines(), s)] == [], "shims left"
        left = [p for p, argv in cmdlines() if any(str(lab.directory) in a for a in argv)]
        assert left == [], f"processes of the lab left: {left}"


@pytest.fixture(scope="module")
def pair(lab: Lab) -> dict[str, str]:
    """Pods a1 (host-1) and a2 (host-2) on the default network, for the module; their IPs."""
    create_pods(lab, [("a1", "host-1", None), ("a2", "host-2", None)])
    return {name: pod(lab, name)["status"]["podIP"] for name in ("a1", "a2")}


# -- helpers -----------------------------------------------------------------------------------


def pod_yaml(name: str, node: str, network: str | None = None) -> str:
    """A busybox Pod bound to ``node`` (there is no scheduler); ``network``: the annotation."""
    annotations = f", annotations: {{{c.ANNOTATION_POD_NETWORK}: {network}}}" if network else ""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default{annotations}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: bb
    image: {images.BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
---
"""


def create_pods(lab: Lab, pods: list[tuple[str, str, str | None]], timeout: int = 120) -> None:
    """Create (name, node, annotation network) Pods and wait until all are Ready."""
    kubectl(lab, "apply", "-f", "-", input="".join(pod_yaml(*p) for p in pods))
    names = [f"pod/{name}" for name, _, _ in pods]
    kubectl(lab, "wait", "--for=condition=Ready", f"--timeout={timeout}s", *names)


def pod_endpoints(lab: Lab, pod: str | None = None) -> list[dict[str, Any]]:
    """The Endpoints the CNI plugin made for Pods (of one Pod, when named)."""
    selector = f"{c.LABEL_OWNER_KIND}=cni"
    if pod:
        selector += f",{c.LABEL_POD_NAME}={pod}"

    async def go(client: kube.KubeClient) -> list[dict[str, Any]]:
        items, _ = await client.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS), label_selector=selector
        )
        return items

    result: list[dict[str, Any]] = api(lab, go)
    return result


def claims(lab: Lab) -> list[dict[str, Any]]:
    async def go(client: kube.KubeClient) -> list[dict[str, Any]]:
        items, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS))
        return items

    result: list[dict[str, Any]] = api(lab, go)
    return result


def pod(lab: Lab, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl(lab, "get", "pod", name, "-o", "json"))
    return result


def ports_and_veths(lab: Lab, index: int) -> set[str]:
    """Endpoint ports on the host's br-voile, and agent veths in its namespace."""
    host = lab.host(index)
    ports = set(host.vsctl("list-ports", "br-voile").split())
    links = {
        line.split(":")[1].strip().split("@")[0]
        for line in host.exec("ip", "-o", "link", "show").stdout.splitlines()
    }
    return {name for name in ports | links if PORT_NAME.match(name)}


def wait_until(what: str, check: Callable[[], T], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.3)


class Traces:
    """What a Pod's attachment left in the API and on its host: to be found gone later."""

    def __init__(self, lab: Lab, ep: dict[str, Any]) -> None:
        self.name = ep["metadata"]["name"]
        self.uid = ep["metadata"]["uid"]
        self.node = int(ep["spec"]["node"].rsplit("-", 1)[1])
        self.ip = ep["status"]["ip"]
        self.port = naming.interfaces(parse_endpoint(ep))[0]
        assert self.port in ports_and_veths(lab, self.node)

    def gone(self, lab: Lab) -> bool:
        return (
            all(e["metadata"]["uid"] != self.uid for e in pod_endpoints(lab))
            and all(x["spec"].get("endpoint") != self.name for x in claims(lab))
            and self.port not in ports_and_veths(lab, self.node)
        )


def ping_from(
    lab: Lab, pod_name: str, address: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """busybox ping inside the Pod (kubectl exec: API server -> kubelet -> containerd)."""
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    return subprocess.run(
        ["kubectl", "exec", pod_name, "--", "ping", *args, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def first_packet(lab: Lab, src: str, address: str) -> None:
    proc = ping_from(lab, src, address, "-c", "3", "-W", "2")
    assert "seq=0 " in proc.stdout and proc.returncode == 0, proc.stdout + proc.stderr


# -- tests -------------------------------------------------------------------------------------


def test_nodes_are_ready_with_the_voile_conflist(lab: Lab) -> None:
    nodes = json.loads(kubectl(lab, "get", "nodes", "-o", "json"))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == list(HOSTS)
    for node in nodes:
        (ready,) = [x for x in node["status"]["conditions"] if x["type"] == "Ready"]
        assert ready["status"] == "True"
        (address,) = [a for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert address["address"].startswith("198.18.14.")
    conflist = json.loads(next(lab.node(1).conf_dir.iterdir()).read_text())
    (plugin,) = conflist["plugins"]
    assert plugin["type"] == "voile" and plugin["network"] == DEFAULT_NET
    assert plugin["podNetworkAnnotation"] is True
    env = {**os.environ, "VOILE_LAB_DIR": str(lab.directory)}
    listed = subprocess.run(
        [venv_bin("voile"), "lab", "crictl", "host-1", "--", "info"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0 and '"NetworkReady"' in listed.stdout, listed.stderr


def test_the_pods_example_on_three_nodes(lab: Lab) -> None:
    """examples/06-pods: web (host-1) and db (host-3) on the default network ping each other
    from the first packet; cache (host-2) chose red by annotation; each Endpoint names its Pod;
    `kubectl delete -f` leaves nothing of them."""
    pods = EXAMPLES / "06-pods" / "pods.yaml"
    kubectl(lab, "apply", "-f", str(pods))
    kubectl(
        lab, "wait", "--for=condition=Ready", "--timeout=120s", "pod/web", "pod/db", "pod/cache"
    )
    ips, traces = {}, []
    for name, net, prefix in (
        ("web", DEFAULT_NET, DEFAULT_PREFIX),
        ("db", DEFAULT_NET, DEFAULT_PREFIX),
        ("cache", OTHER_NET, OTHER_PREFIX),
    ):
        (ep,) = pod_endpoints(lab, name)
        labels = ep["metadata"]["labels"]
        assert labels[c.LABEL_POD_NAMESPACE] == "default" and labels[c.LABEL_POD_NAME] == name
        assert ep["spec"]["network"] == net and ep["metadata"]["namespace"] == "default"
        ips[name] = pod(lab, name)["status"]["podIP"]
        assert ips[name] == ep["status"]["ip"] and ips[name].startswith(prefix)
        traces.append(Traces(lab, ep))
    first_packet(lab, "web", ips["db"])
    first_packet(lab, "db", ips["web"])
    # red carries traffic across nodes as well: a peer on host-1 that asks for it too.
    create_pods(lab, [("red-peer", "host-1", OTHER_NET)])
    (peer,) = pod_endpoints(lab, "red-peer")
    assert peer["spec"]["network"] == OTHER_NET
    traces.append(Traces(lab, peer))
    first_packet(lab, "red-peer", ips["cache"])
    kubectl(lab, "delete", "-f", str(pods), "--wait=false")
    kubectl(lab, "delete", "pod", "red-peer", "--wait=false")
    wait_until("the example's Pods leave nothing", lambda: all(t.gone(lab) for t in traces))


def test_a_pod_and_a_podman_container_on_another_host_ping(lab: Lab) -> None:
    create_pods(lab, [("mix", "host-1", None)])
    podman = lab.podman("host-3")
    podman.run(
        "run", "-d", "--name", "pm", "--network", DEFAULT_NET, images.BUSYBOX_IMAGE,
        "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
    )  # fmt: skip
    try:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        pm_ip = podman.run("inspect", "--format", fmt, "pm").stdout.strip()
        assert pm_ip.startswith(DEFAULT_PREFIX), pm_ip
        first_packet(lab, "mix", pm_ip)
        mix_ip = pod(lab, "mix")["status"]["podIP"]
        back = podman.run("exec", "pm", "ping", "-c", "3", "-W", "2", mix_ip, check=False)
        assert back.returncode == 0 and "seq=0 " in back.stdout, back.stdout + back.stderr
    finally:
        podman.run("rm", "-f", "-t", "0", "pm", check=False)
        kubectl(lab, "delete", "pod", "mix", "--wait=false")


def kill_shim(lab: Lab, index: int, sandbox: str) -> None:
    node = lab.node(index)
    mine = [
        pid
        for pid in shim_pids(cmdlines(), str(node.socket))
        if sandbox in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]
    assert len(mine) == 1, f"the shim of sandbox {sandbox}: {mine}"
    os.kill(mine[0], signal.SIGKILL)


@pytest.mark.parametrize("how", ["delete", "force-delete", "kill-shim"])
def test_a_pod_that_goes_leaves_nothing(lab: Lab, pair: dict[str, str], how: str) -> None:
    """Each way a Pod's sandbox ends runs CNI DEL (from the kubelet, through containerd), and
    its Endpoint, address claim, OVS port and veth go. A killed shim: the kubelet starts a new
    sandbox (a new attachment) and the old one's traces go; the Pod then goes as well."""
    name = f"life-{how}"
    create_pods(lab, [(name, "host-2", None)])
    (ep,) = pod_endpoints(lab, name)
    traces = Traces(lab, ep)
    started = time.monotonic()
    if how == "delete":
        kubectl(lab, "delete", "pod", name, "--wait=false")
    elif how == "force-delete":
        kubectl(lab, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
    else:
        kill_shim(lab, 2, ep["metadata"]["annotations"][c.ANNOTATION_OWNER_ID])
    wait_until(f"{how}: the attachment leaves nothing", lambda: traces.gone(lab), timeout=60)
    print(f"{how}: nothing left after {time.monotonic() - started:.1f}s")
    if how == "kill-shim":
        kubectl(lab, "wait", "--for=condition=Ready", "--timeout=60s", f"pod/{name}")
        (again,) = wait_until(
            "the kubelet's new sandbox is attached",
            lambda: [e for e in pod_endpoints(lab, name) if (e.get("status") or {}).get("ip")],
        )
        assert again["metadata"]["uid"] != traces.uid
        first_packet(lab, "a1", pod(lab, name)["status"]["podIP"])
        traces = Traces(lab, again)
        kubectl(lab, "delete", "pod", name, "--wait=false")
        wait_until("the restarted Pod leaves nothing", lambda: traces.gone(lab), timeout=60)
    wait_until("the Pod object is gone", lambda: not kubectl(lab, "get", "pod", name, check=False))


def test_thirty_pods_created_and_deleted_leave_nothing(lab: Lab, pair: dict[str, str]) -> None:
    busy = {i: ports_and_veths(lab, i) for i in (1, 2, 3)}  # a1 and a2 stay
    held = {x["metadata"]["name"] for x in claims(lab)}
    pods = [(f"many-{i}", HOSTS[i % 3], None) for i in range(30)]
    create_pods(lab, pods, timeout=300)
    ips = {pod(lab, name)["status"]["podIP"] for name, _, _ in pods}
    assert len(ips) == 30
    assert len([e for e in pod_endpoints(lab) if e["spec"]["node"]]) >= 30
    kubectl(lab, "delete", "pod", *[name for name, _, _ in pods], "--wait=false")
    wait_until(
        "no Endpoint, claim, port or veth of the 30 Pods",
        lambda: (
            not [
                e
                for e in pod_endpoints(lab)
                if e["metadata"]["labels"][c.LABEL_POD_NAME].startswith("many-")
            ]
            and {x["metadata"]["name"] for x in claims(lab)} <= held
            and all(ports_and_veths(lab, i) <= busy[i] for i in (1, 2, 3))
        ),
        timeout=180,
    )
    wait_until(
        "the Pods are gone", lambda: "many-" not in kubectl(lab, "get", "pods", "-o", "name")
    )


def netns_ping(lab: Lab, pod_name: str, address: str, count: int) -> subprocess.Popen[str]:
    """iputils ping at 100 pps from inside the Pod's network namespace (entered through its
    node's mount namespace), so neither a kubelet nor an exec stream carries it."""
    (ep,) = pod_endpoints(lab, pod_name)
    node = lab.node(int(ep["spec"]["node"].rsplit("-", 1)[1]))
    netns = ep["spec"]["target"]["netns"]["path"]
    argv = [  # the inner nsenter opens the netns path where it is a mount: inside the node
        "nsenter", f"--mount={node.mount_namespace}", "nsenter", f"--net={netns}",
        "ping", "-i", "0.01", "-c", str(count), "-W", "1", address,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("what", ["agent", "kubelet"])
def test_restarting_a_nodes_agent_or_kubelet_loses_no_packet(
    lab: Lab, pair: dict[str, str], what: str
) -> None:
    """1000 pings at 100 pps between a1 (host-1) and a2 (host-2); host-1's agent (or kubelet)
    is restarted in the middle. Not one is lost, and the Pod keeps its sandbox."""
    before = pod_endpoints(lab, "a1")
    ping = netns_ping(lab, "a1", pair["a2"], 1000)
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(2.5)
        if what == "agent":
            lab.restart("agent/host-1")
        else:
            lab.node(1).restart_kubelet()
        restarted.set()

    worker = threading.Thread(target=restart)
    worker.start()
    out, err = ping.communicate(timeout=120)
    worker.join(60)
    assert restarted.is_set()
    assert " 1000 received, 0% packet loss" in out, out[-400:] + err
    if what == "kubelet":
        wait_all([lab.node(1)], lab.kubeconfig)
    assert [e["metadata"]["uid"] for e in pod_endpoints(lab, "a1")] == [
        e["metadata"]["uid"] for e in before
    ]
