"""Helpers for the install tests: the pinned helm, rendering the chart, finding Voile objects.

Real: the helm CLI built by hack/helm/build.sh, kubectl, the session's kube-apiserver. Not here:
kube-controller-manager, scheduler and kubelets, so Pods never run and a deleted Namespace stays
Terminating; nothing here waits for those.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "voile"
MANIFESTS = REPO / "manifests"
CRD_DIR = REPO / "crds"
CRD_NAMES = (
    "endpoints.voile.dev",
    "ipclaims.voile.dev",
    "overlaynetworks.voile.dev",
    "traces.voile.dev",
    "vniclaims.voile.dev",
)
# helm follows the files/crds symlink and says so on stderr; that line is expected.
SYMLINK_NOTE = "found symbolic link in path"


def helm_binary() -> Path:
    """The pinned helm (built once and cached by hack/helm/build.sh)."""
    proc = subprocess.run(
        [str(REPO / "hack" / "helm" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=True,
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def stderr_without_symlink_notes(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if SYMLINK_NOTE not in line)


class Helm:
    """Runs the pinned helm against the session's API server, with private helm state dirs."""

    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                f"{stderr_without_symlink_notes(proc.stderr)}\n{proc.stdout}"
            )
        return proc

    def template(
        self, namespace: str, values: Mapping[str, str] | None = None, *extra: str
    ) -> list[dict[str, Any]]:
        """``helm template`` of charts/voile, parsed into objects."""
        args = ["template", "voile", str(CHART), "--namespace", namespace]
        for key, value in (values or {}).items():
            args += ["--set", f"{key}={value}"]
        text = self.run(*args, *extra).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container_env(workload: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom dict) of the first container's environment."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _is_voile(item: dict[str, Any]) -> bool:
    meta = item.get("metadata") or {}
    labels = meta.get("labels") or {}
    group = str(item.get("apiVersion", "")).split("/")[0]
    return (
        group == "voile.dev"
        or labels.get("app.kubernetes.io/part-of") == "voile"
        or labels.get("app.kubernetes.io/managed-by") == "voile"
        or str(meta.get("name", "")).startswith("voile")
        or (item.get("kind") == "CustomResourceDefinition" and meta["name"].endswith(".voile.dev"))
    )


def voile_objects(kubectl: Kubectl) -> list[str]:
    """Every object in the API that belongs to Voile: its API group, its labels, or a name that
    starts with ``voile``, in every namespace and of every listable kind. Not counted: a
    Namespace already being deleted (that needs kube-controller-manager), and Events, which the
    API server itself expires (--event-ttl, default 1 h)."""
    kinds = kubectl.run("api-resources", "--verbs=list", "-o", "name").stdout.split()
    listing = json.loads(kubectl.run("get", ",".join(kinds), "-A", "-o", "json").stdout)
    found = []
    for item in listing["items"]:
        meta = item.get("metadata") or {}
        if item.get("kind") == "Namespace" and meta.get("deletionTimestamp"):
            continue
        if item.get("kind") == "Event":
            continue
        if _is_voile(item):
            ns = meta.get("namespace")
            found.append(f"{item['kind']} {ns + '/' if ns else ''}{meta['name']}")
    return sorted(set(found))


def existing_crds(kubectl: Kubectl) -> list[str]:
    out = kubectl.run("get", "crd", "-o", "name").stdout.split()
    return [n.split("/", 1)[1] for n in out if n.split("/", 1)[1] in CRD_NAMES]


