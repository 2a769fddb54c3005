"""Invalid OverlayNetworks and Endpoints, each paired with the field its rejection must name.

One catalogue, two judges: tests/e2e/test_crds.py feeds every entry to the real API server with
`kubectl apply` (the CRD schema and its CEL rules), tests/unit/test_model.py feeds it to the
parsers of voile.api.model (for entry points that do not pass through the API server). If either
judge accepts an entry, or blames another field, the rules have drifted apart.

An entry with ``before`` is an update: ``before`` is created first and must be accepted, then
``obj`` (the same object, changed) must be rejected and ``before`` must be left as it was.
All addresses are in 198.18.0.0/15 (or loopback), as everywhere in the project.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

API_VERSION = "voile.dev/v1alpha1"
NAMESPACE = "default"

Obj = dict[str, Any]


def network(name: str, **spec: Any) -> Obj:
    """An OverlayNetwork; ``spec`` defaults to a valid /24 unless given (``spec=None`` drops it)."""
    body: Obj = {"apiVersion": API_VERSION, "kind": "OverlayNetwork", "metadata": {"name": name}}
    if "spec" in spec:
        if spec["spec"] is not None:
            body["spec"] = spec["spec"]
    else:
        body["spec"] = {"cidr": "198.18.1.0/24", **spec}
    return body


def endpoint(name: str, **spec: Any) -> Obj:
    """An Endpoint in NAMESPACE; fields given replace the valid defaults (``None`` drops one)."""
    full: dict[str, Any] = {
        "network": "cat-net",
        "node": "host-1",
        "target": {"netns": {"path": f"/run/netns/{name}"}},
        **spec,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {k: v for k, v in full.items() if v is not None},
    }


def changed(obj: Obj, **spec: Any) -> Obj:
    """``obj`` with spec fields replaced (``None`` removes the field)."""
    new = copy.deepcopy(obj)
    for key, value in spec.items():
        if value is None:
            new["spec"].pop(key, None)
        else:
            new["spec"][key] = value
    return new


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Invalid:
    """One object both judges must reject, naming ``field`` (a prefix of the model's field)."""

    id: str
    obj: Obj
    field: str
    before: Obj | None = None

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])


def _net(case: str, field: str, **spec: Any) -> Invalid:
    return Invalid(id=case, obj=network(f"cat-{case}", **spec), field=field)


def _vep(case: str, field: str, **spec: Any) -> Invalid:
    return Invalid(id=case, obj=endpoint(f"cat-{case}", **spec), field=field)


def _update(case: str, field: str, before: Obj, **spec: Any) -> Invalid:
    return Invalid(id=case, obj=changed(before, **spec), field=field, before=before)


_NET_BASE = network("cat-upd-net", cidr="198.18.4.0/24", vni=4004, mtu=1400)
_VEP_BASE = endpoint("cat-upd-vep", network="cat-net", node="host-1", ip="198.18.1.40")

