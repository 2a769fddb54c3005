"""voile.api.model rejects what the CRDs reject, naming the same field, and parses the rest.

Pure: no API server. The invalid objects come from tests/catalogue.py, which
tests/e2e/test_crds.py feeds to the real API server, so both judges are held to one list.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.catalogue import CATALOGUE, Invalid, changed, endpoint, network
from voile.api import constants as c
from voile.api import model
from voile.errors import ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _parse(obj: dict[str, Any]) -> model.OverlayNetwork | model.Endpoint:
    if obj["kind"] == c.OVERLAY_NETWORK:
        return model.parse_overlay_network(obj)
    return model.parse_endpoint(obj)


def _judge(entry: Invalid) -> None:
    """Parse (and for updates check the transition) as an entry point outside the API would."""
    new = _parse(entry.obj)
    if entry.before is not None:
        old = _parse(entry.before)
        if isinstance(old, model.OverlayNetwork) and isinstance(new, model.OverlayNetwork):
            model.check_network_update(old.spec, new.spec)
        elif isinstance(old, model.Endpoint) and isinstance(new, model.Endpoint):
            model.check_endpoint_update(old.spec, new.spec)


def _names_field(reported: str, expected: str) -> bool:
    return reported == expected or reported.startswith((f"{expected}[", f"{expected}."))


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: f"{e.kind}-{e.id}")
def test_catalogue_entry_is_rejected_naming_the_field(entry: Invalid) -> None:
    if entry.before is not None:
        _parse(entry.before)  # the starting point of an update is itself valid
    with pytest.raises(ValidationError) as rejected:
        _judge(entry)
    assert _names_field(rejected.value.field, entry.field), (
        f"expected {entry.field}, got {rejected.value}"
    )
    assert str(rejected.value).startswith(f"{rejected.value.field}: ")


def test_catalogue_is_large_and_ids_unique() -> None:
    ids = [(e.kind, e.id) for e in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert len(CATALOGUE) >= 25
    assert {e.kind for e in CATALOGUE} == {c.OVERLAY_NETWORK, c.ENDPOINT}


# -- what is accepted, and what it parses to -----------------------------------------------------


def test_full_network_parses() -> None:
    net = model.parse_overlay_network(
        network(
            "blue",
            cidr="198.18.8.0/24",
            gateway="198.18.8.1",
            vni=4242,
            mtu=1450,
            excludeIPs=["198.18.8.5", "198.18.8.10-198.18.8.20", "198.18.8.64/26"],
        )
    )
    assert net.name == "blue"
    assert net.spec.cidr == ipaddress.IPv4Network("198.18.8.0/24")
    assert net.spec.gateway == ipaddress.IPv4Address("198.18.8.1")
    assert (net.spec.vni, net.spec.mtu, net.spec.prefix_length) == (4242, 1450, 24)
    assert [str(r) for r in net.spec.exclude] == [
        "198.18.8.5",
        "198.18.8.10-198.18.8.20",
        "198.18.8.64-198.18.8.127",
    ]
    assert ipaddress.IPv4Address("198.18.8.15") in net.spec.exclude[1]
    assert ipaddress.IPv4Address("198.18.8.21") not in net.spec.exclude[1]


@pytest.mark.parametrize(
    ("spec", "vni", "mtu"),
    [
        ({"cidr": "198.18.1.0/30"}, None, None),  # the smallest network with an endpoint address
        ({"cidr": "198.18.0.0/15", "vni": 1, "mtu": 576}, 1, 576),  # lower bounds
        ({"cidr": "198.18.1.0/24", "vni": 16_777_215, "mtu": 9000}, 16_777_215, 9000),  # upper
    ],
)
def test_network_bounds_accepted(spec: dict[str, Any], vni: int | None, mtu: int | None) -> None:
    parsed = model.parse_network_spec(spec)
    assert (parsed.vni, parsed.mtu) == (vni, mtu)


@pytest.mark.parametrize(
    ("gateway", "accepted"),
    [("198.18.1.1", True), ("198.18.1.254", True), ("198.18.1.0", False), ("198.18.1.255", False)],
)
def test_gateway_edges(gateway: str, accepted: bool) -> None:
    spec = {"cidr": "198.18.1.0/24", "gateway": gateway}
    if accepted:
        assert str(model.parse_network_spec(spec).gateway) == gateway
    else:
        with pytest.raises(ValidationError, match=r"^spec\.gateway: "):
            model.parse_network_spec(spec)


def test_exclude_edges_inside_cidr_accepted() -> None:
    spec = model.parse_network_spec(
        {"cidr": "198.18.1.0/24", "excludeIPs": ["198.18.1.0-198.18.1.255", "198.18.1.0/24"]}
    )
    assert len(spec.exclude) == 2
    assert len(model.parse_network_spec({"cidr": "198.18.1.0/24", "excludeIPs": []}).exclude) == 0


def test_endpoint_defaults_and_normalisation() -> None:
    ep = model.parse_endpoint(
        endpoint("web", ip="198.18.1.10", mac="02:AB:cd:00:00:0A", network="blue", node="host-2")
    )
    assert ep.key == "default/web"
    assert ep.spec.mac == "02:ab:cd:00:00:0a"  # upper case accepted, stored lower case
    assert ep.spec.ip == ipaddress.IPv4Address("198.18.1.10")
    assert ep.spec.target == model.Target(
        kind=model.TargetKind.NETNS, interface=c.DEFAULT_INTERFACE, netns_path="/run/netns/web"
    )


@pytest.mark.parametrize(("host", "interface"), [({}, ""), ({"interface": "voile-h0"}, "voile-h0")])
def test_host_target(host: dict[str, str], interface: str) -> None:
    ep = model.parse_endpoint(endpoint("gw", target={"host": host}))
    assert ep.spec.target == model.Target(kind=model.TargetKind.HOST, interface=interface)


@pytest.mark.parametrize("name", ["eth0", "a", "abcdefghijklmno", "veth_1.2-x", ".hidden"])
def test_interface_names_accepted(name: str) -> None:
    target = model.parse_target({"netns": {"path": "/run/netns/x", "interface": name}})
    assert target.interface == name


@pytest.mark.parametrize("node", ["host-1", "h", "node.example", "a" * 253])
def test_node_names_accepted(node: str) -> None:
    assert model.parse_endpoint_spec(endpoint("x", node=node)["spec"]).node == node


def test_node_name_over_253_rejected() -> None:
    with pytest.raises(ValidationError, match=r"^spec\.node: "):
        model.parse_endpoint_spec(endpoint("x", node="a" * 254)["spec"])


def test_trailing_newline_is_not_a_valid_name() -> None:
    """Python's `$` matches before a final newline, Go's does not: the model must agree with Go."""
    with pytest.raises(ValidationError, match=r"^metadata\.name: "):
        model.parse_overlay_network(network("blue\n"))
    with pytest.raises(ValidationError, match=r"^spec\.mac: "):
        model.parse_mac("02:00:00:00:00:01\n", "spec.mac")


def test_mac_for_is_locally_administered_unicast() -> None:
    mac = model.mac_for(ipaddress.IPv4Address("198.18.1.10"))
    assert mac == "0a:58:c6:12:01:0a"
    assert model.parse_mac(mac, "spec.mac") == mac


# -- transitions that are allowed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"vni": 77},  # vni may be added after creation (the operator may also pick one)
        {"mtu": 1400},
        {"mtu": None},
        {"gateway": "198.18.1.1"},
        {"excludeIPs": ["198.18.1.9"]},
    ],
)
def test_network_updates_allowed(change: dict[str, Any]) -> None:
    before = network("blue", cidr="198.18.1.0/24", mtu=1450)
    after = changed(before, **change)
    old, new = model.parse_overlay_network(before), model.parse_overlay_network(after)
    model.check_network_update(old.spec, new.spec)


def test_endpoint_update_with_the_same_spec_is_allowed() -> None:
    before = endpoint("web", ip="198.18.1.99", mac="02:00:00:00:00:99")
    old = model.parse_endpoint(before)
    new = model.parse_endpoint(changed(before, mac="02:00:00:00:00:99"))
    model.check_endpoint_update(old.spec, new.spec)


# -- the examples ---------------------------------------------------------------------------------


def _example_objects(*, voile: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """Voile's objects of the examples (or, with ``voile=False``, the others: Multus's
    NetworkAttachmentDefinition and the Pod that selects it)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES.glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith(f"{c.GROUP}/") == voile:
                found.append((f"{path.parent.name}/{path.name}:{doc['metadata']['name']}", doc))
    return found