def wait_crds_served(kubectl: Kubectl, timeout: float = 60.0) -> None:
    """Bounded wait until every Voile CRD is Established and its objects can be listed.

    Why listing too: right after a CRD is created its storage may still be initializing; a CRD
    deleted then fails its instance cleanup ("storage is (re)initializing") and the API server's
    finalizer retries with a growing backoff."""
    deadline = time.monotonic() + timeout
    for name in CRD_NAMES:
        kubectl.run(
            "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", f"crd/{name}"
        )
        while kubectl.run("get", name, "-A", "-o", "name", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not served after {timeout}s")
            time.sleep(0.3)


def _nudge_stuck_crd_cleanup(kubectl: Kubectl, names: list[str]) -> None:
    """Requeue the API server's CRD finalizer for CRDs whose instance cleanup failed: an update
    of the CRD enqueues it at once, instead of after the failed attempts' backoff."""
    for name in names:
        crd = kubectl.json("get", "crd", name)
        for cond in (crd.get("status") or {}).get("conditions") or []:  # type: ignore[union-attr]
            if cond.get("reason") == "InstanceDeletionFailed":
                kubectl.run(
                    "annotate",
                    "--overwrite",
                    "crd",
                    name,
                    f"voile.dev/e2e-nudge={time.monotonic_ns()}",
                    check=False,
                )


def wait_crds_gone(kubectl: Kubectl, timeout: float = 90.0) -> None:
    """Bounded wait until no Voile CRD is left (their cleanup runs inside kube-apiserver)."""
    deadline = time.monotonic() + timeout
    nudge_at = time.monotonic() + 5
    while existing_crds(kubectl):
        if time.monotonic() > nudge_at:
            _nudge_stuck_crd_cleanup(kubectl, existing_crds(kubectl))
            nudge_at = time.monotonic() + 5
        if time.monotonic() > deadline:
            left = existing_crds(kubectl)
            states = [
                (name, (kubectl.json("get", "crd", name).get("status") or {}).get("conditions"))
                for name in left
            ]
            raise AssertionError(f"Voile CRDs still present after {timeout}s: {states}")
        time.sleep(0.5)


def apply_crds_from_repo(kubectl: Kubectl) -> None:
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in sorted(CRD_DIR.glob("*.yaml")):
        args += ["-f", str(path)]
    kubectl.run(*args)
    wait_crds_served(kubectl)


@contextlib.contextmanager
def without_voile_crds(kubectl: Kubectl) -> Iterator[None]:
    """Run a block on an API server without Voile's CRDs (installs must create them, uninstalls
    must remove them); afterwards remove what the block left and put back the CRDs from crds/
    if other tests of the session had installed them."""
    had = existing_crds(kubectl)
    if had:
        kubectl.run("delete", "crd", *had, "--wait=false")
        wait_crds_gone(kubectl)
    try:
        yield
    finally:
        left = existing_crds(kubectl)
        if left:
            kubectl.run("delete", "crd", *left, "--wait=false")
            wait_crds_gone(kubectl)
        if had:
            apply_crds_from_repo(kubectl)


# -- Argo CD health check (the Lua in docs/install.md) ------------------------------------------

DOCS = REPO / "docs" / "install.md"
LUA = "lua5.1"  # Argo CD runs gopher-lua, a Lua 5.1


def argocd_health_scripts() -> dict[str, str]:
    """Kind -> the health Lua of the argocd-cm snippet in docs/install.md (YAML anchors and all)."""
    text = DOCS.read_text()
    for block in text.split("```yaml")[1:]:
        body = block.split("```", 1)[0]
        if "resource.customizations.health" in body:
            data = yaml.safe_load(body)["data"]
            prefix = "resource.customizations.health.voile.dev_"
            return {k.removeprefix(prefix): v for k, v in data.items() if k.startswith(prefix)}
    raise AssertionError("no Argo CD health snippet in docs/install.md")


def _lua_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string for our ASCII values
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (
            f"[{json.dumps(k)}] = {_lua_literal(v)}" for k, v in value.items() if v is not None
        )
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def argocd_health(script: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """Run a health script as Argo CD does (global ``obj``, returns a table) with lua5.1."""
    program = (
        f"obj = {_lua_literal(dict(obj))}\n"
        f"local function health()\n{script}\nend\n"
        "local hs = health()\n"
        'io.write(hs.status, "\\t", hs.message or "")\n'
    )
    proc = subprocess.run(
        [LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    status, _, message = proc.stdout.partition("\t")
    return status, message
