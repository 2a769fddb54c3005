"""Every folder under examples/ applies cleanly with `kubectl apply -f <folder>` and is stored as
written. Real: etcd, kube-apiserver, kubectl. Not here: the operator and agents (tests of the whole
system apply the same examples in the lab). Each test deletes what it applied, also on failure.
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


def _documents(folder: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _ref(doc: dict[str, Any]) -> list[str]:
    plural = {"OverlayNetwork": "overlaynetworks", "Endpoint": "endpoints"}[doc["kind"]]
    scope = ["-n", "default"] if doc["kind"] == "Endpoint" else []
    return [f"{plural}.voile.dev", doc["metadata"]["name"], *scope]


@pytest.fixture
def applied(kubectl: Kubectl, crds: tuple[str, ...]) -> Iterator[list[dict[str, Any]]]:  # noqa: F811
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
    assert kinds == {"OverlayNetwork", "Endpoint"}


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
        assert f"{kind}.voile.dev/{doc['metadata']['name']} created" in out, out
        stored = json.loads(kubectl.run("get", *_ref(doc), "-o", "json").stdout)
        expected = json.loads(json.dumps(doc["spec"]))  # stored as written, plus defaults
        if "netns" in expected.get("target", {}):
            expected["target"]["netns"].setdefault("interface", "eth0")
        assert stored["spec"] == expected
    again = kubectl.run("apply", "-n", "default", "-f", str(folder)).stdout
    assert "created" not in again and "configured" not in again  # re-applying changes nothing
