"""Installing Voile as users do: the Helm chart and plain manifests, against the real API server.

Real: the pinned helm CLI (hack/helm/build.sh), kubectl with its built-in kustomize, etcd and
kube-apiserver (admission, schema validation, server-side apply, RBAC objects, CRD cleanup).
Not here: kube-controller-manager, scheduler, kubelets. So Pods never run (nothing waits for them)
and a deleted Namespace stays Terminating (counted as removed). Every test removes what it made,
also on failure, and restores the session's CRDs (tests.e2e.chart.without_voile_crds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import catalogue
from tests.e2e.chart import (
    CHART,
    CRD_DIR,
    CRD_NAMES,
    LUA,
    MANIFESTS,
    REPO,
    Helm,
    argocd_health,
    argocd_health_scripts,
    container_env,
    existing_crds,
    find,
    helm_binary,
    stderr_without_symlink_notes,
    voile_objects,
    wait_crds_gone,
    wait_crds_served,
    without_voile_crds,
)
from tests.e2e.conftest import Kubectl

# A non-default set of values: every knob the issue names, changed.
CUSTOM_VALUES = {
    "image.repository": "registry.example.test/voile",
    "image.tag": "9.9.9",
    "image.pullPolicy": "Always",
    "datapathType": "netdev",
    "vtepInterface": "eth1",
    "underlayInterface": "eth1",
    "vxlanPort": "4790",
    "underlayMTU": "9000",
    "logLevel": "debug",
    "logFormat": "json",
    "metrics.enabled": "false",
    "agentDeadAfter": "120",
    "operator.replicas": "3",
    "operator.resources.limits.memory": "1Gi",
    "agent.tolerations[0].key": "node-role.kubernetes.io/control-plane",
    "agent.tolerations[0].operator": "Exists",
    "agent.nodeSelector.voile\\.dev/enabled": "yes",
    "agent.privileged": "true",
    "agent.hostProc": "true",
    "crds.keep": "true",
    "namespace.create": "true",
}


@pytest.fixture(scope="module")
def helm(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary(), kubeconfig, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def no_crds(kubectl: Kubectl) -> Iterator[None]:
    with without_voile_crds(kubectl):
        yield


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- lint and template (no API server needed, but the same helm) --------------------------------


def test_helm_lint_is_clean(helm: Helm) -> None:
    for args in ([], ["--set", "datapathType=netdev,vtepIP=198.18.0.10,namespace.create=true"]):
        proc = helm.run("lint", "--strict", str(CHART), *args)
        assert "0 chart(s) failed" in proc.stdout, proc.stdout
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_crds_come_from_crds_dir_not_a_copy(helm: Helm) -> None:
    """charts/voile/files/crds is a symlink to crds/; the rendered CRDs equal those files."""
    link = CHART / "files" / "crds"
    assert link.is_symlink() and link.resolve() == CRD_DIR.resolve()
    assert not (CHART / "crds").exists(), "a crds/ dir in the chart would be a second copy"
    rendered = {
        o["metadata"]["name"]: o
        for o in helm.template("voile-system")
        if o["kind"] == "CustomResourceDefinition"
    }
    assert sorted(rendered) == sorted(CRD_NAMES)
    for path in CRD_DIR.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        got = rendered[source["metadata"]["name"]]
        assert got["spec"] == source["spec"], path.name
        assert got["metadata"]["labels"]["app.kubernetes.io/part-of"] == "voile"


def test_package_includes_the_crds(helm: Helm, tmp_path: Path) -> None:
    """`helm package` follows the symlink: the packaged chart is self-contained."""
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("voile-*.tgz")
    names = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(n for n in names if "/files/crds/" in n) == sorted(
        f"voile/files/crds/{p.name}" for p in CRD_DIR.glob("*.yaml")
    )


def test_template_default_values(helm: Helm) -> None:
    objs = helm.template("voile-system")
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == sorted(
        {
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "DaemonSet",
            "Service",
        }
    )
    assert not [o for o in objs if o["kind"] == "Namespace"], "helm convention: --create-namespace"
    for o in objs:
        if o["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert o["metadata"]["namespace"] == "voile-system", o["metadata"]
    ds = find(objs, "DaemonSet", "voile-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == "voile-agent"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    env = container_env(ds)
    assert env["VOILE_NODE"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["VOILE_VTEP_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert "VOILE_UNDERLAY_INTERFACE" not in env
    assert env["VOILE_DATAPATH_TYPE"] == "system"
    assert (env["VOILE_DATAPATH"], env["VOILE_BPFFS"]) == ("auto", "/sys/fs/bpf")
    assert env["VOILE_VXLAN_PORT"] == "4789"
    assert env["VOILE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    container = pod["containers"][0]
    assert container["command"] == ["voile-agent", "run"]
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN", "SYS_ADMIN"],
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {
        "/run/openvswitch",
        "/sys/fs/bpf",  # ebpf: the node's bpffs, so pins outlive the pod
        "/var/run/netns",
        "/run/voile",
        "/var/lib/voile/cni-pending",
        "/host/cni/bin",  # the plugin install-cni wrote, removed on uninstall
    }
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    # helm uninstall: the agent watches its DaemonSet and cleans the node when it is deleted.
    assert env["VOILE_OWNER_DAEMONSET"] == "voile-agent"
    assert env["VOILE_CNI_BIN_FILE"] == "/host/cni/bin/voile"
    assert "VOILE_CNI_CONF_FILE" not in env
    role = find(objs, "Role", "voile-agent")
    assert {
        "apiGroups": ["apps"],
        "resources": ["daemonsets"],
        "resourceNames": ["voile-agent"],
        "verbs": ["get", "list", "watch"],
    } in role["rules"]
    assert env["VOILE_ATTACH_SOCKET"] == "/run/voile/agent.sock"
    dep = find(objs, "Deployment", "voile-operator")
    assert dep["spec"]["replicas"] == 2
    env = container_env(dep)
    assert env["VOILE_UNDERLAY_MTU"] == "1500"
    assert env["VOILE_METRICS_PORT"] == "8080"
    assert env["VOILE_AGENT_DEAD_AFTER"] == "300"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert find(objs, "ServiceAccount", "voile-operator")
    assert find(objs, "ServiceAccount", "voile-agent")


def test_template_custom_values(helm: Helm) -> None:
    objs = helm.template("net-ops", CUSTOM_VALUES)
    assert (
        find(objs, "Namespace", "net-ops")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "privileged"
    )
    ds, dep = find(objs, "DaemonSet", "voile-agent"), find(objs, "Deployment", "voile-operator")
    for workload in (ds, dep):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example.test/voile:9.9.9"
        assert container["imagePullPolicy"] == "Always"
        assert "ports" not in container
    env = container_env(ds)
    assert env["VOILE_VTEP_INTERFACE"] == "eth1" and "VOILE_VTEP_IP" not in env
    assert env["VOILE_UNDERLAY_INTERFACE"] == "eth1"
    assert (env["VOILE_DATAPATH_TYPE"], env["VOILE_VXLAN_PORT"]) == ("netdev", "4790")
    assert (env["VOILE_LOG_LEVEL"], env["VOILE_LOG_FORMAT"]) == ("debug", "json")
    assert env["VOILE_METRICS_PORT"] == "0"
    pod = ds["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"] == {"privileged": True}
    assert {"mountPath": "/host/proc", "name": "host-proc", "readOnly": True} in pod["containers"][
        0
    ]["volumeMounts"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "voile.dev/enabled": "yes"}
    assert pod["tolerations"] == [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
    ]
    env = container_env(dep)
    assert (env["VOILE_UNDERLAY_MTU"], env["VOILE_AGENT_DEAD_AFTER"]) == ("9000", "120")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "1Gi"
    }
    assert not [o for o in objs if o["kind"] == "Service"]
    for o in objs:
        if o["kind"] == "CustomResourceDefinition":
            assert o["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"datapathType": "dpdk"}, "/datapathType"),
        ({"datapath": "xdp"}, "/datapath"),
        ({"vtepIP": "198.18.0.300"}, "/vtepIP"),
        ({"vtepInterface": "an-interface-name-too-long"}, "/vtepInterface"),
        ({"vtepInterface": "eth1", "vtepIP": "198.18.0.1"}, "'not' failed"),
        ({"vxlanPort": "70000"}, "/vxlanPort"),
        ({"underlayMTU": "100"}, "/underlayMTU"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
        ({"agent.allowedNetnsDirs[0]": "relative/dir"}, "/agent/allowedNetnsDirs/0"),
        ({"operator.replicaCount": "2"}, "replicaCount"),
        ({"metrics.port": "0"}, "/metrics/port"),
        ({"cni.mode": "chained"}, "/cni/mode"),
        ({"cni.mode": "primary"}, "/cni/network"),
        ({"cni.binDir": "opt/cni/bin"}, "/cni/binDir"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, str], complaint: str) -> None:
    args = ["template", "voile", str(CHART)]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    proc = helm.run(*args, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr, stderr_without_symlink_notes(proc.stderr)


# -- against the API server ---------------------------------------------------------------------


def _apply_server_side(kubectl: Kubectl, objs: list[dict[str, Any]]) -> None:
    """CRDs first (and wait for them), then the rest, as `kubectl apply --server-side`."""
    crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
    for batch in (crds, rest):
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": batch})
        kubectl.run("apply", "--server-side", "--field-manager=voile-e2e", "-f", "-", input=doc)
        if batch is crds:
            wait_crds_served(kubectl)


def _delete(kubectl: Kubectl, objs: list[dict[str, Any]]) -> None:
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    kubectl.run("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=doc)


@pytest.mark.parametrize("values", [{}, CUSTOM_VALUES], ids=["default", "custom"])
def test_rendered_objects_apply_server_side(
    helm: Helm, kubectl: Kubectl, no_crds: None, values: dict[str, str]
) -> None:
    ns = _unique("voile-e2e-ssa")
    before = set(voile_objects(kubectl))  # other tests' leftovers in this shared API server
    objs = helm.template(ns, {**values, "namespace.create": "true"})
    try:
        _apply_server_side(kubectl, objs)
        # Applying the same objects again changes nothing (idempotent, no conflicts).
        _apply_server_side(kubectl, objs)
        ds = kubectl.json("get", "daemonset", "voile-agent", "-n", ns)
        assert ds["spec"]["template"]["spec"]["hostNetwork"] is True  # type: ignore[index]
        assert existing_crds(kubectl) == sorted(CRD_NAMES)
    finally:
        _delete(kubectl, objs)
        wait_crds_gone(kubectl)
    assert set(voile_objects(kubectl)) - before == set()


def test_manifests_are_up_to_date() -> None:
    """manifests/voile.yaml is what `make manifests` renders from the chart now."""
    proc = subprocess.run(
        [str(REPO / "hack" / "manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifests_apply_with_kustomize(kubectl: Kubectl, no_crds: None, tmp_path: Path) -> None:
    """`kubectl apply --server-side -k manifests/`, here through an overlay that moves it to a
    fresh namespace (voile-system itself would stay Terminating for the rest of the session)."""
    ns = _unique("voile-e2e-kustomize")
    before = set(voile_objects(kubectl))  # other tests' leftovers in this shared API server
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(MANIFESTS, overlay)  # kustomize accepts only relative resources
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: {ns}\nresources:\n  - {rel}\n"
    )
    try:
        kubectl.run("apply", "--server-side", "-k", str(overlay))
        wait_crds_served(kubectl)
        assert existing_crds(kubectl) == sorted(CRD_NAMES)
        binding = kubectl.json("get", "clusterrolebinding", "voile-agent")
        assert binding["subjects"] == [  # the overlay moved the subjects along
            {"kind": "ServiceAccount", "name": "voile-agent", "namespace": ns}
        ]
        kubectl.json("get", "deployment", "voile-operator", "-n", ns)
    finally:
        kubectl.run("delete", "--ignore-not-found", "--wait=false", "-k", str(overlay))
        wait_crds_gone(kubectl)
    assert set(voile_objects(kubectl)) - before == set()


def test_helm_install_upgrade_uninstall(helm: Helm, kubectl: Kubectl, no_crds: None) -> None:
    """The documented life cycle (docs/install.md): install, upgrade, delete the Voile objects,
    uninstall, delete the namespace. Afterwards no Voile object is left in the API."""
    ns = _unique("voile-e2e-helm")
    net = "e2e-install-net"
    before = set(voile_objects(kubectl))  # other tests' leftovers in this shared API server
    try:
        notes = helm.run("install", "voile", str(CHART), "-n", ns, "--create-namespace").stdout
        print(notes)
        assert f"is installed in namespace {ns}" in notes, notes
        assert "each node's own address (status.hostIP)" in notes, notes
        assert existing_crds(kubectl) == sorted(CRD_NAMES)
        wait_crds_served(kubectl)
        assert (
            kubectl.json("get", "deployment", "voile-operator", "-n", ns)["spec"][
                "replicas"  # type: ignore[index]
            ]
            == 2
        )

        helm.run(
            "upgrade",
            "voile",
            str(CHART),
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "logLevel=debug,operator.replicas=1,datapathType=netdev",
        )
        status = json.loads(helm.run("status", "voile", "-n", ns, "-o", "json").stdout)
        assert (status["version"], status["info"]["status"]) == (2, "deployed")
        env = container_env(kubectl.json("get", "daemonset", "voile-agent", "-n", ns))
        assert (env["VOILE_LOG_LEVEL"], env["VOILE_DATAPATH_TYPE"]) == ("debug", "netdev")

        # A user's object, left in place: no operator runs here, so it carries no finalizer and
        # the CRD's removal takes it along (with Voile running, docs/install.md deletes first).
        kubectl.run(
            "apply",
            "-f",
            "-",
            input=json.dumps(catalogue.network(net, cidr="198.18.40.0/24")),
        )
        present = voile_objects(kubectl)
        for expected in (
            f"OverlayNetwork {net}",
            f"DaemonSet {ns}/voile-agent",
            "ClusterRole voile-operator",
            f"RoleBinding {ns}/voile-agent",
            "CustomResourceDefinition ipclaims.voile.dev",
            f"Namespace {ns}",
        ):
            assert expected in present, present

        proc = helm.run("uninstall", "voile", "-n", ns)
        assert "uninstalled" in proc.stdout
        wait_crds_gone(kubectl)
        kubectl.run("delete", "namespace", ns, "--wait=false")
        assert set(voile_objects(kubectl)) - before == set()
    finally:
        helm.run("uninstall", "voile", "-n", ns, "--ignore-not-found", check=False)
        kubectl.run("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)


# -- Argo CD health check from docs/install.md --------------------------------------------------


def _cond(type_: str, status: str, reason: str = "R", gen: int = 1) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": f"{type_} says",
        "observedGeneration": gen,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


HEALTH_CASES = [
    ("no status yet", None, "Progressing"),
    (
        "generation not observed",
        {"observedGeneration": 1, "conditions": [_cond("Ready", "True")]},
        "Progressing",
    ),
    (
        "reconciling",
        {"observedGeneration": 2, "conditions": [_cond("Reconciling", "True")]},
        "Progressing",
    ),
    (
        "not ready yet",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "False", "WaitingForAllocation"),
                _cond("Reconciling", "True"),
            ],
        },
        "Progressing",
    ),
    (
        "stalled",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "False", "AddressTaken"),
                _cond("Stalled", "True", "AddressTaken"),
            ],
        },
        "Degraded",
    ),
    (
        "ready",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "True", "Ready"),
                _cond("Reconciling", "False"),
                _cond("Stalled", "False"),
            ],
        },
        "Healthy",
    ),
    (
        "ready but a pair of nodes cannot reach each other",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "True", "Ready"),
                _cond("Stalled", "False"),
                _cond("DataPathHealthy", "False", "BrokenPairs"),
                _cond("MTUVerified", "Unknown", "NotProbedYet"),
            ],
        },
        "Degraded",
    ),
    (
        "ready but full-size packets are lost",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "True", "Ready"),
                _cond("DataPathHealthy", "True", "Healthy"),
                _cond("MTUVerified", "False", "MTUTooSmall"),
            ],
        },
        "Degraded",
    ),
    (
        "ready and the probes pass",
        {
            "observedGeneration": 2,
            "conditions": [
                _cond("Ready", "True", "Ready"),
                _cond("DataPathHealthy", "True", "Healthy"),
                _cond("MTUVerified", "True", "Verified"),
            ],
        },
        "Healthy",
    ),
]


@pytest.mark.skipif(shutil.which(LUA) is None, reason=f"{LUA} is not installed (apt: lua5.1)")
@pytest.mark.parametrize(
    ("case", "status", "expected"), HEALTH_CASES, ids=[c[0] for c in HEALTH_CASES]
)
def test_argocd_health_lua(case: str, status: dict[str, Any] | None, expected: str) -> None:
    scripts = argocd_health_scripts()
    assert sorted(scripts) == ["Endpoint", "OverlayNetwork"]
    for kind, script in scripts.items():
        obj: dict[str, Any] = {
            "apiVersion": "voile.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x", "generation": 2},
        }
        if status is not None:
            obj["status"] = status
        got, message = argocd_health(script, obj)
        assert got == expected, f"{kind} {case}: {got} {message}"
        if expected == "Degraded":
            assert status is not None
            causes = [(x["type"], x["status"]) for x in status["conditions"]]
            cause = next(x for x in status["conditions"] if (x["type"], x["status"]) in
                         {("Stalled", "True"), ("DataPathHealthy", "False"),
                          ("MTUVerified", "False")})  # fmt: skip
            assert cause["message"] in message, (causes, message)


def test_template_optional_parts(helm: Helm) -> None:
    """crds.install=false leaves the CRDs out; the user-facing aggregated roles can be left out."""
    default = helm.template("voile-system")
    edit = find(default, "ClusterRole", "voile-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert find(default, "ClusterRole", "voile-view")["rules"][0]["verbs"] == [
        "get",
        "list",
        "watch",
    ]
    lean = helm.template(
        "voile-system", {"crds.install": "false", "rbac.aggregateToDefaultRoles": "false"}
    )
    kinds = {o["kind"] for o in lean}
    assert "CustomResourceDefinition" not in kinds
    names = {o["metadata"]["name"] for o in lean if o["kind"] == "ClusterRole"}
    assert names == {"voile-operator", "voile-agent"}


def test_template_cni_plugin_install(helm: Helm) -> None:
    """The agent DaemonSet's init container copies the plugin onto the node (delegate mode:
    nothing else); primary mode also writes a conflist for cni.network; the agent serves its
    attach socket and finishes pending DELs from the host directories the plugin uses."""
    ds = find(helm.template("voile-system"), "DaemonSet", "voile-agent")
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    script = init["command"][-1]
    assert "cp /opt/voile/cni/voile /host/cni/bin/.voile.tmp" in script
    assert "mv -f /host/cni/bin/.voile.tmp /host/cni/bin/voile" in script
    assert "net.d" not in script and "env" not in init
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cni-bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert "cni-conf" not in volumes
    env = container_env(ds)
    assert env["VOILE_ATTACH_SOCKET"] == "/run/voile/agent.sock"
    assert env["VOILE_CNI_SPOOL_DIR"] == "/var/lib/voile/cni-pending"

    values = {
        "cni.mode": "primary",
        "cni.network": "pods",
        "cni.confDir": "/etc/cni/custom.d",
        "cni.binDir": "/usr/libexec/cni",
        "cni.confName": "05-voile.conflist",
    }
    ds = find(helm.template("voile-system", values), "DaemonSet", "voile-agent")
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "/host/cni/net.d/05-voile.conflist" in init["command"][-1]
    conflist = json.loads(init["env"][0]["value"])
    assert conflist == {
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {
                "type": "voile",
                "network": "pods",
                "socket": "/run/voile/agent.sock",
                "spoolDir": "/var/lib/voile/cni-pending",
                "capabilities": {"ips": True, "mac": True},
                "podNetworkAnnotation": True,
            }
        ],
    }
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert (volumes["cni-conf"], volumes["cni-bin"]) == ("/etc/cni/custom.d", "/usr/libexec/cni")
    assert container_env(ds)["VOILE_CNI_CONF_FILE"] == "/host/cni/net.d/05-voile.conflist"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert (mounts["cni-conf"], mounts["cni-bin"]) == ("/host/cni/net.d", "/host/cni/bin")

    objs = helm.template("voile-system", {**values, "agent.cleanupOnUninstall": "false"})
    ds = find(objs, "DaemonSet", "voile-agent")
    env = container_env(ds)
    assert not {"VOILE_OWNER_DAEMONSET", "VOILE_CNI_BIN_FILE", "VOILE_CNI_CONF_FILE"} & set(env)
    mounts = {m["name"] for m in ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert not {"cni-bin", "cni-conf"} & mounts
    assert not [r for r in find(objs, "Role", "voile-agent")["rules"] if "apps" in r["apiGroups"]]

    ds = find(helm.template("voile-system", {"cni.enabled": "false"}), "DaemonSet", "voile-agent")
    assert "initContainers" not in ds["spec"]["template"]["spec"]
    assert container_env(ds)["VOILE_CNI_SPOOL_DIR"] == ""