def test_the_multus_example_delegates_to_voile_on_an_example_network() -> None:
    others = dict(_example_objects(voile=False))
    networks = {
        o["metadata"]["name"] for _, o in _example_objects() if o["kind"] == "OverlayNetwork"
    }
    nads = [o for o in others.values() if o["kind"] == "NetworkAttachmentDefinition"]
    assert nads
    for nad in nads:
        conf = json.loads(nad["spec"]["config"])
        assert conf["type"] == "voile" and conf["network"] in networks
        assert conf["capabilities"] == {"ips": True, "mac": True}
    multus = [
        o
        for o in others.values()
        if o["kind"] == "Pod"
        and "k8s.v1.cni.cncf.io/networks" in (o["metadata"].get("annotations") or {})
    ]
    assert multus
    for pod in multus:
        selected = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
        assert {s["name"] for s in selected} <= {n["metadata"]["name"] for n in nads}


def test_example_pods_choose_example_networks() -> None:
    """A Pod's voile.dev/network names a network of the examples (examples/06-pods)."""
    networks = {
        o["metadata"]["name"] for _, o in _example_objects() if o["kind"] == "OverlayNetwork"
    }
    pods = [o for _, o in _example_objects(voile=False) if o["kind"] == "Pod"]
    chosen = [(o["metadata"].get("annotations") or {}).get(c.ANNOTATION_POD_NETWORK) for o in pods]
    assert [n for n in chosen if n] and {n for n in chosen if n} <= networks


