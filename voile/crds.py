"""The CRDs under crds/ : the only copy, read by chart, manifests, lab and tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from voile import kube

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"


def crd_documents(directory: Path = CRD_DIR) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in crds/*.yaml, in file-name order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


async def install_crds(client: kube.KubeClient, *, timeout: float = 60.0) -> list[str]:
    """Server-side apply every CRD and wait until each is Established. Idempotent."""
    names: list[str] = []
    for doc in crd_documents():
        name = doc["metadata"]["name"]
        await client.patch(
            kube.path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=name),
            doc,
            kind="apply",
        )
        names.append(name)

    async def established() -> bool:
        for name in names:
            crd = await client.get(
                kube.path("apiextensions.k8s.io", "v1", "customresourcedefinitions", name=name)
            )
            conds = {
                c["type"]: c["status"]
                for c in ((crd or {}).get("status") or {}).get("conditions") or []
            }
            if conds.get("Established") != "True":
                return False
        return True

    await kube.wait_for(established, timeout=timeout, what="CRDs Established")
    await asyncio.sleep(0)  # discovery catches up within the same API server
    return names
