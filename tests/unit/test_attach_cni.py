"""The pure parts behind the CNI plugin's agent side: pending DEL records (voile.api.attach),
which CNI attachments have lost their namespace, what a refused API request means, and the
janitor's netns observation (a temporary directory, no root). Table-driven, no mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voile import attach as lib
from voile import kube
from voile.api import attach as plan
from voile.api import constants as c
from voile.api.attach import Owner, OwnerKind
from voile.api.model import parse_endpoint
from voile.errors import ValidationError
from voile_agent.localapi.janitor import netns_gone

CID = "a" * 64


def record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "version": 1,
        "network": "blue",
        "containerID": CID,
        "ifname": "eth0",
        "namespace": "pods",
        "netns": "/run/netns/x",
        "reason": "the agent did not answer",
        "time": "2026-01-01T00:00:00Z",
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def test_pending_record_is_the_attachment_to_detach() -> None:
    ref = plan.parse_pending(record(), default_namespace="default")
    assert ref.owner == Owner(kind=OwnerKind.CNI, id=CID)
    assert (ref.network, ref.interface, ref.namespace) == ("blue", "eth0", "pods")
    assert ref.name == plan.endpoint_name("blue", ref.owner, "eth0")
    assert plan.parse_pending(record(namespace=None), default_namespace="d").namespace == "d"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "record"),
        (record(version=2), "record.version"),
        (record(ifname="a-name-far-too-long"), "record.ifname"),
        (record(ifname="a/b"), "record.ifname"),
        (record(containerID=None), "owner.id"),
        (record(containerID="../x"), "owner.id"),
        (record(network="Not_A_Name"), "network"),
        (record(extra=1), "record.extra"),
        (record(namespace="Bad_NS"), "namespace"),
    ],
)
def test_bad_pending_records_name_the_field(raw: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        plan.parse_pending(raw, default_namespace="default")
    assert err.value.field == field


def endpoint(
    *,
    kind: str = "cni",
    owner: str = CID,
    interface: str = "eth0",
    network: str = "blue",
    name: str | None = None,
    target: dict[str, Any] | None = None,
    deleting: bool = False,
) -> Any:
    ident = Owner(kind=OwnerKind(kind), id=owner)
    meta: dict[str, Any] = {
        "name": name or plan.endpoint_name(network, ident, interface),
        "namespace": "default",
        "uid": "u1",
        "labels": {c.LABEL_OWNER_KIND: kind},
        "annotations": {c.ANNOTATION_OWNER_ID: owner, c.ANNOTATION_INTERFACE: interface},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return parse_endpoint(
        {
            "metadata": meta,
            "spec": {
                "network": network,
                "node": "host-1",
                "target": target or {"netns": {"path": f"/run/netns/{owner[:8]}"}},
            },
        }
    )


@pytest.mark.parametrize(
    ("ep", "gone", "orphan"),
    [
        (endpoint(), True, True),
        (endpoint(), False, False),  # the namespace is there (or could not be observed)
        (endpoint(deleting=True), True, False),  # already being detached
        (endpoint(kind="lab"), True, False),  # not a CNI attachment
        (endpoint(target={"host": {}}), True, False),
        (endpoint(name="made-by-hand"), True, False),  # not under the local API's identity
    ],
    ids=["gone", "present", "deleting", "lab-owner", "host-target", "foreign-name"],
)
def test_cni_attachments_whose_netns_is_gone(ep: Any, gone: bool, orphan: bool) -> None:
    asked: list[str] = []

    def netns_is_gone(path: str) -> bool:
        asked.append(path)
        return gone

    found = plan.cni_netns_orphans([ep], netns_is_gone)
    assert [r.name for r in found] == ([ep.name] if orphan else [])
    if orphan:
        assert found[0].owner.id == CID and found[0].interface == "eth0"


@pytest.mark.parametrize(
    ("status", "reason", "temporary"),
    [
        (403, lib.API_FORBIDDEN, False),
        (401, lib.API_FORBIDDEN, False),
        (500, lib.API_UNAVAILABLE, True),
        (429, lib.API_UNAVAILABLE, True),
        (503, lib.API_UNAVAILABLE, True),
    ],
)
def test_a_refused_api_request_is_not_temporary(status: int, reason: str, temporary: bool) -> None:
    err = lib.api_failure(kube.ApiError(status, "Reason", "message"))
    assert (err.reason, err.temporary) == (reason, temporary)


def test_netns_gone_only_when_observed_missing(tmp_path: Path) -> None:
    present = tmp_path / "ns1"
    present.write_text("")
    assert netns_gone(str(present)) is False
    assert netns_gone(str(tmp_path / "ns2")) is True
    # Nothing can be concluded when the directory itself is not visible here.
    assert netns_gone(str(tmp_path / "no-such-dir" / "ns3")) is False
