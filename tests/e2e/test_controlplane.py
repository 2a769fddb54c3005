"""The development control plane is a real Kubernetes API: CRDs, CRUD, watch, schema rejection."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.conftest import venv_bin
from voile.controlplane import ControlPlane, Endpoints

GROUP, VERSION, PLURAL = "widgets.test.voile.dev", "v1", "gadgets"

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "gadget", "kind": "Gadget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                    "color": {"type": "string"},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def api(control_plane: Endpoints) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


def gadget(name: str, size: object) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def test_crd_lifecycle_watch_and_schema_rejection(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(CRD)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conds = {c.type: c.status for c in (crd.status.conditions or [])}
        if conds.get("Established") == "True":
            break
        time.sleep(0.2)
    else:
        pytest.fail("CRD never became Established")

    objs = client.CustomObjectsApi(api)
    ns = "default"
    # Watch from now on in a thread, to see ADDED, MODIFIED and DELETED.
    rv = objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["metadata"][
        "resourceVersion"
    ]
    seen: list[tuple[str, str, int]] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(
            objs.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            resource_version=rv,
            timeout_seconds=30,
        ):
            obj = event["object"]
            seen.append((event["type"], obj["metadata"]["name"], obj["spec"]["size"]))
            if event["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=consume, daemon=True)
    watcher.start()

    objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, gadget("one", 3))
    objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, gadget("two", 4))
    listed = objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["one", "two"]

    patched = objs.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "one", {"spec": {"size": 7}}
    )
    assert patched["spec"]["size"] == 7
    assert patched["metadata"]["generation"] == 2

    with pytest.raises(ApiException) as rejected:
        objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, gadget("big", 11))
    assert rejected.value.status == 422
    assert "spec.size" in rejected.value.body
    with pytest.raises(ApiException) as wrong_type:
        objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, gadget("str", "huge"))
    assert wrong_type.value.status == 422

    objs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "one")
    watcher.join(timeout=30)
    assert ("ADDED", "one", 3) in seen
    assert ("ADDED", "two", 4) in seen
    assert ("MODIFIED", "one", 7) in seen
    assert ("DELETED", "one", 7) in seen
    assert not any(name in ("big", "str") for _, name, _ in seen)
    remaining = objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    assert [i["metadata"]["name"] for i in remaining] == ["two"]
    ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")


def _process_lives(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state field follows "(comm)"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cli_up_readyz_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "cp"
    env = {**os.environ}
    up = subprocess.run(
        [venv_bin("voile"), "controlplane", "up", "--dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    last = up.stdout.strip().splitlines()[-1]
    assert last.startswith("export KUBECONFIG=")
    kubeconfig = last.split("=", 1)[1]
    again = subprocess.run(  # idempotent: same control plane, same kubeconfig
        [venv_bin("voile"), "controlplane", "up", "--dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    assert again.stdout.strip().splitlines()[-1] == last

    plane = ControlPlane(state)
    running = plane.running()
    assert running is not None
    readyz = subprocess.run(
        ["kubectl", "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        env={**env, "KUBECONFIG": kubeconfig},
        timeout=60,
        check=True,
    )
    assert readyz.stdout.strip() == "ok"
    port = int(running.server.rsplit(":", 1)[1])
    etcd_port = int(running.etcd_url.rsplit(":", 1)[1])

    for _ in range(2):  # idempotent: the second down finds nothing and succeeds
        subprocess.run(
            [venv_bin("voile"), "controlplane", "down", "--dir", str(state)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
    assert not state.exists()
    for pid in (running.apiserver_pid, running.etcd_pid):
        assert not _process_lives(pid)
    assert not _listening(port)
    assert not _listening(etcd_port)


def test_node_kubeconfig_authenticates_as_the_node(
    control_plane: Endpoints, tmp_path: Path
) -> None:
    plane = ControlPlane(control_plane.directory)
    kubeconfig = plane.issue_node_kubeconfig("n1", tmp_path / "n1")
    assert sorted(p.name for p in kubeconfig.parent.iterdir()) == [
        "ca.crt",
        "kubeconfig",
        "node.crt",
        "node.key",
    ]
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]
    whoami = subprocess.run(
        [*kubectl, "auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"username":"system:node:n1"' in whoami.stdout
    assert '"system:nodes"' in whoami.stdout
    # RBAC only: a node has no rights until someone binds the system:node ClusterRole.
    can_i = subprocess.run(
        [*kubectl, "auth", "can-i", "create", "nodes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert can_i.stdout.strip() == "no"
