"""Voile's CNI plugin, every verb and error case, invoked as a runtime invokes it (environment and
stdin per the CNI spec, tests/cni.py) against a real agent on real Open vSwitch.

Real: the static plugin binary (hack/cni/build.sh), etcd + kube-apiserver (this module's own),
the `voile-operator` process (allocation), one simulated host with its ovsdb-server,
ovs-vswitchd and `voile-agent run`, the kernel's namespaces and veths, ping. Not here: a runtime
(podman drives the same binary in tests/e2e/test_cni_podman.py). One host for the whole module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cni import Reply, invoke, runtime_conf
from tests.functional.conftest import TEST_NAMESPACE, AgentProcess, Lab, OperatorProcess, in_ns
from voile import kube
from voile.api import constants as c
from voile.controlplane import Endpoints
from voile.lab import cni
from voile.lab.host import SimulatedHost, del_netns

BLUE_CIDR = "198.18.40.0/24"
BLUE_GATEWAY = "198.18.40.254"
TINY_CIDR = "198.18.41.0/30"  # two addresses


@dataclasses.dataclass
class Env:
    plugin: Path
    lab: Lab
    host: SimulatedHost
    agent: AgentProcess
    operator: OperatorProcess
    plane: Endpoints
    blue: str
    tiny: str
    rid: str

    def conf(self, network: str | None = None, **kw: Any) -> dict[str, Any]:
        """The stdin a runtime passes for this host's conflist entry."""
        net = network or self.blue
        plugin = cni.plugin_conf(
            net, socket=self.host.attach_socket, spool_dir=self.host.cni_spool_dir
        )
        plugin.update(kw.pop("plugin", {}))
        return runtime_conf(plugin, name=net, **kw)

    def netns(self, short: str) -> str:
        return self.host.endpoint_namespace(f"{self.rid}{short}")


def cid() -> str:
    return secrets.token_hex(32)


def api(coro_fn: Any, plane: Endpoints) -> Any:
    async def go() -> Any:
        async with kube.KubeClient.from_config(str(plane.kubeconfig)) as client:
            return await coro_fn(client)

    return asyncio.run(go())


def cni_endpoints(env: Env) -> list[dict[str, Any]]:
    async def go(client: kube.KubeClient) -> list[dict[str, Any]]:
        items, _ = await client.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS),
            label_selector=f"{c.LABEL_OWNER_KIND}=cni",
        )
        return items

    result: list[dict[str, Any]] = api(go, env.plane)
    return result


def owned_by(env: Env, container: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cni_endpoints(env)
        if e["metadata"]["annotations"].get(c.ANNOTATION_OWNER_ID) == container
    ]


def claims(env: Env, network: str) -> list[str]:
    async def go(client: kube.KubeClient) -> list[str]:
        items, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS))
        return [i["metadata"]["name"] for i in items if i["metadata"]["name"].startswith(network)]

    result: list[str] = api(go, env.plane)
    return result


def host_links(env: Env) -> str:
    return env.host.exec("ip", "-o", "link", "show").stdout


