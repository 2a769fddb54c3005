"""Uninstall leaves nothing on a host: an inventory of each lab host before Voile, and after
`helm uninstall` and the agent's cleanup, must be equal (both datapaths).

Real: etcd + kube-apiserver, `helm install`/`helm uninstall` of charts/voile, the operator, per
simulated host its Open vSwitch (ovs) or its bpffs (ebpf) and a voile-agent process started with
the options the chart gives it (its own DaemonSet to watch, the CNI files to remove), the chart's
install-cni script run on the host's CNI directories, attached containers pinging each other.
Not real: there is no kubelet and no kube-controller-manager, so the DaemonSet's Pods never run;
the test does what the kubelet does when the garbage collector deletes them after `helm
uninstall`: SIGTERM to each agent. The inventory (voile/lab/inventory.py) covers links, addresses,
routes, rules, qdiscs and filters, firewall rules, sysctls, listening sockets, OVSDB rows and
flows, BPF pins and the agent's and the runtime's directories. docs/install.md has the story.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.catalogue import network
from tests.e2e.chart import CHART, Helm, helm_binary
from tests.e2e.labtools import kubectl, ping
from voile import processes
from voile.api import constants as c
from voile.lab import cni, faults
from voile.lab.host import CNI_CONF_NAME, SimulatedHost, sh
from voile.lab.inventory import Inventory, of_host
from voile.lab.lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

UNDERLAY = {"ovs": 60, "ebpf": 61}
OVERLAY = {"ovs": "198.18.62.0/25", "ebpf": "198.18.62.128/25"}
NETWORK = "gone"
AGENT_DS = "voile-agent"  # the chart's
FOREIGN = "fgn"  # every object the test makes itself, that Voile must leave alone


def directories(host: SimulatedHost) -> list[Path]:
    return [
        host.state_dir,
        host.cni_spool_dir,
        host.cni_bin_dir,
        host.cni_conf_dir,
        host.docker_plugin_socket.parent,
    ]


def make_foreign(host: SimulatedHost) -> None:
    """What another tool made on the host before Voile came: a veth with an alias and a qdisc
    and filter, and an OVS bridge with a port and a flow, or a BPF pin outside Voile's."""
    host.exec("ip", "link", "add", f"{FOREIGN}0", "type", "veth", "peer", "name", f"{FOREIGN}1")
    host.exec("ip", "link", "set", f"{FOREIGN}0", "alias", "not voile's")
    host.exec("tc", "qdisc", "add", "dev", f"{FOREIGN}0", "clsact")
    host.exec("tc", "filter", "add", "dev", f"{FOREIGN}0", "ingress", "prio", "7", "protocol",
              "all", "u32", "match", "u32", "0", "0")  # fmt: skip
    if host.datapath == "ovs":
        host.vsctl(
            "add-br", f"br-{FOREIGN}", "--", "set", "bridge", f"br-{FOREIGN}",
            "datapath_type=netdev", "external_ids:owner=someone-else",
        )  # fmt: skip
        host.vsctl("add-port", f"br-{FOREIGN}", f"{FOREIGN}1")
        host.vsctl("set", "Open_vSwitch", ".", "external_ids:fgn=1")
        host.ofctl("add-flow", f"br-{FOREIGN}", "priority=7,ip,actions=drop")
    else:
        sh("bpftool", "map", "create", str(host.bpffs / f"{FOREIGN}-map"), "type", "hash",
           "key", "4", "value", "4", "entries", "1", "name", f"{FOREIGN}map")  # fmt: skip


def install_cni(lab: Lab, helm: Helm, values: str, host: SimulatedHost) -> None:
    """The chart's install-cni init container, as the kubelet would run it on this host: its
    script and environment from `helm template`, /host/cni/{bin,net.d} mapped to the host's
    directories and /opt/voile/cni/voile (in the image) to the built plugin."""
    rendered = helm.run("template", "voile", str(CHART), "-n", c.DEFAULT_NAMESPACE, "--set", values)
    daemonset = next(
        d for d in yaml.safe_load_all(rendered.stdout)
        if d and d["kind"] == "DaemonSet" and d["metadata"]["name"] == AGENT_DS
    )  # fmt: skip
    init = daemonset["spec"]["template"]["spec"]["initContainers"][0]
    assert init["name"] == "install-cni"
    script = init["command"][-1]
    for inside, outside in {
        "/host/cni/bin": host.cni_bin_dir,
        "/host/cni/net.d": host.cni_conf_dir,
        "/opt/voile/cni/voile": cni.plugin(),
    }.items():
        script = script.replace(inside, str(outside))
    env = {**os.environ, **{e["name"]: e["value"] for e in init.get("env", [])}}
    subprocess.run(["sh", "-ec", script], env=env, check=True, timeout=30)


def agent_log(host: SimulatedHost) -> str:
    return (host.directory / "agent.log").read_text(errors="replace")


