"""voile.kube's list against the real API server: pages followed, managedFields dropped on ask."""

from __future__ import annotations

from pathlib import Path

from voile import kube

NAMESPACE = "default"
LABEL = "voile.dev/test-kube-list"


async def test_list_follows_pages_and_drops_managed_fields_only_when_asked(
    kubeconfig: Path,
) -> None:
    url = kube.path("", "v1", "configmaps", namespace=NAMESPACE)
    names = [f"kube-list-{i}" for i in range(5)]
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        try:
            for name in names:
                await client.create(
                    url,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name, "labels": {LABEL: "yes"}},
                        "data": {"k": name},
                    },
                )
            full, rv = await client.list(url, label_selector=f"{LABEL}=yes", page=2)
            slim, _ = await client.list(
                url, label_selector=f"{LABEL}=yes", page=2, managed_fields=False
            )
            assert rv.isdigit()
            # three pages of 2, 2 and 1: every item, once, in both
            assert sorted(o["metadata"]["name"] for o in full) == names
            assert sorted(o["metadata"]["name"] for o in slim) == names
            assert all(o["metadata"].get("managedFields") for o in full)
            assert not any("managedFields" in o["metadata"] for o in slim)
            # the rest of each object is untouched
            assert [o["data"] for o in slim] == [o["data"] for o in full]
            assert all(o["metadata"]["labels"] == {LABEL: "yes"} for o in slim)
        finally:
            for name in names:
                await client.delete(
                    kube.path("", "v1", "configmaps", namespace=NAMESPACE, name=name)
                )
