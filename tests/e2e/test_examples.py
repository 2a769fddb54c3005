"""Every folder under examples/ applies cleanly with `kubectl apply -f <folder>` and is stored as
written. Real: etcd, kube-apiserver, kubectl, and Multus's NetworkAttachmentDefinition CRD
(tests/e2e/multus-crd.yaml) for examples/05-multus. Not here: the operator and agents (tests of
the whole system apply the same examples in the lab). Each test deletes what it applied, also on
failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Kubectl
from tests.e2e.test_crds import crds  # noqa: F401  (the session fixture that installs crds/)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FOLDERS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit())
MULTUS_CRD = Path(__file__).with_name("multus-crd.yaml")
# kind -> (resource, namespaced); the Voile kinds are compared with what the API server stored.
KINDS = {
    "OverlayNetwork": ("overlaynetworks.voile.dev", False),
    "Endpoint": ("endpoints.voile.dev", True),
    "NetworkAttachmentDefinition": ("network-attachment-definitions.k8s.cni.cncf.io", True),
    "Pod": ("pods", True),
}
VOILE_KINDS = {"OverlayNetwork", "Endpoint"}


def _documents(folder: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _ref(doc: dict[str, Any]) -> list[str]:
    resource, namespaced = KINDS[doc["kind"]]
    scope = ["-n", doc["metadata"].get("namespace", "default")] if namespaced else []
    return [resource, doc["metadata"]["name"], *scope]


@pytest.fixture(scope="module")
def multus_crd(kubectl: Kubectl) -> str:
    kubectl.run("apply", "-f", str(MULTUS_CRD))
    name = "network-attachment-definitions.k8s.cni.cncf.io"
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return name


@pytest.fixture
def applied(
    kubectl: Kubectl,
    crds: tuple[str, ...],  # noqa: F811
    multus_crd: str,
) -> Iterator[list[dict[str, Any]]]:
    """Documents applied by the test; each is deleted afterwards whether or not it was created."""
    docs: list[dict[str, Any]] = []
    try:
        yield docs
    finally:
        for doc in reversed(docs):
            kubectl.run("delete", "--ignore-not-found", "--wait=false", *_ref(doc))


def test_there_are_examples() -> None:
    assert len(FOLDERS) >= 4
    kinds = {d["kind"] for f in FOLDERS for d in _documents(f)}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_example_applies_cleanly(
    kubectl: Kubectl, applied: list[dict[str, Any]], folder: Path
) -> None:
    assert (folder / "README.md").is_file()
    docs = _documents(folder)
    applied.extend(docs)
    out = kubectl.run("apply", "-n", "default", "-f", str(folder)).stdout
    for doc in docs:
        kind = doc["kind"].lower()
        assert f"{doc['metadata']['name']} created" in out and kind in out, out
        stored = json.loads(kubectl.run("get", *_ref(doc), "-o", "json").stdout)
        if doc["kind"] not in VOILE_KINDS:
            if doc["kind"] == "NetworkAttachmentDefinition":
                assert json.loads(stored["spec"]["config"])["type"] == "voile"
            continue
        expected = json.loads(json.dumps(doc["spec"]))  # stored as written, plus defaults
        if "netns" in expected.get("target", {}):
            expected["target"]["netns"].setdefault("interface", "eth0")
        assert stored["spec"] == expected
    again = kubectl.run("apply", "-n", "default", "-f", str(folder)).stdout
    assert "created" not in again and "configured" not in again  # re-applying changes nothing