@pytest.mark.parametrize(("where", "obj"), _example_objects(), ids=lambda v: str(v)[:60])
def test_every_example_object_parses(where: str, obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == c.API_VERSION, where
    _parse(obj)


def test_examples_exist_with_readme() -> None:
    folders = sorted(p for p in EXAMPLES.iterdir() if p.is_dir())
    assert len(folders) >= 4
    for folder in folders:
        assert (folder / "README.md").is_file(), folder
        assert list(folder.glob("*.yaml")), folder


# -- the CRDs agree with the model's constants and with the contracts -----------------------------

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _crd(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return doc


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (c.VERSION, True, True)
    v: dict[str, Any] = version
    return v


@pytest.mark.parametrize(
    ("file", "kind", "plural", "scope", "short"),
    [
        ("overlaynetworks.yaml", c.OVERLAY_NETWORK, c.OVERLAY_NETWORKS, "Cluster", ["onet"]),
        ("endpoints.yaml", c.ENDPOINT, c.ENDPOINTS, "Namespaced", ["vep"]),
    ],
)
def test_crd_names_and_shape(
    file: str, kind: str, plural: str, scope: str, short: list[str]
) -> None:
    crd = _crd(file)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{c.GROUP}"
    assert (spec["group"], spec["scope"]) == (c.GROUP, scope)
    assert spec["names"]["kind"] == kind
    assert spec["names"]["shortNames"] == short  # never `ep`: that is the core Endpoints
    assert spec["names"]["categories"] == ["voile"]
    version = _version(crd)
    assert version["subresources"] == {"status": {}}
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_crd_bounds_match_the_constants() -> None:
    net = _version(_crd("overlaynetworks.yaml"))["schema"]["openAPIV3Schema"]["properties"]["spec"]
    vni, mtu = net["properties"]["vni"], net["properties"]["mtu"]
    assert (vni["minimum"], vni["maximum"]) == (c.MIN_VNI, c.MAX_VNI)
    assert (mtu["minimum"], mtu["maximum"]) == (c.MIN_MTU, c.MAX_MTU)
    assert net["properties"]["excludeIPs"]["maxItems"] == model.MAX_EXCLUDE_IPS
    ep = _version(_crd("endpoints.yaml"))
    assert ep["selectableFields"] == [{"jsonPath": ".spec.node"}, {"jsonPath": ".spec.network"}]
    spec = ep["schema"]["openAPIV3Schema"]["properties"]["spec"]
    netns = spec["properties"]["target"]["properties"]["netns"]["properties"]
    assert netns["interface"]["default"] == c.DEFAULT_INTERFACE
    assert netns["path"]["maxLength"] == model.MAX_NETNS_PATH
    assert spec["properties"]["node"]["maxLength"] == model.MAX_NODE_NAME
