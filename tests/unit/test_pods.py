"""The pure parts behind Pods on Voile: which network a Pod's annotation chooses, how an attach
request carries the Pod, how a CNI DEL finds an attachment made on another network than its
conflist names (voile.api.attach), and the lab node's readings of /proc (voile.lab.node).
Table-driven, no mocks, no root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voile.api import attach as plan
from voile.api import constants as c
from voile.api.attach import Owner, OwnerKind, PodRef
from voile.api.model import parse_endpoint
from voile.errors import ValidationError
from voile.lab.node import cgroup_hierarchies, shim_pids

CID = "c" * 64
OWNER = Owner(kind=OwnerKind.CNI, id=CID)


@pytest.mark.parametrize(
    ("annotations", "chosen"),
    [
        ({}, "blue"),
        ({c.ANNOTATION_POD_NETWORK: "red"}, "red"),
        ({c.ANNOTATION_POD_NETWORK: "blue"}, "blue"),
        ({"other/annotation": "red"}, "blue"),
    ],
)
def test_the_pod_annotation_chooses_the_network(annotations: dict[str, str], chosen: str) -> None:
    assert plan.pod_network("blue", annotations) == chosen


@pytest.mark.parametrize("bad", ["", "Red", "red_net", "-red", "a" * 64, "red/x"])
def test_an_annotation_that_names_no_network_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        plan.pod_network("blue", {c.ANNOTATION_POD_NETWORK: bad})
    assert c.ANNOTATION_POD_NETWORK in err.value.field


def request(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "network": "blue",
        "owner": {"kind": "cni", "id": CID},
        "target": {"netns": {"path": "/run/netns/x", "interface": "eth0"}},
        "pod": {"namespace": "team-a", "name": "web-0"},
        "podNetworkAnnotation": True,
    }
    raw.update(over)
    return {k: v for k, v in raw.items() if v is not None}


def test_an_attach_request_carries_its_pod() -> None:
    parsed = plan.parse_attach(request(), default_namespace="default")
    assert parsed.pod == PodRef(namespace="team-a", name="web-0")
    assert parsed.pod_network_annotation is True
    plain = plan.parse_attach(request(pod=None, podNetworkAnnotation=None), default_namespace="d")
    assert (plain.pod, plain.pod_network_annotation) == (None, False)
    # A Pod name longer than a label value (63) is still a Pod name.
    long_name = "w" * 200
    assert plan.parse_attach(
        request(pod={"namespace": "a", "name": long_name}), default_namespace="d"
    ).pod == PodRef(namespace="a", name=long_name)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"pod": None}, "pod"),  # the flag without the pod it reads
        ({"pod": "web-0"}, "pod"),
        ({"pod": {"namespace": "Bad_NS", "name": "x"}}, "pod.namespace"),
        ({"pod": {"namespace": "a", "name": "Not A Name"}}, "pod.name"),
        ({"pod": {"namespace": "a", "name": "x", "uid": "1"}}, "pod.uid"),
        ({"podNetworkAnnotation": "yes"}, "podNetworkAnnotation"),
    ],
)
def test_bad_pod_fields_are_named(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        plan.parse_attach(request(**over), default_namespace="default")
    assert err.value.field == field


def endpoint(
    *, owner: str = CID, kind: str = "cni", interface: str = "eth0", node: str = "host-1"
) -> Any:
    ident = Owner(kind=OwnerKind(kind), id=owner)
    return parse_endpoint(
        {
            "metadata": {
                "name": plan.endpoint_name("red", ident, interface),
                "namespace": "default",
                "uid": "u1",
                "labels": plan.owner_labels(ident),
                "annotations": {c.ANNOTATION_OWNER_ID: owner, c.ANNOTATION_INTERFACE: interface},
            },
            "spec": {"network": "red", "node": node, "target": {"netns": {"path": "/x"}}},
        }
    )


@pytest.mark.parametrize(
    ("ep", "mine"),
    [
        (endpoint(), True),  # on "red", though the DEL names "blue": the same attachment
        (endpoint(interface="net1"), False),  # another interface of the same sandbox (Multus)
        (endpoint(owner="d" * 64), False),
        (endpoint(kind="docker"), False),
        (endpoint(node="host-2"), False),
    ],
    ids=["same", "other-interface", "other-container", "other-kind", "other-node"],
)
def test_a_del_finds_the_attachment_by_identity(ep: Any, mine: bool) -> None:
    assert plan.is_attachment_of(ep, OWNER, "eth0", node="host-1") is mine


def test_the_owner_selector_matches_the_owner_labels() -> None:
    selector = plan.owner_selector(OWNER)
    pairs = dict(term.split("=") for term in selector.split(","))
    assert pairs == plan.owner_labels(OWNER)


MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw shared:5 - cgroup2 cgroup2 rw
35 22 0:31 / /run/netns rw shared:1 - ext4 /dev/vda rw
36 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
"""


def test_cgroup_hierarchies_are_read_from_mountinfo() -> None:
    assert cgroup_hierarchies(MOUNTINFO) == [
        Path("/sys/fs/cgroup/cpu"),
        Path("/sys/fs/cgroup/cpuset"),
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified"),
    ]
    assert cgroup_hierarchies("35 1 0:2 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n") == [
        Path("/sys/fs/cgroup")
    ]


def test_shims_are_found_by_their_containerd_address() -> None:
    sock = "/tmp/lab/fabric/host-1/node/containerd.sock"
    cmdlines = [
        (10, ["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "x",
              "-address", sock]),
        (11, ["/usr/bin/containerd-shim-runc-v2", "-address", sock + ".other"]),
        (12, ["containerd", "--config", "/tmp/lab/fabric/host-1/node/containerd.toml"]),
        (13, ["sleep", "-address"]),
    ]  # fmt: skip
    assert shim_pids(cmdlines, sock) == [10]