def wait_until(what: str, check: Any, timeout: float = 30.0, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def no_traceback(reply: Reply) -> None:
    for marker in ("Traceback", "goroutine ", "panic:"):
        assert marker not in reply.stdout + reply.stderr, reply


def error(reply: Reply, code: int) -> dict[str, Any]:
    """The spec's error object on stdout, with a non-zero exit."""
    no_traceback(reply)
    assert reply.rc != 0, reply
    obj = reply.json
    assert obj["code"] == code, reply
    assert obj["msg"], reply
    assert obj["cniVersion"], reply
    return obj


def ok(reply: Reply) -> dict[str, Any] | None:
    no_traceback(reply)
    assert reply.rc == 0, reply
    return reply.json if reply.stdout.strip() else None


@pytest.fixture(scope="module")
def env(own_plane: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    plugin = cni.plugin()
    directory = tmp_path_factory.mktemp("cni")
    lab = Lab(own_plane, directory)
    operator = OperatorProcess(own_plane.kubeconfig, directory / "operator.log").start()
    rid = lab.rid
    blue, tiny = f"ft-{rid}-blue", f"ft-{rid}-tiny"

    async def networks(client: kube.KubeClient) -> None:
        for name, spec in (
            (blue, {"cidr": BLUE_CIDR, "gateway": BLUE_GATEWAY}),
            (tiny, {"cidr": TINY_CIDR}),
        ):
            await client.create(
                kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.OVERLAY_NETWORK,
                    "metadata": {"name": name},
                    "spec": spec,
                },
            )

    try:
        host = lab.add_hosts(1)[0]
        api(networks, own_plane)
        the_env = Env(
            plugin=plugin,
            lab=lab,
            host=host,
            agent=lab.agents[0],
            operator=operator,
            plane=own_plane,
            blue=blue,
            tiny=tiny,
            rid=rid,
        )
        wait_until(
            "the agent answers STATUS",
            lambda: invoke(plugin, "STATUS", the_env.conf(cni_version="1.1.0")).rc == 0,
            timeout=60,
        )
        yield the_env
    finally:
        for agent in lab.agents:
            print(f"\n==== agent log {agent.node}\n{agent.log_tail(80)}")
        operator.stop()
        lab.stop()


def test_version_lists_the_spec_versions(env: Env) -> None:
    reply = invoke(env.plugin, "VERSION", None, ifname=None)
    body = ok(reply)
    assert body is not None
    assert body["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_add_check_del_lifecycle(env: Env) -> None:
    """ADD returns the spec's result and plumbs the namespace; ADD again adopts the same
    attachment; CHECK compares with prevResult; DEL removes the Endpoint, the veth and the
    address claim, and succeeds again on the second call."""
    netns, other_ns = env.netns("l1"), env.netns("l2")
    container, other = cid(), cid()
    pod_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={TEST_NAMESPACE};K8S_POD_NAME=web"
    reply = invoke(
        env.plugin, "ADD", env.conf(), container_id=container, netns=netns, args=pod_args
    )
    result = ok(reply)
    assert result is not None
    assert result["cniVersion"] == "1.0.0"
    host_if, ct_if = result["interfaces"]
    assert "sandbox" not in host_if and host_if["name"] in host_links(env)
    assert ct_if["name"] == "eth0" and ct_if["sandbox"] == netns
    assert ct_if["mtu"] == host_if["mtu"] == 1450
    (ipc,) = result["ips"]
    assert ipc["interface"] == 1 and ipc["gateway"] == BLUE_GATEWAY
    assert ipc["address"].endswith("/24") and ipc["address"].startswith("198.18.40.")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": BLUE_GATEWAY}]
    assert not result.get("dns")
    address = ipc["address"].split("/")[0]
    inside = in_ns(netns, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert ipc["address"] in inside
    assert ct_if["mac"] in in_ns(netns, "ip", "-o", "link", "show", "dev", "eth0").stdout

    (ep,) = owned_by(env, container)
    assert ep["metadata"]["namespace"] == TEST_NAMESPACE
    labels = ep["metadata"]["labels"]
    assert labels[c.LABEL_POD_NAMESPACE] == TEST_NAMESPACE and labels[c.LABEL_POD_NAME] == "web"
    assert ep["metadata"]["annotations"][c.ANNOTATION_INTERFACE] == "eth0"

    again = ok(
        invoke(env.plugin, "ADD", env.conf(), container_id=container, netns=netns, args=pod_args)
    )
    assert again == result  # idempotent: same Endpoint, address and interfaces

    # A second container on the same network reaches the first through the datapath.
    second = ok(invoke(env.plugin, "ADD", env.conf(), container_id=other, netns=other_ns))
    assert second is not None
    assert in_ns(other_ns, "ping", "-c", "2", "-W", "2", address).returncode == 0

    check = env.conf(prev_result=result)
    ok(invoke(env.plugin, "CHECK", check, container_id=container, netns=netns, args=pod_args))
    altered = json.loads(json.dumps(result))
    altered["interfaces"][1]["mac"] = "02:00:00:00:00:99"
    error(
        invoke(
            env.plugin,
            "CHECK",
            env.conf(prev_result=altered),
            container_id=container,
            netns=netns,
            args=pod_args,
        ),
        107,
    )
    error(invoke(env.plugin, "CHECK", env.conf(), container_id=container, netns=netns), 7)

    host_port = host_if["name"]
    for _ in range(2):  # DEL is idempotent
        delete = env.conf(prev_result=result)
        ok(invoke(env.plugin, "DEL", delete, container_id=container, netns=netns, args=pod_args))
        assert owned_by(env, container) == []
        assert host_port not in host_links(env)
        assert f"{env.blue}-{address.replace('.', '-')}" not in claims(env, env.blue)
    assert "eth0" not in in_ns(netns, "ip", "-o", "link", "show").stdout
    error(
        invoke(
            env.plugin,
            "CHECK",
            env.conf(prev_result=result),
            container_id=container,
            netns=netns,
            args=pod_args,
        ),
        106,
    )
    ok(invoke(env.plugin, "DEL", env.conf(), container_id=other, netns=other_ns))
    assert owned_by(env, other) == []


def test_add_and_del_with_cni_0_4_0(env: Env) -> None:
    netns, container = env.netns("v4"), cid()
    result = ok(
        invoke(
            env.plugin, "ADD", env.conf(cni_version="0.4.0"), container_id=container, netns=netns
        )
    )
    assert result is not None
    assert result["cniVersion"] == "0.4.0"
    (ipc,) = result["ips"]
    assert ipc["version"] == "4" and ipc["interface"] == 1 and ipc["gateway"] == BLUE_GATEWAY
    assert result["interfaces"][1]["sandbox"] == netns
    check = env.conf(cni_version="0.4.0", prev_result=result)
    ok(invoke(env.plugin, "CHECK", check, container_id=container, netns=netns))
    ok(invoke(env.plugin, "DEL", check, container_id=container, netns=netns))
    assert owned_by(env, container) == []


def test_static_address_and_mac_from_cni_args_and_runtime_config(env: Env) -> None:
    """podman passes IP=/MAC= in CNI_ARGS, Multus runtimeConfig ips/mac; a conflict between
    them is an invalid configuration, an address in use a Voile error, and neither leaves an
    Endpoint."""
    a, b, c3 = cid(), cid(), cid()
    ns_a, ns_b, ns_c = env.netns("sa"), env.netns("sb"), env.netns("sc")
    by_args = ok(
        invoke(
            env.plugin,
            "ADD",
            env.conf(),
            container_id=a,
            netns=ns_a,
            args="IgnoreUnknown=1;IP=198.18.40.50;MAC=02:aa:00:00:00:50",
        )
    )
    assert by_args is not None
    assert by_args["ips"][0]["address"] == "198.18.40.50/24"
    assert by_args["interfaces"][1]["mac"] == "02:aa:00:00:00:50"
    by_runtime = ok(
        invoke(
            env.plugin,
            "ADD",
            env.conf(runtime_config={"ips": ["198.18.40.51/24"], "mac": "02:aa:00:00:00:51"}),
            container_id=b,
            netns=ns_b,
        )
    )
    assert by_runtime is not None
    assert by_runtime["ips"][0]["address"] == "198.18.40.51/24"
    assert by_runtime["interfaces"][1]["mac"] == "02:aa:00:00:00:51"
    conflict = env.conf(runtime_config={"ips": ["198.18.40.52"]})
    error(
        invoke(env.plugin, "ADD", conflict, container_id=c3, netns=ns_c, args="IP=198.18.40.53"), 7
    )
    taken = error(
        invoke(env.plugin, "ADD", env.conf(), container_id=c3, netns=ns_c, args="IP=198.18.40.50"),
        103,
    )
    assert "AddressTaken" in taken.get("details", ""), taken
    assert owned_by(env, c3) == []
    for container, netns in ((a, ns_a), (b, ns_b)):
        ok(invoke(env.plugin, "DEL", env.conf(), container_id=container, netns=netns))


def test_full_pool_is_a_voile_error_and_leaves_nothing(env: Env) -> None:
    made = [(cid(), env.netns(f"p{i}")) for i in range(3)]
    try:
        for container, netns in made[:2]:
            ok(invoke(env.plugin, "ADD", env.conf(env.tiny), container_id=container, netns=netns))
        container, netns = made[2]
        full = error(
            invoke(env.plugin, "ADD", env.conf(env.tiny), container_id=container, netns=netns),
            102,
        )
        assert "PoolExhausted" in full.get("details", ""), full
        assert owned_by(env, container) == []
    finally:
        for container, netns in made:
            invoke(env.plugin, "DEL", env.conf(env.tiny), container_id=container, netns=netns)
    assert claims(env, env.tiny) == []


def test_gc_removes_attachments_not_in_valid_attachments(env: Env) -> None:
    keep, drop = cid(), cid()
    ns_keep, ns_drop = env.netns("gk"), env.netns("gd")
    for container, netns in ((keep, ns_keep), (drop, ns_drop)):
        ok(invoke(env.plugin, "ADD", env.conf(), container_id=container, netns=netns))
    valid = {"cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]}
    # GC is a 1.1 verb: a 1.0.0 configuration may not ask for it.
    error(invoke(env.plugin, "GC", env.conf(extra=valid), ifname=None), 1)
    assert len(owned_by(env, drop)) == 1
    ok(invoke(env.plugin, "GC", env.conf(cni_version="1.1.0", extra=valid), ifname=None))
    assert owned_by(env, drop) == []
    assert len(owned_by(env, keep)) == 1
    ok(invoke(env.plugin, "DEL", env.conf(), container_id=keep, netns=ns_keep))


MALFORMED: list[tuple[str, Any, dict[str, Any], int]] = [
    ("not-json", "{not json", {}, 6),
    ("no-name", {"cniVersion": "1.0.0", "type": "voile", "network": "x"}, {}, 7),
    ("no-network", {"cniVersion": "1.0.0", "name": "n", "type": "voile"}, {}, 7),
    ("network-not-string", {"cniVersion": "1.0.0", "name": "n", "network": 5}, {}, 7),
    ("network-not-a-name", {"cniVersion": "1.0.0", "name": "n", "network": "Blue_1"}, {}, 7),
    ("bad-version", {"cniVersion": "0.9.9", "name": "n", "network": "x"}, {}, 1),
    ("no-version", {"name": "n", "network": "x"}, {}, 1),
    ("no-ifname", None, {"ifname": None}, 4),
    ("unknown-verb", None, {"command": "FROB"}, 4),
    ("bad-cni-args", None, {"args": "IgnoreUnknown=1;garbage"}, 4),
    ("bad-ip-arg", None, {"args": "IP=198.18.40.300"}, 4),
    ("many-ips", None, {"runtime_config": {"ips": ["198.18.40.7", "198.18.40.8"]}}, 7),
    ("netns-outside", None, {"netns": "/tmp/voile-not-a-netns"}, 105),
]


@pytest.mark.parametrize(
    ("conf", "how", "code"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_gets_the_spec_error(
    env: Env, conf: Any, how: dict[str, Any], code: int
) -> None:
    how = dict(how)
    command = how.pop("command", "ADD")
    runtime_config = how.pop("runtime_config", None)
    stdin = conf if conf is not None else env.conf(runtime_config=runtime_config)
    kwargs: dict[str, Any] = {"container_id": cid(), "netns": env.netns("bad")}
    kwargs.update(how)
    error(invoke(env.plugin, command, stdin, **kwargs), code)
    assert owned_by(env, kwargs["container_id"]) == []


def make_pod(env: Env, name: str, network: str | None) -> None:
    """A Pod object (no kubelet here: it stays Pending), annotated with ``network``."""
    meta: dict[str, Any] = {"name": name, "namespace": TEST_NAMESPACE}
    if network is not None:
        meta["annotations"] = {c.ANNOTATION_POD_NETWORK: network}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "localhost/busybox:lab"}]},
    }

    async def go(client: kube.KubeClient) -> None:
        await client.create(kube.path("", "v1", "pods", namespace=TEST_NAMESPACE), body)

    api(go, env.plane)


def test_a_pods_annotation_chooses_its_network(env: Env) -> None:
    """With podNetworkAnnotation the conflist's network is a default: the agent reads the Pod's
    voile.dev/network and attaches there; CHECK and DEL, naming the default, find it anyway.
    Without the flag the annotation means nothing."""
    pod, plain = f"annotated-{env.rid}", f"plain-{env.rid}"
    make_pod(env, pod, env.tiny)
    make_pod(env, plain, None)
    by_pod = env.conf(plugin={"podNetworkAnnotation": True})
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={TEST_NAMESPACE};K8S_POD_NAME={pod}"
    container, netns = cid(), env.netns("an")
    result = ok(invoke(env.plugin, "ADD", by_pod, container_id=container, netns=netns, args=args))
    assert result is not None
    (ipc,) = result["ips"]
    assert ipc["address"].startswith("198.18.41.") and "gateway" not in ipc  # tiny, not blue
    (ep,) = owned_by(env, container)
    assert ep["spec"]["network"] == env.tiny and ep["metadata"]["name"].startswith(env.tiny)
    assert ep["metadata"]["labels"][c.LABEL_POD_NAME] == pod
    check = env.conf(plugin={"podNetworkAnnotation": True}, prev_result=result)
    ok(invoke(env.plugin, "CHECK", check, container_id=container, netns=netns, args=args))
    ok(invoke(env.plugin, "DEL", by_pod, container_id=container, netns=netns, args=args))
    assert owned_by(env, container) == []
    assert claims(env, env.tiny) == []

    # The same Pod through a conflist without the flag (a Multus delegate): the conflist's.
    container = cid()
    ok(invoke(env.plugin, "ADD", env.conf(), container_id=container, netns=netns, args=args))
    assert [e["spec"]["network"] for e in owned_by(env, container)] == [env.blue]
    ok(invoke(env.plugin, "DEL", env.conf(), container_id=container, netns=netns, args=args))
    # A Pod without the annotation: the default.
    plain_args = f"K8S_POD_NAMESPACE={TEST_NAMESPACE};K8S_POD_NAME={plain}"
    container = cid()
    ok(invoke(env.plugin, "ADD", by_pod, container_id=container, netns=netns, args=plain_args))
    assert [e["spec"]["network"] for e in owned_by(env, container)] == [env.blue]
    ok(invoke(env.plugin, "DEL", by_pod, container_id=container, netns=netns, args=plain_args))
    assert owned_by(env, container) == []


@pytest.mark.parametrize(
    ("annotation", "code", "says"),
    [("Not_A_Network", 7, "not an OverlayNetwork name"), ("nowhere", 7, "nowhere"), (None, 4, "")],
    ids=["not-a-name", "no-such-network", "no-such-pod"],
)
def test_a_bad_pod_annotation_or_a_missing_pod_is_a_clear_error(
    env: Env, annotation: str | None, code: int, says: str
) -> None:
    name = f"bad-{env.rid}-{secrets.token_hex(2)}"
    if annotation is not None:
        make_pod(env, name, annotation)
    args = f"K8S_POD_NAMESPACE={TEST_NAMESPACE};K8S_POD_NAME={name}"
    container = cid()
    obj = error(
        invoke(
            env.plugin,
            "ADD",
            env.conf(plugin={"podNetworkAnnotation": True}),
            container_id=container,
            netns=env.netns("ba"),
            args=args,
        ),
        code,
    )
    assert says in obj["msg"] and (annotation is not None or "PodNotFound" in obj["details"])
    assert owned_by(env, container) == []


def test_unknown_network_is_an_invalid_config_naming_it(env: Env) -> None:
    missing = f"ft-{env.rid}-nowhere"
    obj = error(
        invoke(env.plugin, "ADD", env.conf(missing), container_id=cid(), netns=env.netns("un")),
        7,
    )
    assert missing in obj["msg"]


def test_add_past_its_deadline_undoes_and_says_try_again(env: Env) -> None:
    """Nothing allocates (the operator is paused): the ADD fails with 11 after its timeout and
    the Endpoint it created is gone before it answers."""
    container, netns = cid(), env.netns("to")
    conf = env.conf(plugin={"timeout": 2})
    with env.operator.paused():
        started = time.monotonic()
        error(invoke(env.plugin, "ADD", conf, container_id=container, netns=netns), 11)
        assert time.monotonic() - started < 20
        assert owned_by(env, container) == []


def test_agent_unreachable(env: Env, tmp_path: Path) -> None:
    """ADD says try again later, STATUS not available, DEL succeeds and records the attachment
    for the agent (atomically, one file per container and interface)."""
    nowhere = {"socket": str(tmp_path / "no-agent.sock"), "spoolDir": str(tmp_path / "spool")}
    container, netns = cid(), env.netns("ur")
    error(
        invoke(env.plugin, "ADD", env.conf(plugin=nowhere), container_id=container, netns=netns),
        11,
    )
    error(invoke(env.plugin, "STATUS", env.conf(cni_version="1.1.0", plugin=nowhere)), 50)
    reply = invoke(env.plugin, "DEL", env.conf(plugin=nowhere), container_id=container)
    ok(reply)
    (record,) = (tmp_path / "spool").iterdir()
    assert record.name == f"{container}-eth0.json"
    body = json.loads(record.read_text())
    assert body["network"] == env.blue and body["containerID"] == container
    assert body["ifname"] == "eth0" and body["version"] == 1


def test_del_while_the_agent_is_down_is_finished_when_it_returns(env: Env) -> None:
    container, netns = cid(), env.netns("dd")
    result = ok(invoke(env.plugin, "ADD", env.conf(), container_id=container, netns=netns))
    assert result is not None
    port = result["interfaces"][0]["name"]
    address = result["ips"][0]["address"].split("/")[0]
    env.agent.kill(signal.SIGKILL)
    try:
        reply = invoke(env.plugin, "DEL", env.conf(), container_id=container, netns=netns)
        ok(reply)
        record = env.host.cni_spool_dir / f"{container}-eth0.json"
        assert record.exists(), reply
        assert len(owned_by(env, container)) == 1  # nobody removed it yet
    finally:
        env.agent.start()
    wait_until("the agent finishes the pending DEL", lambda: not record.exists(), timeout=60)
    assert owned_by(env, container) == []
    assert port not in host_links(env)
    assert f"{env.blue}-{address.replace('.', '-')}" not in claims(env, env.blue)


def test_attachment_whose_netns_is_gone_is_detached_by_the_agent(env: Env) -> None:
    """The runtime never calls DEL, but the namespace is gone: the agent detaches it."""
    container, netns = cid(), env.netns("ng")
    result = ok(invoke(env.plugin, "ADD", env.conf(), container_id=container, netns=netns))
    assert result is not None
    del_netns(Path(netns).name)
    wait_until("the agent detaches it", lambda: owned_by(env, container) == [], timeout=30)
    assert result["interfaces"][0]["name"] not in host_links(env)


def test_status_fails_while_the_agent_is_not_synced(env: Env) -> None:
    status = env.conf(cni_version="1.1.0")
    ok(invoke(env.plugin, "STATUS", status))
    env.agent.kill(signal.SIGKILL)
    os.kill(env.plane.apiserver_pid, signal.SIGSTOP)
    try:
        env.agent.start()
        reply = wait_until(
            "the restarted agent answers STATUS",
            lambda: (
                (r := invoke(env.plugin, "STATUS", status)).rc != 0
                and "not synced" in r.stdout
                and r
            ),
            timeout=30,
        )
        error(reply, 50)
    finally:
        os.kill(env.plane.apiserver_pid, signal.SIGCONT)
    wait_until("STATUS ready again", lambda: invoke(env.plugin, "STATUS", status).rc == 0, 60)


def test_status_fails_while_the_datapath_is_down(env: Env) -> None:
    """Last in the module: ovs-vswitchd is killed, and started again afterwards."""
    status = env.conf(cni_version="1.1.0")
    pid = int((env.host.directory / "ovs-vswitchd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        reply = wait_until(
            "STATUS reports the datapath",
            lambda: (r := invoke(env.plugin, "STATUS", status)).rc != 0 and r,
            timeout=30,
        )
        obj = error(reply, 50)
        assert "datapath" in obj["msg"], obj
    finally:
        env.host.start()  # a new ovs-vswitchd on the same database
    wait_until("STATUS ready again", lambda: invoke(env.plugin, "STATUS", status).rc == 0, 60)