def cleanup_again(host: SimulatedHost) -> str:
    """`voile-agent cleanup` by hand, with the options the agent ran with; its log."""
    proc = subprocess.run(
        host.cleanup_command(), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


class Phases:
    """Prints how long each phase took (the test's time budget is tight: it runs in make test)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"phase {name}: {now - self.last:.1f}s")
        self.last = now


def inventories(hosts: list[SimulatedHost]) -> dict[str, Inventory]:
    """Every host's inventory, taken at the same time."""
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        return dict(
            zip(
                [h.name for h in hosts],
                pool.map(lambda h: of_host(h, directories(h)), hosts),
                strict=True,
            )
        )


def assert_same(before: dict[str, Inventory], after: dict[str, Inventory], when: str) -> None:
    diffs = {name: before[name].diff(after[name]) for name in before}
    report = "\n".join(f"--- {name}\n{d}" for name, d in diffs.items() if d)
    assert not report, f"the hosts differ {when}:\n{report}"


@pytest.fixture(params=["ovs", "ebpf"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    datapath = str(request.param)
    lab = Lab(tmp_path / "lab", run_id=f"un{datapath[:2]}", underlay_octet=UNDERLAY[datapath])
    try:
        lab.up(hosts=2, datapath=datapath, agents=False)
        yield lab
    finally:
        lab.down()
    leftovers = [p.name for p in Path("/run/netns").glob(f"voile-{lab.run_id}*")]
    assert leftovers == [], f"lab down left namespaces: {leftovers}"


def test_uninstall_leaves_each_host_as_it_was_before_the_install(lab: Lab, tmp_path: Path) -> None:
    datapath = lab.datapath
    assert datapath is not None
    phase = Phases()
    hosts = [lab.host(1), lab.host(2)]
    for host in hosts:  # the runtime's directories exist on a node before Voile
        for d in (host.cni_bin_dir, host.cni_conf_dir, host.docker_plugin_socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        make_foreign(host)
    before = inventories(hosts)
    phase("foreign objects, inventory before")

    # Install as a user does: the chart (its DaemonSet is what each agent watches), the CNI
    # files its init container writes, the agents with the chart's options.
    helm = Helm(helm_binary(), lab.kubeconfig, tmp_path / "helm")
    values = f"crds.install=false,cni.mode=primary,cni.network={NETWORK},datapath={datapath}"
    helm.run("install", "voile", str(CHART), "-n", c.DEFAULT_NAMESPACE, "--set", values)
    for host in hosts:
        install_cni(lab, helm, values, host)
        assert (host.cni_conf_dir / CNI_CONF_NAME).exists()
    phase("helm install, install-cni")
    lab.start_agents(extra=["--owner-daemonset", AGENT_DS])
    phase("agents started")
    kubectl(lab, "apply", "-f", "-", input=json.dumps(network(NETWORK, cidr=OVERLAY[datapath])))
    lab.attach("host-1", "u1", NETWORK)
    dst = lab.attach("host-2", "u2", NETWORK)
    assert ping(lab, "u1", dst)
    installed = inventories(hosts)
    assert all(before[n].diff(installed[n]) for n in before), "the install changed nothing?"
    phase("network, 2 endpoints, ping, inventory")

    # A stop that is not an uninstall (an upgrade, a drain) leaves the datapath forwarding.
    lab.restart("agent/host-2")
    assert ping(lab, "u1", dst)
    assert "datapath left in place" in agent_log(hosts[1])
    phase("agent restart, ping")

    # Uninstall as the docs say: Endpoints, networks, then the release.
    lab.detach("u1")
    lab.detach("u2")
    kubectl(lab, "delete", "overlaynetworks.voile.dev", "--all", "--wait", "--timeout=60s")
    phase("detach, delete the network")
    helm.run("uninstall", "voile", "-n", c.DEFAULT_NAMESPACE)
    # The kubelet stops the Pods the garbage collector deleted: SIGTERM, 30 s of grace.
    agents = [faults.pid(lab, h.name, "agent") for h in hosts]
    with concurrent.futures.ThreadPoolExecutor(len(agents)) as pool:
        list(pool.map(lambda pid: processes.terminate(pid, grace=30, group=True), agents))
    for host in hosts:
        lab.stop_process(f"agent/{host.name}")  # gone already: only the lab's record
        log = agent_log(host)
        assert "uninstall, cleaning the host" in log, log[-2000:]
        assert "cleanup done" in log
    after = inventories(hosts)
    phase("helm uninstall, SIGTERM, inventory")
    assert_same(before, after, "after the uninstall")

    # Idempotent: cleanup by hand afterwards finds nothing and changes nothing.
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        logs = list(pool.map(cleanup_again, hosts))
    for log in logs:
        done = re.findall(r"cleanup done (.*)", log)
        assert done, "no cleanup report"
        counts = dict(item.split("=") for item in done[-1].split())
        assert set(counts.values()) == {"0"}, counts
    assert_same(before, inventories(hosts), "after a 2nd cleanup")
    for host in hosts:  # the foreign objects are part of the inventories; said once more
        host.exec("ip", "link", "show", f"{FOREIGN}0")
        assert not host.attach_socket.exists()
    phase("cleanup again, inventory")
