"""The chart's RBAC, exercised with the chart's own ServiceAccounts and real tokens.

Real: the chart installed with the pinned helm, tokens from the TokenRequest API
(`kubectl create token`), the API server's RBAC authorizer (`kubectl auth can-i` is a
SelfSubjectAccessReview made with the token), and the real ``voile-operator`` and ``voile-agent``
processes, started with the command and environment of the installed Deployment and DaemonSet
and nothing but their ServiceAccounts' tokens; the agents run in simulated hosts (voile.lab.host:
own network namespace, own ovsdb-server and ovs-vswitchd, netdev datapath), so this needs root.
Not here: Pods, kube-controller-manager (the release namespace stays Terminating at the end).

Run with ``-s`` (or ``-rP``) to see the can-i table.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import catalogue
from tests.e2e.chart import (
    CHART,
    Helm,
    argocd_health,
    argocd_health_scripts,
    helm_binary,
    voile_objects,
    wait_crds_gone,
    wait_crds_served,
    without_voile_crds,
)
from tests.e2e.conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
OPERATOR_POD = "voile-operator-6d4f8b7c9-e2e"  # the Pod name the downward API would give
ACCOUNTS = ("voile-operator", "voile-agent")

# Where a check is made: "all" namespaces, the "release" namespace, a "user" namespace, another
# "system" namespace, or "cluster" for cluster-scoped resources.
ALL, RELEASE, USER, SYSTEM, CLUSTER = "all", "release", "user", "system", "cluster"
# verb, resource (with /subresource or /name), where, operator may, agent may
MATRIX: list[tuple[str, str, str, bool, bool]] = [
    ("list", "endpoints.voile.dev", ALL, True, True),
    ("watch", "endpoints.voile.dev", ALL, True, True),
    ("patch", "endpoints.voile.dev", USER, True, True),
    ("patch", "endpoints.voile.dev/status", USER, True, True),
    ("update", "endpoints.voile.dev", USER, False, False),
    # The agent's local attach API creates and deletes Endpoints for runtimes (CNI ADD/DEL).
    ("create", "endpoints.voile.dev", USER, False, True),
    ("delete", "endpoints.voile.dev", USER, False, True),
    ("list", "overlaynetworks.voile.dev", CLUSTER, True, True),
    ("watch", "overlaynetworks.voile.dev", CLUSTER, True, True),
    ("patch", "overlaynetworks.voile.dev", CLUSTER, True, False),
    ("patch", "overlaynetworks.voile.dev/status", CLUSTER, True, False),
    ("create", "overlaynetworks.voile.dev", CLUSTER, False, False),
    ("delete", "overlaynetworks.voile.dev", CLUSTER, False, False),
    ("create", "ipclaims.voile.dev", CLUSTER, True, False),
    ("delete", "ipclaims.voile.dev", CLUSTER, True, False),
    ("list", "ipclaims.voile.dev", CLUSTER, True, False),
    ("watch", "ipclaims.voile.dev", CLUSTER, True, False),
    ("update", "ipclaims.voile.dev", CLUSTER, False, False),
    ("create", "vniclaims.voile.dev", CLUSTER, True, False),
    ("delete", "vniclaims.voile.dev", CLUSTER, True, False),
    ("list", "vniclaims.voile.dev", CLUSTER, True, False),
    ("create", "leases", RELEASE, True, True),
    # The agent watches its own DaemonSet: deleted means uninstall (docs/install.md).
    ("watch", "daemonsets.apps/voile-agent", RELEASE, False, True),
    ("get", "daemonsets.apps/voile-agent", RELEASE, False, True),
    ("get", "daemonsets.apps/other", RELEASE, False, False),
    ("list", "daemonsets.apps", RELEASE, False, False),
    ("delete", "daemonsets.apps/voile-agent", RELEASE, False, False),
    ("get", "leases/voile-agent-node-1", RELEASE, True, False),
    ("update", "leases/voile-operator", RELEASE, False, False),
    ("patch", "leases/voile-agent-node-1", RELEASE, False, True),
    ("patch", "leases/voile-operator", RELEASE, True, True),  # see docs/install.md, "Limits"
    ("list", "leases", RELEASE, True, False),  # the operator reads the probe reports
    ("delete", "leases", RELEASE, False, False),
    ("create", "leases", SYSTEM, False, False),
    ("create", "events", USER, True, True),
    ("list", "events", USER, False, False),
    ("list", "customresourcedefinitions", CLUSTER, True, False),
    ("create", "customresourcedefinitions", CLUSTER, False, False),
    ("get", "secrets", RELEASE, False, False),
    ("list", "secrets", ALL, False, False),
    ("get", "configmaps", RELEASE, False, False),
    ("list", "pods", ALL, False, False),
    # CNI ADD with podNetworkAnnotation: the agent reads the Pod's voile.dev/network.
    ("get", "pods", USER, False, True),
    ("delete", "pods", USER, False, False),
    ("list", "nodes", CLUSTER, False, False),
    ("create", "serviceaccounts/token", RELEASE, False, False),
    ("create", "clusterrolebindings", CLUSTER, False, False),
    ("list", "namespaces", CLUSTER, False, False),
]


@pytest.fixture(scope="module")
def release(
    kubectl: Kubectl, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The chart installed in a fresh namespace; uninstalled (and checked) at the end."""
    helm = Helm(helm_binary(), kubeconfig, tmp_path_factory.mktemp("helm"))
    ns = f"voile-e2e-rbac-{uuid.uuid4().hex[:6]}"
    with without_voile_crds(kubectl):
        before = set(voile_objects(kubectl))  # other tests' leftovers in this shared API server
        try:
            # The data path of the simulated hosts below: userspace OVS, underlay eth0.
            helm.run(
                "install",
                "voile",
                str(CHART),
                "-n",
                ns,
                "--create-namespace",
                "--set",
                "datapathType=netdev,underlayInterface=eth0,vtepInterface=eth0",
            )
            wait_crds_served(kubectl)
            yield ns
            helm.run("uninstall", "voile", "-n", ns)
            wait_crds_gone(kubectl)
            kubectl.run("delete", "namespace", ns, "--wait=false")
            # The runtime objects (the operator's Lease, its Events) went with the namespace's
            # deletion; the namespace's own deletion needs kube-controller-manager.
            left = [o for o in voile_objects(kubectl) if f" {ns}/" not in o and o not in before]
            assert left == [], left
        finally:
            helm.run("uninstall", "voile", "-n", ns, "--ignore-not-found", check=False)
            kubectl.run(
                "delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False
            )


