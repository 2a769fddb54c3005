"""The OverlayNetwork and Endpoint CRDs, driven with the real kubectl against the real API server.

Real: etcd, kube-apiserver (schema validation, CEL, field selectors, the status subresource) and
kubectl. Not here: the operator and agents (status is written by hand, as they would write it).
Every object a test creates is deleted by the fixture that created it, also on failure.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.catalogue import CATALOGUE, NAMESPACE, Invalid, endpoint, network
from tests.e2e.conftest import Kubectl
from voile.api import model
from voile.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = (REPO / "crds" / "overlaynetworks.yaml", REPO / "crds" / "endpoints.yaml")
CRD_NAMES = ("overlaynetworks.voile.dev", "endpoints.voile.dev")


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> tuple[str, ...]:
    """Install the CRDs from crds/ (the only copy) the way a user would, and wait for them."""
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in CRD_FILES:
        args += ["-f", str(path)]
    kubectl.run(*args)
    for name in CRD_NAMES:
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return CRD_NAMES


def _ref(obj: dict[str, Any]) -> list[str]:
    kind = "overlaynetworks.voile.dev" if obj["kind"] == "OverlayNetwork" else "endpoints.voile.dev"
    ns = obj["metadata"].get("namespace")
    return [kind, obj["metadata"]["name"], *(["-n", ns] if ns else [])]


class Objects:
    """Applies objects and remembers them, so that the fixture can delete every one."""

    def __init__(self, kubectl: Kubectl) -> None:
        self.kubectl = kubectl
        self.made: list[dict[str, Any]] = []

    def apply(self, *objs: dict[str, Any], check: bool = True) -> str:
        """`kubectl apply` (client-side, Strict field validation); returns stdout + stderr."""
        self.made.extend(objs)
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
        proc = self.kubectl.run("apply", "-f", "-", input=doc, check=check)
        return proc.stdout + proc.stderr

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        proc = self.kubectl.run("get", *_ref(obj), "-o", "json", check=False)
        if proc.returncode != 0:
            assert "NotFound" in proc.stderr, proc.stderr
            return None
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def delete_all(self) -> None:
        for obj in reversed(self.made):
            self.kubectl.run("delete", "--ignore-not-found", "--wait=false", *_ref(obj))
        self.made.clear()


@pytest.fixture
def objects(kubectl: Kubectl, crds: tuple[str, ...]) -> Iterator[Objects]:
    made = Objects(kubectl)
    try:
        yield made
    finally:
        made.delete_all()


def _names(message: str, field: str) -> bool:
    """The rejection names the field: `spec.cidr: ...`, `spec.excludeIPs[1]: ...`, `"spec.x"`."""
    return bool(re.search(rf'(^|[\s*"]){re.escape(field)}(\[\d+\])?[:"]', message, re.M))


# -- the catalogue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: f"{e.kind}-{e.id}")
def test_catalogue_entry_is_rejected_naming_the_field(objects: Objects, entry: Invalid) -> None:
    if entry.before is not None:
        objects.apply(entry.before)
    before = objects.get(entry.before) if entry.before is not None else None

    proc = objects.kubectl.run("apply", "-f", "-", input=json.dumps(entry.obj), check=False)
    objects.made.append(entry.obj)
    message = proc.stdout + proc.stderr

    assert proc.returncode != 0, f"accepted: {message}"
    assert _names(message, entry.field), f"{entry.field} not named in: {message}"
    after = objects.get(entry.obj)
    if before is None:
        assert after is None, "a rejected object was stored anyway"
    else:
        assert after is not None
        assert after["spec"] == before["spec"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_catalogue_covers_the_issue(crds: tuple[str, ...]) -> None:
    ids = {e.id for e in CATALOGUE}
    required = {
        "cidr-no-prefix",
        "cidr-host-bits",
        "gateway-outside",
        "vni-zero",
        "vni-too-big",
        "mtu-575",
        "mtu-9001",
        "mac-multicast",
        "mac-broadcast",
        "mac-zero",
        "cidr-changed",
        "vni-changed",
        "vni-removed",
        "network-changed",
        "node-changed",
        "unknown-spec-field",
        "vni-string",
        "cidr-missing",
        "target-both",
        "target-none",
        "netns-relative-path",
        "netns-interface-too-long",
        "exclude-outside",
        "name-too-long",
    }
    assert required <= ids
    assert len(CATALOGUE) >= 25


# -- what is accepted ------------------------------------------------------------------------------


def test_allowed_updates_are_accepted(objects: Objects) -> None:
    net = network("upd-ok", cidr="198.18.6.0/24", mtu=1450)
    objects.apply(net)
    net["spec"].update(vni=6006, mtu=1400, gateway="198.18.6.1", excludeIPs=["198.18.6.9"])
    objects.apply(net)  # vni may be added once; mtu, gateway and exclusions may change
    stored = objects.get(net)
    assert stored is not None
    assert stored["spec"]["vni"] == 6006
    assert stored["metadata"]["generation"] == 2

    # An Endpoint's spec is immutable (like a Pod's network); its metadata is not.
    ep = endpoint("upd-ok", network="upd-ok", mac="02:00:00:00:00:01")
    objects.apply(ep)
    ep["metadata"]["labels"] = {"tier": "web"}
    objects.apply(ep)
    stored = objects.get(ep)
    assert stored is not None
    assert stored["metadata"]["labels"] == {"tier": "web"}
    assert stored["metadata"]["generation"] == 1


def test_defaults_and_mac_case(objects: Objects) -> None:
    ep = endpoint("dflt", mac="02:AB:CD:EF:00:01")
    objects.apply(ep)
    stored = objects.get(ep)
    assert stored is not None
    assert stored["spec"]["target"]["netns"]["interface"] == "eth0"  # schema default
    assert stored["spec"]["mac"] == "02:AB:CD:EF:00:01"  # accepted as given


def test_unknown_fields_are_pruned_when_validation_is_off(objects: Objects) -> None:
    """Strict field validation (kubectl's default) rejects unknown fields; without it the
    structural schema drops them silently, so nothing unknown is ever stored."""
    net = network("pruned", cidr="198.18.7.0/24", vnid=7)
    objects.made.append(net)
    objects.kubectl.run("apply", "--validate=false", "-f", "-", input=json.dumps(net))
    stored = objects.get(net)
    assert stored is not None
    assert stored["spec"] == {"cidr": "198.18.7.0/24"}


# -- status, columns, names ------------------------------------------------------------------------


def _status(kubectl: Kubectl, obj: dict[str, Any], status: dict[str, Any]) -> None:
    kubectl.run(
        "patch",
        *_ref(obj),
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def _header(output: str) -> list[str]:
    return output.splitlines()[0].split()


def test_columns_and_status_subresource(objects: Objects) -> None:
    net = network("cols", cidr="198.18.9.0/24", gateway="198.18.9.1")
    ep = endpoint("cols", network="cols", node="host-2")
    objects.apply(net, ep)
    # Status written through the main resource is ignored: only the status subresource takes it.
    objects.apply({**net, "status": {"vni": 99}})
    stored = objects.get(net)
    assert stored is not None
    assert "status" not in stored or "vni" not in stored["status"]

    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    _status(
        objects.kubectl,
        net,
        {
            "vni": 9009,
            "mtu": 1450,
            "endpoints": 1,
            "allocated": 1,
            "free": 251,
            "observedGeneration": 1,
            "conditions": [ready],
        },
    )
    _status(
        objects.kubectl,
        ep,
        {
            "ip": "198.18.9.2",
            "mac": "0a:58:c6:12:09:02",
            "prefixLength": 24,
            "gateway": "198.18.9.1",
            "vni": 9009,
            "mtu": 1450,
            "vtep": "198.18.0.12",
            "observedGeneration": 1,
            "conditions": [ready],
        },
    )

    out = objects.kubectl.run("get", "overlaynetworks", "cols").stdout
    assert _header(out) == ["NAME", "CIDR", "VNI", "MTU", "ENDPOINTS", "FREE", "READY", "AGE"]
    assert out.splitlines()[1].split()[:7] == [
        "cols",
        "198.18.9.0/24",
        "9009",
        "1450",
        "1",
        "251",
        "True",
    ]
    wide = objects.kubectl.run("get", "onet", "cols", "-o", "wide").stdout
    assert _header(wide)[-3:] == ["REASON", "GATEWAY", "AGE"]

    out = objects.kubectl.run("get", "vep", "-A").stdout
    assert _header(out) == [
        "NAMESPACE",
        "NAME",
        "NETWORK",
        "NODE",
        "IP",
        "MAC",
        "VTEP",
        "READY",
        "AGE",
    ]
    row = next(line.split() for line in out.splitlines() if " cols " in line)
    assert row[:8] == [
        NAMESPACE,
        "cols",
        "cols",
        "host-2",
        "198.18.9.2",
        "0a:58:c6:12:09:02",
        "198.18.0.12",
        "True",
    ]

    out = objects.kubectl.run("get", "voile", "-A").stdout
    assert "overlaynetwork.voile.dev/cols" in out
    assert "endpoint.voile.dev/cols" in out
    headers = [line.split() for line in out.splitlines() if line.startswith("NAMESPACE")]
    assert ["NAMESPACE", "NAME", "CIDR", "VNI", "MTU", "ENDPOINTS", "FREE", "READY", "AGE"] in (
        headers
    )
    assert ["NAMESPACE", "NAME", "NETWORK", "NODE", "IP", "MAC", "VTEP", "READY", "AGE"] in headers


def test_status_conditions_are_a_map_keyed_by_type(objects: Objects) -> None:
    """Operator and agent each own their own condition entries through server-side apply."""
    ep = endpoint("cond", node="host-3")
    objects.apply(ep)

    def ssa(manager: str, cond: dict[str, str]) -> None:
        body = {
            "apiVersion": ep["apiVersion"],
            "kind": "Endpoint",
            "metadata": {"name": "cond", "namespace": NAMESPACE},
            "status": {"conditions": [cond]},
        }
        objects.kubectl.run(
            "apply",
            "--server-side",
            f"--field-manager={manager}",
            "--subresource=status",
            "-f",
            "-",
            input=json.dumps(body),
        )

    ssa(
        "voile-operator",
        {
            "type": "Allocated",
            "status": "True",
            "reason": "Allocated",
            "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
    )
    ssa(
        "voile-agent",
        {
            "type": "Ready",
            "status": "False",
            "reason": "PlumbingFailed",
            "message": "netns missing",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
    )
    stored = objects.get(ep)
    assert stored is not None
    types = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert types == {"Allocated": "True", "Ready": "False"}
    bad = objects.kubectl.run(
        "patch",
        *_ref(ep),
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}),
        check=False,
    )
    assert bad.returncode != 0
    assert "status.conditions[0].status" in bad.stderr


def test_short_names_do_not_shadow_core_endpoints(objects: Objects) -> None:
    ep = endpoint("shadow")
    objects.apply(ep)
    core = objects.kubectl.run("get", "endpoints", "-n", NAMESPACE, "-o", "json").stdout
    assert json.loads(core)["apiVersion"] == "v1"  # core Endpoints, not ours
    assert "shadow" not in core
    ours = objects.kubectl.run("get", "vep", "shadow", "-n", NAMESPACE, "-o", "json").stdout
    assert json.loads(ours)["apiVersion"] == "voile.dev/v1alpha1"
    explained = objects.kubectl.run("get", "endpoints.voile.dev", "-n", NAMESPACE).stdout
    assert "shadow" in explained
    ep_short = objects.kubectl.run("get", "ep", "-n", NAMESPACE, "-o", "json", check=False)
    assert "shadow" not in ep_short.stdout  # `ep` stays the core kind's short name


def test_field_selectors_on_node_and_network(objects: Objects) -> None:
    placed = [
        ("sel-a1", "sel-a", "host-1"),
        ("sel-a2", "sel-a", "host-2"),
        ("sel-b1", "sel-b", "host-1"),
        ("sel-b3", "sel-b", "host-3"),
    ]
    objects.apply(*(endpoint(name, network=net, node=node) for name, net, node in placed))

    def names(selector: str) -> set[str]:
        out = objects.kubectl.run(
            "get", "vep", "-A", "--field-selector", selector, "-o", "name"
        ).stdout
        return {line.rsplit("/", 1)[1] for line in out.split() if "/sel-" in line}

    assert names("spec.node=host-1") == {"sel-a1", "sel-b1"}
    assert names("spec.node=host-3") == {"sel-b3"}
    assert names("spec.network=sel-a") == {"sel-a1", "sel-a2"}
    assert names("spec.network=sel-b,spec.node=host-1") == {"sel-b1"}
    assert names("spec.node!=host-1") >= {"sel-a2", "sel-b3"}
    assert not names("spec.node=host-1") & names("spec.node!=host-1")
    refused = objects.kubectl.run(
        "get", "vep", "-A", "--field-selector", "spec.ip=198.18.1.2", check=False
    )
    assert refused.returncode != 0
    assert "field label not supported" in refused.stderr


# -- the model and the API server agree on generated input ---------------------------------------


_LAB = ipaddress.IPv4Network("198.18.0.0/15")  # every generated address stays in here


def _near_edge(rng: random.Random, net: ipaddress.IPv4Network) -> str:
    """Mostly an address inside ``net``; sometimes its network or broadcast address, or one off."""
    if rng.random() < 0.6 and net.num_addresses > 2:
        offset = rng.randrange(1, net.num_addresses - 1)
        return str(net.network_address + offset)
    edge = int(rng.choice([net.network_address, net.broadcast_address]))
    candidate = edge + rng.choice([-1, 0, 1, 2])
    first, last = int(_LAB.network_address), int(_LAB.broadcast_address)
    return str(ipaddress.IPv4Address(min(max(candidate, first), last)))


def _random_networks(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Networks near the edges: host bits, prefix lengths, gateways and exclusions on boundaries."""
    objs = []
    for i in range(count):
        prefix = rng.choice([15, 16, 22, 24, 24, 26, 29, 30, 30, 31, 32])
        base = int(ipaddress.IPv4Address("198.18.0.0")) + rng.randrange(0, 1 << 17)
        net = ipaddress.IPv4Network((base, prefix), strict=False)
        addr = net.network_address if rng.random() < 0.8 else ipaddress.IPv4Address(base)
        near = functools.partial(_near_edge, rng, net)
        spec: dict[str, Any] = {"cidr": f"{addr}/{prefix}"}
        if rng.random() < 0.5:
            spec["gateway"] = near()
        if rng.random() < 0.4:
            first, last = sorted([near(), near()], key=ipaddress.IPv4Address)
            choices = [near(), f"{first}-{last}", f"{last}-{first}", f"{near()}/{prefix + 1}"]
            spec["excludeIPs"] = rng.sample(choices, rng.choice([1, 2]))
        objs.append(network(f"agree-{i}", **spec))
    return objs


def _random_endpoints(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Endpoints whose MAC, interface name and namespace path are each sometimes wrong."""
    objs = []
    for i in range(count):
        first = rng.choice([0x02, 0x0A, 0x52, 0xFE, 0x00, 0x01, 0x33, 0xFF])
        octets = [first] + [rng.choice([0, 0xFF, rng.randrange(256)]) for _ in range(5)]
        mac = ":".join(f"{o:02x}" for o in octets)
        length = rng.choice([1, 5, 15, 15, 16])
        name = "".join(rng.choice("abc019_.-") for _ in range(length))
        if rng.random() < 0.15:
            name = rng.choice(["/", "..", ".", "", "a b"]) if length == 1 else name[:-1] + "/"
        valid_paths = ["/run/netns/x", "/var/run/netns/y", "/a/..b"]
        path = rng.choice(valid_paths * 3 + ["/run/netns/..", "/run/../x", "/", "run/x"])
        objs.append(
            endpoint(
                f"agree-{i}",
                mac=mac.upper() if rng.random() < 0.3 else mac,
                target={"netns": {"path": path, "interface": name}},
            )
        )
    return objs


def _model_accepts(obj: dict[str, Any]) -> bool:
    try:
        if obj["kind"] == "OverlayNetwork":
            model.parse_overlay_network(obj)
        else:
            model.parse_endpoint(obj)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_model_and_api_server_agree(kubectl: Kubectl, crds: tuple[str, ...], seed: int) -> None:
    """Server-side dry runs (nothing is stored) of generated objects: the API server accepts
    exactly the objects voile.api.model accepts."""
    rng = random.Random(seed)
    objs = _random_networks(rng, 40) + _random_endpoints(rng, 40)
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    proc = kubectl.run("apply", "--dry-run=server", "-f", "-", input=doc, check=False)
    created = r"^(\w+)\.voile\.dev/(\S+) created \(server dry run\)$"
    accepted = set(re.findall(created, proc.stdout, re.M))
    disagreements = [
        (o["kind"], o["spec"], (o["kind"].lower(), o["metadata"]["name"]) in accepted)
        for o in objs
        if ((o["kind"].lower(), o["metadata"]["name"]) in accepted) != _model_accepts(o)
    ]
    assert not disagreements, "\n".join(f"server accepts={a}: {k} {s}" for k, s, a in disagreements)
    for kind in ("overlaynetwork", "endpoint"):  # the generator hits both sides of the rules
        judged = [(k, n) in accepted for k, n in ((kind, f"agree-{i}") for i in range(40))]
        assert any(judged), kind
        assert not all(judged), kind