CATALOGUE: tuple[Invalid, ...] = (
    # -- OverlayNetwork: cidr
    _net("cidr-no-prefix", "spec.cidr", cidr="198.18.1.0"),
    _net("cidr-bad-octet", "spec.cidr", cidr="198.18.300.0/24"),
    _net("cidr-leading-zero", "spec.cidr", cidr="198.018.1.0/24"),
    _net("cidr-prefix-33", "spec.cidr", cidr="198.18.1.0/33"),
    _net("cidr-ipv6", "spec.cidr", cidr="::1/128"),
    _net("cidr-host-bits", "spec.cidr", cidr="198.18.1.1/24"),
    _net("cidr-too-small", "spec.cidr", cidr="198.18.1.0/31"),
    _net("cidr-wrong-type", "spec.cidr", cidr=24),
    _net("cidr-missing", "spec.cidr", spec={"vni": 10}),
    _net("spec-missing", "spec", spec=None),
    # -- OverlayNetwork: gateway
    _net("gateway-outside", "spec.gateway", gateway="198.18.2.1"),
    _net("gateway-network-address", "spec.gateway", gateway="198.18.1.0"),
    _net("gateway-broadcast", "spec.gateway", gateway="198.18.1.255"),
    _net("gateway-not-an-ip", "spec.gateway", gateway="198.18.1.x"),
    _net("gateway-bad-octet", "spec.gateway", gateway="198.18.1.256"),
    # -- OverlayNetwork: vni and mtu
    _net("vni-zero", "spec.vni", vni=0),
    _net("vni-too-big", "spec.vni", vni=16_777_216),
    _net("vni-negative", "spec.vni", vni=-5),
    _net("vni-string", "spec.vni", vni="100"),
    _net("mtu-575", "spec.mtu", mtu=575),
    _net("mtu-9001", "spec.mtu", mtu=9001),
    _net("mtu-string", "spec.mtu", mtu="jumbo"),
    # -- OverlayNetwork: excludeIPs
    _net("exclude-outside", "spec.excludeIPs", excludeIPs=["198.18.2.5"]),
    _net("exclude-range-outside", "spec.excludeIPs", excludeIPs=["198.18.1.250-198.18.2.3"]),
    _net("exclude-cidr-outside", "spec.excludeIPs", excludeIPs=["198.18.0.0/16"]),
    _net("exclude-range-reversed", "spec.excludeIPs", excludeIPs=["198.18.1.20-198.18.1.10"]),
    _net("exclude-cidr-host-bits", "spec.excludeIPs", excludeIPs=["198.18.1.65/26"]),
    _net("exclude-garbage", "spec.excludeIPs", excludeIPs=["198.18.1"]),
    _net("exclude-spaces", "spec.excludeIPs", excludeIPs=["198.18.1.5 - 198.18.1.9"]),
    _net("exclude-not-a-list", "spec.excludeIPs", excludeIPs="198.18.1.5"),
    _net(
        "exclude-too-many",
        "spec.excludeIPs",
        excludeIPs=[f"198.18.1.{i}" for i in range(1, 66)],
    ),
    # -- OverlayNetwork: unknown fields and the name
    _net("unknown-spec-field", "spec.vnid", vnid=7),
    _net("unknown-field-typo", "spec.excludeIps", excludeIps=["198.18.1.5"]),
    Invalid(id="name-too-long", obj=network("n" * 64), field="metadata.name"),
    Invalid(id="name-not-dns-label", obj=network("cat.dotted"), field="metadata.name"),
    # -- OverlayNetwork: transitions
    _update("cidr-changed", "spec.cidr", _NET_BASE, cidr="198.18.5.0/24"),
    _update("vni-changed", "spec.vni", _NET_BASE, vni=4005),
    _update("vni-removed", "spec.vni", _NET_BASE, vni=None),
    # -- Endpoint: required fields and names
    _vep("network-missing", "spec.network", network=None),
    _vep("node-missing", "spec.node", node=None),
    _vep("target-missing", "spec.target", target=None),
    _vep("network-not-dns-label", "spec.network", network="Net_A"),
    _vep("node-with-space", "spec.node", node="host 1"),
    _vep("node-wrong-type", "spec.node", node=1),
    # -- Endpoint: ip and mac
    _vep("ip-bad-octet", "spec.ip", ip="198.18.1.256"),
    _vep("ip-cidr", "spec.ip", ip="198.18.1.10/24"),
    _vep("ip-wrong-type", "spec.ip", ip=17),
    _vep("mac-multicast", "spec.mac", mac="01:00:5e:00:00:01"),
    _vep("mac-multicast-upper", "spec.mac", mac="03:AA:BB:CC:DD:EE"),
    _vep("mac-broadcast", "spec.mac", mac="ff:ff:ff:ff:ff:ff"),
    _vep("mac-zero", "spec.mac", mac="00:00:00:00:00:00"),
    _vep("mac-short", "spec.mac", mac="02:00:00:00:00"),
    _vep("mac-dashes", "spec.mac", mac="02-00-00-00-00-01"),
    # -- Endpoint: target
    _vep("target-both", "spec.target", target={"host": {}, "netns": {"path": "/run/netns/x"}}),
    _vep("target-none", "spec.target", target={}),
    _vep("target-wrong-type", "spec.target", target="host"),
    _vep("netns-relative-path", "spec.target.netns.path", target={"netns": {"path": "run/x"}}),
    _vep("netns-dotdot", "spec.target.netns.path", target={"netns": {"path": "/run/../etc"}}),
    _vep("netns-root", "spec.target.netns.path", target={"netns": {"path": "/"}}),
    _vep("netns-path-missing", "spec.target.netns.path", target={"netns": {"interface": "e1"}}),
    _vep(
        "netns-interface-too-long",
        "spec.target.netns.interface",
        target={"netns": {"path": "/run/netns/x", "interface": "abcdefghijklmnop"}},
    ),
    _vep(
        "netns-interface-slash",
        "spec.target.netns.interface",
        target={"netns": {"path": "/run/netns/x", "interface": "eth/0"}},
    ),
    _vep(
        "netns-interface-empty",
        "spec.target.netns.interface",
        target={"netns": {"path": "/run/netns/x", "interface": ""}},
    ),
    _vep(
        "netns-interface-dotdot",
        "spec.target.netns.interface",
        target={"netns": {"path": "/run/netns/x", "interface": ".."}},
    ),
    _vep(
        "host-interface-too-long",
        "spec.target.host.interface",
        target={"host": {"interface": "voile-host-port0"}},
    ),
    _vep("target-handoff-and-host", "spec.target", target={"handoff": {}, "host": {}}),
    _vep(
        "handoff-interface-too-long",
        "spec.target.handoff.interface",
        target={"handoff": {"interface": "voile-handoff-00"}},
    ),
    _vep(
        "handoff-interface-dotdot",
        "spec.target.handoff.interface",
        target={"handoff": {"interface": ".."}},
    ),
    _vep("unknown-handoff-field", "spec.target.handoff.path", target={"handoff": {"path": "/x"}}),
    # -- Endpoint: unknown fields
    _vep("unknown-spec-field", "spec.vlan", vlan=5),
    _vep(
        "unknown-netns-field",
        "spec.target.netns.name",
        target={"netns": {"path": "/run/netns/x", "name": "x"}},
    ),
    # -- Endpoint: transitions
    _update("network-changed", "spec.network", _VEP_BASE, network="other-net"),
    _update("node-changed", "spec.node", _VEP_BASE, node="host-2"),
    _update("ip-changed", "spec.ip", _VEP_BASE, ip="198.18.1.41"),
    _update("ip-removed", "spec.ip", _VEP_BASE, ip=None),
    _update("mac-added", "spec.mac", _VEP_BASE, mac="02:00:00:00:00:07"),
    _update(
        "target-changed",
        "spec.target",
        _VEP_BASE,
        target={"netns": {"path": "/run/netns/other", "interface": "eth0"}},
    ),
)