def token_kubeconfig(kubectl: Kubectl, admin: Path, ns: str, account: str, out: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``account`` with a TokenRequest token."""
    token = kubectl.run("create", "token", account, "-n", ns, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(admin.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    path = out / f"{account}.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "voile-e2e", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": account, "context": {"cluster": "voile-e2e", "user": account}}
                ],
                "current-context": account,
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def as_account(
    kubectl: Kubectl, kubeconfig: Path, release: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Kubectl]:
    out = tmp_path_factory.mktemp("tokens")
    return {a: Kubectl(token_kubeconfig(kubectl, kubeconfig, release, a, out)) for a in ACCOUNTS}


def can_i(k: Kubectl, verb: str, resource: str, where: str, release: str) -> bool:
    args = ["auth", "can-i", verb]
    base, _, sub = resource.partition("/")
    if (sub and base.endswith(".voile.dev")) or sub in {"status", "token"}:
        args += [base, f"--subresource={sub}"]
    else:
        args.append(resource)
    args += {
        ALL: ["-A"],
        RELEASE: ["-n", release],
        USER: ["-n", "default"],
        SYSTEM: ["-n", "kube-system"],
        CLUSTER: [],
    }[where]
    proc = k.run(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, f"can-i {args}: {proc.stdout} {proc.stderr}"
    return answer == "yes"


def test_tokens_authenticate_as_the_chart_accounts(
    as_account: dict[str, Kubectl], release: str
) -> None:
    for account, k in as_account.items():
        who = json.loads(k.run("auth", "whoami", "-o", "json").stdout)
        assert who["status"]["userInfo"]["username"] == (
            f"system:serviceaccount:{release}:{account}"
        )


def test_can_i_matrix(as_account: dict[str, Kubectl], release: str) -> None:
    rows, wrong = [], []
    for verb, resource, where, op_expected, agent_expected in MATRIX:
        got = [can_i(as_account[a], verb, resource, where, release) for a in ACCOUNTS]
        for account, expected, actual in zip(
            ACCOUNTS, (op_expected, agent_expected), got, strict=True
        ):
            if expected != actual:
                wrong.append(f"{account} {verb} {resource} ({where}): {actual}, want {expected}")
        rows.append((verb, resource, where, *("yes" if g else "no" for g in got)))
    header = ("VERB", "RESOURCE", "WHERE", "OPERATOR", "AGENT")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    table = "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    )
    print(
        f"\nkubectl auth can-i, with TokenRequest tokens of the chart's accounts "
        f"(release namespace {release}, user namespace default):\n{table}"
    )
    assert wrong == [], "\n".join(wrong)


# -- the real operator with only its ServiceAccount's permissions --------------------------------


def _wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _get(kubectl: Kubectl, *ref: str) -> dict[str, Any] | None:
    proc = kubectl.run("get", *ref, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def chart_command_and_env(
    kubectl: Kubectl, release: str, kind: str, name: str, fields: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command and VOILE_* environment of an installed workload, as its Pods would get them:
    ``fields`` stands in for the downward API (fieldRef paths -> values)."""
    obj = kubectl.json("get", kind, name, "-n", release)
    container = obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    env = {}
    for var in container.get("env", []):
        env[var["name"]] = (
            var["value"] if "value" in var else fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        )
    command = [str(REPO / ".venv" / "bin" / container["command"][0]), *container["command"][1:]]
    return command, env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def operator_process(
    kubectl: Kubectl, kubeconfig: Path, release: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """voile-operator as the chart's Deployment runs it (its command and environment), with the
    ServiceAccount token in place of the in-cluster one, and the metrics on a free port (this
    machine is shared)."""
    config = token_kubeconfig(kubectl, kubeconfig, release, "voile-operator", tmp_path)
    command, env = chart_command_and_env(
        kubectl,
        release,
        "deployment",
        "voile-operator",
        {"metadata.namespace": release, "metadata.name": OPERATOR_POD},
    )
    assert env["VOILE_NAMESPACE"] == release and env["VOILE_METRICS_PORT"] == "8080"
    port = _free_port()
    env |= {
        "VOILE_KUBECONFIG": str(config),
        "VOILE_METRICS_PORT": str(port),
        "VOILE_LOG_LEVEL": "debug",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, log, port
    finally:
        _stop(proc)


def test_operator_does_its_job_with_the_chart_rbac(
    kubectl: Kubectl, release: str, operator_process: tuple[subprocess.Popen[bytes], Path, int]
) -> None:
    """Allocation (VNI, address, claims, status, events, leader Lease) and release, all made by
    voile-operator authenticated as the chart's ServiceAccount; no request is forbidden."""
    proc, log, port = operator_process
    net, ep = f"rbac-{uuid.uuid4().hex[:5]}", "rbac-endpoint"
    objs = [
        catalogue.network(net, cidr="198.18.42.0/24"),
        catalogue.endpoint(
            ep, network=net, node="node-1", target={"netns": {"path": "/run/netns/x"}}
        ),
    ]
    try:
        kubectl.run(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}),
        )
        ep_ref = ("endpoints.voile.dev", ep, "-n", "default")
        got = _wait(
            "the Endpoint's address",
            lambda: ((_get(kubectl, *ep_ref) or {}).get("status") or {}).get("ip"),
        )
        assert got.startswith("198.18.42.")
        claim = f"{net}-{got.replace('.', '-')}"
        assert _get(kubectl, "ipclaims.voile.dev", claim) is not None
        vni = _wait(
            "the network's VNI",
            lambda: (
                (_get(kubectl, "overlaynetworks.voile.dev", net) or {}).get("status") or {}
            ).get("vni"),
        )
        assert _get(kubectl, "vniclaims.voile.dev", f"vni-{vni}") is not None
        lease = _get(kubectl, "lease", "voile-operator", "-n", release)
        assert lease is not None and lease["spec"]["holderIdentity"] == OPERATOR_POD
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        assert b"voile_operator_allocations_total" in metrics

        # Release: the operator drops its finalizers and deletes the claims.
        kubectl.run("delete", *ep_ref, "--wait=false")
        _wait("the Endpoint to go", lambda: _get(kubectl, *ep_ref) is None)
        assert _get(kubectl, "ipclaims.voile.dev", claim) is None
        kubectl.run("delete", "overlaynetworks.voile.dev", net, "--wait=false")
        _wait("the network to go", lambda: _get(kubectl, "overlaynetworks.voile.dev", net) is None)
        _wait(
            "the VNI claim to go",
            lambda: _get(kubectl, "vniclaims.voile.dev", f"vni-{vni}") is None,
        )
        assert proc.poll() is None, "the operator exited"
        text = log.read_text()
        assert "forbidden" not in text.lower(), text[-3000:]
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    else:
        warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
        print("\noperator warnings:", *warnings[:20], sep="\n  ")
    finally:
        # Whatever is left: no finalizer may keep it (the operator may be gone by now).
        for kind, name, ns in (
            ("endpoints.voile.dev", ep, "default"),
            ("overlaynetworks.voile.dev", net, None),
        ):
            where = ["-n", ns] if ns else []
            if _get(kubectl, kind, name, *where) is not None:
                kubectl.run(
                    "patch",
                    kind,
                    name,
                    *where,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
                kubectl.run(
                    "delete", kind, name, *where, "--ignore-not-found", "--wait=false", check=False
                )


# -- operator and agents together, each with only its ServiceAccount's token ---------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ready(kubectl: Kubectl, *ref: str) -> dict[str, Any] | None:
    obj = _get(kubectl, *ref)
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return obj
    return None


def test_operator_and_agents_do_their_job_with_the_chart_rbac(
    kubectl: Kubectl,
    kubeconfig: Path,
    release: str,
    tmp_path: Path,
    operator_process: tuple[subprocess.Popen[bytes], Path, int],
) -> None:
    """Two simulated hosts (own netns, own OVS) each run a real voile-agent with the command and
    environment of the installed DaemonSet and the agent ServiceAccount's token; the operator
    runs likewise as the Deployment says, with its own token. Two Endpoints on two nodes get
    plumbed (Ready=True, heartbeats in the release namespace) and reach each other over VXLAN;
    then deletion goes through both finalizers. No request of either component is forbidden."""
    from urllib.parse import urlparse

    from voile.lab.host import Fabric, LoopbackForwarder

    rid = uuid.uuid4().hex[:4]
    net = f"rbac-{rid}"
    agent_config = token_kubeconfig(kubectl, kubeconfig, release, "voile-agent", tmp_path)
    api = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    port = int(urlparse(api).port or 443)
    fabric = Fabric(tmp_path / "fabric", rid)
    forwarders: list[LoopbackForwarder] = []
    agents: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    endpoints: list[tuple[str, str]] = []  # (name, netns path)
    try:
        fabric.start()
        for index in (1, 2):
            host = fabric.host(index).start()
            forwarders.append(LoopbackForwarder(host.netns_path, port).start())
            node = f"rbac-{rid}-{host.name}"
            command, env = chart_command_and_env(
                kubectl,
                release,
                "daemonset",
                "voile-agent",
                {"metadata.namespace": release, "spec.nodeName": node},
            )
            assert env["VOILE_NODE"] == node and env["VOILE_DATAPATH_TYPE"] == "netdev"
            # The host's OVS paths stand in for the Pod's mounts; the token for the in-cluster one.
            env |= {
                "VOILE_OVSDB": host.ovsdb,
                "VOILE_OVS_RUNDIR": str(host.directory),
                "VOILE_KUBECONFIG": str(agent_config),
                # Each simulated host has its own socket and spool (the chart's are host paths).
                "VOILE_ATTACH_SOCKET": str(host.attach_socket),
                "VOILE_CNI_SPOOL_DIR": str(host.cni_spool_dir),
                "VOILE_HEARTBEAT_INTERVAL": "2",
                "VOILE_LOG_LEVEL": "debug",
            }
            log = host.directory / "agent.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", host.namespace, *command],
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            agents.append((node, proc, log))
            endpoints.append((f"rbac-{rid}-ep{index}", host.endpoint_namespace(f"ep{index}")))

        kubectl.run(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [
                        catalogue.network(net, cidr="198.18.43.0/24"),
                        *[
                            catalogue.endpoint(
                                name, network=net, node=node, target={"netns": {"path": path}}
                            )
                            for (name, path), (node, _, _) in zip(endpoints, agents, strict=True)
                        ],
                    ],
                }
            ),
        )
        ips = []
        for name, _ in endpoints:
            obj = _wait(
                f"{name} Ready",
                lambda n=name: _ready(kubectl, "endpoints.voile.dev", n, "-n", "default"),
                timeout=90,
            )
            assert "voile.dev/agent" in obj["metadata"]["finalizers"]
            assert obj["status"]["vtep"].startswith("198.18.0.")
            ips.append(obj["status"]["ip"])
        # What GitOps tools read, on the real objects: kstatus fields and the Argo CD Lua.
        scripts = argocd_health_scripts()
        network = _wait(
            "the network Ready", lambda: _ready(kubectl, "overlaynetworks.voile.dev", net)
        )
        for obj in (
            network,
            *(_get(kubectl, "endpoints.voile.dev", n, "-n", "default") for n, _ in endpoints),
        ):
            assert obj is not None
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
            types = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
            assert types.get("Stalled") != "True" and types.get("Reconciling") != "True", types
            assert argocd_health(scripts[obj["kind"]], obj)[0] == "Healthy", obj["status"]
        for node, _, _ in agents:
            lease = _get(kubectl, "lease", f"voile-agent-{node}", "-n", release)
            assert lease is not None and lease["spec"]["holderIdentity"] == node
        ns1 = Path(endpoints[0][1]).name
        _wait(
            "ping over the overlay",
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", ns1, "ping", "-n", "-c", "1", "-W", "2", ips[1]],
                    capture_output=True,
                    timeout=10,
                    check=False,
                ).returncode
                == 0
            ),
            timeout=45,
        )

        # A CNI ADD and DEL through the first agent's local API: it creates and deletes the
        # Endpoint with its own token, and the operator allocates it.
        cni_attach_and_detach(fabric.hosts[0], net, endpoints[0][1])

        for name, _ in endpoints:
            kubectl.run("delete", "endpoints.voile.dev", name, "-n", "default", "--wait=false")
        for name, _ in endpoints:
            _wait(
                f"{name} to go",
                lambda n=name: _get(kubectl, "endpoints.voile.dev", n, "-n", "default") is None,
            )
        kubectl.run("delete", "overlaynetworks.voile.dev", net, "--wait=false")
        _wait("the network to go", lambda: _get(kubectl, "overlaynetworks.voile.dev", net) is None)

        logs = {"operator": operator_process[1], **{node: log for node, _, log in agents}}
        for who, log in logs.items():
            text = log.read_text()
            assert "forbidden" not in text.lower() and " 403" not in text, f"{who}:\n{text[-3000:]}"
        for node, proc, _ in agents:
            assert proc.poll() is None, f"agent {node} exited"
    except BaseException:
        for node, _, log in agents:
            print(f"\n==== agent {node}\n{log.read_text()[-4000:]}")
        print(f"\n==== operator\n{operator_process[1].read_text()[-4000:]}")
        raise
    finally:
        for _, proc, _ in agents:
            _stop(proc)
        for fwd in forwarders:
            fwd.stop()
        for name, _ in endpoints:
            kubectl.run(
                "patch",
                "endpoints.voile.dev",
                name,
                "-n",
                "default",
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
            kubectl.run(
                "delete",
                "endpoints.voile.dev",
                name,
                "-n",
                "default",
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )
        kubectl.run(
            "patch",
            "overlaynetworks.voile.dev",
            net,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        kubectl.run(
            "delete",
            "overlaynetworks.voile.dev",
            net,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
        fabric.stop()


def cni_attach_and_detach(host: Any, network: str, netns: str) -> None:
    from tests.cni import invoke, runtime_conf
    from voile.lab import cni

    plugin = cni.plugin()
    conf = runtime_conf(
        cni.plugin_conf(network, socket=host.attach_socket, spool_dir=host.cni_spool_dir),
        name=network,
    )
    how = {"container_id": uuid.uuid4().hex * 2, "netns": netns, "ifname": "net1"}
    added = invoke(plugin, "ADD", conf, **how)
    assert added.rc == 0, added
    assert added.json["ips"][0]["address"].startswith("198.18.43.")
    deleted = invoke(plugin, "DEL", conf, **how)
    assert deleted.rc == 0 and not list(host.cni_spool_dir.glob("*.json")), deleted
