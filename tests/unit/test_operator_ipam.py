"""Address and VNI planning of the operator (pure; no API server). Table-driven plus Hypothesis
properties: the planner never proposes a duplicate, reserved, excluded or outside address."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voile.api import constants as c
from voile.api.model import parse_network_spec
from voile_operator.planning import ipam, vni

IP = ipaddress.IPv4Address


def pool(cidr: str, gateway: str | None = None, exclude: tuple[str, ...] = ()) -> ipam.Pool:
    raw: dict[str, object] = {"cidr": cidr, "excludeIPs": list(exclude)}
    if gateway:
        raw["gateway"] = gateway
    return ipam.Pool.from_spec("net", parse_network_spec(raw))


@pytest.mark.parametrize(
    ("cidr", "gateway", "exclude", "capacity"),
    [
        ("198.18.0.0/30", None, (), 2),
        ("198.18.0.0/30", "198.18.0.1", (), 1),
        ("198.18.0.0/24", "198.18.0.1", (), 253),
        ("198.18.0.0/24", "198.18.0.1", ("198.18.0.1-198.18.0.10",), 244),
        ("198.18.0.0/24", None, ("198.18.0.0/28", "198.18.0.8-198.18.0.20"), 234),
        ("198.18.0.0/16", None, (), 65534),
    ],
)
def test_capacity(cidr: str, gateway: str | None, exclude: tuple[str, ...], capacity: int) -> None:
    assert pool(cidr, gateway, exclude).capacity == capacity


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("198.18.1.5", None),
        ("198.18.1.0", c.Reason.ADDRESS_RESERVED),  # network
        ("198.18.1.255", c.Reason.ADDRESS_RESERVED),  # broadcast
        ("198.18.1.1", c.Reason.ADDRESS_RESERVED),  # gateway
        ("198.18.1.20", c.Reason.ADDRESS_EXCLUDED),
        ("198.18.1.16", c.Reason.ADDRESS_EXCLUDED),
        ("198.18.2.5", c.Reason.ADDRESS_OUTSIDE_CIDR),
    ],
)
def test_classify_static(ip: str, reason: c.Reason | None) -> None:
    p = pool("198.18.1.0/24", "198.18.1.1", ("198.18.1.16-198.18.1.31",))
    assert p.classify_static(IP(ip)) == reason


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ((), "198.18.1.2"),
        (("198.18.1.2",), "198.18.1.3"),
        (("198.18.1.2", "198.18.1.3"), "198.18.1.32"),  # skips the excluded range
        (tuple(f"198.18.1.{i}" for i in range(2, 255)), None),
    ],
)
def test_lowest_free(taken: tuple[str, ...], expected: str | None) -> None:
    p = pool("198.18.1.0/24", "198.18.1.1", ("198.18.1.4-198.18.1.31",))
    got = p.lowest_free({int(IP(t)) for t in taken})
    assert (str(got) if got else None) == expected


def test_slash30_hands_out_two() -> None:
    p = pool("198.18.0.0/30")
    first = p.lowest_free(set())
    assert first == IP("198.18.0.1")
    second = p.lowest_free({int(first)})
    assert second == IP("198.18.0.2")
    assert p.lowest_free({int(first), int(second)}) is None


networks = st.sampled_from(["198.18.0.0/30", "198.18.0.0/29", "198.18.4.0/27", "198.18.8.0/26"])


@settings(max_examples=200, deadline=None)
@given(cidr=networks, data=st.data())
def test_property_never_duplicates_or_reserved(cidr: str, data: st.DataObject) -> None:
    net = ipaddress.IPv4Network(cidr)
    hosts = [str(h) for h in net.hosts()]
    gateway = data.draw(st.one_of(st.none(), st.sampled_from(hosts)))
    exclude = data.draw(st.lists(st.sampled_from(hosts), max_size=4, unique=True))
    p = pool(cidr, gateway, tuple(exclude))
    taken: set[int] = set(data.draw(st.sets(st.sampled_from([int(IP(h)) for h in hosts]))))
    pre = set(taken)
    handed: list[IPv4] = []
    for _ in range(len(hosts) + 2):
        got = p.lowest_free(taken)
        if got is None:
            break
        assert int(got) not in taken, "proposed a taken address"
        assert got in net and got not in (net.network_address, net.broadcast_address)
        assert gateway is None or got != IP(gateway)
        assert str(got) not in exclude
        assert p.classify_static(got) is None
        taken.add(int(got))
        handed.append(got)
    assert len(set(handed)) == len(handed)
    allowed = {int(IP(h)) for h in hosts} - {int(IP(e)) for e in exclude}
    if gateway:
        allowed.discard(int(IP(gateway)))
    assert taken >= allowed  # exhausted only when every allowed address is taken
    assert len(allowed) == p.capacity
    assert len(handed) == len(allowed - pre)


IPv4 = ipaddress.IPv4Address


def claim(name_ip: str, network: str = "net", uid: str = "u1") -> ipam.IPClaimInfo:
    ip = IP(name_ip)
    return ipam.IPClaimInfo(
        name=ipam.ip_claim_name(network, ip),
        uid=f"claim-{name_ip}",
        network=network,
        ip=ip,
        endpoint_namespace="ns",
        endpoint_name="a",
        endpoint_uid=uid,
    )


@pytest.mark.parametrize(
    ("held", "status_ip", "requested", "keep", "release"),
    [
        ((), None, None, None, ()),
        (("198.18.0.5",), None, None, "198.18.0.5", ()),
        (("198.18.0.7", "198.18.0.5"), None, None, "198.18.0.5", ("198.18.0.7",)),
        (("198.18.0.7", "198.18.0.5"), "198.18.0.7", None, "198.18.0.7", ("198.18.0.5",)),
        (("198.18.0.7",), None, "198.18.0.9", None, ("198.18.0.7",)),
        (("198.18.0.7", "198.18.0.9"), "198.18.0.7", "198.18.0.9", "198.18.0.9", ("198.18.0.7",)),
    ],
)
def test_plan_existing_claims(
    held: tuple[str, ...],
    status_ip: str | None,
    requested: str | None,
    keep: str | None,
    release: tuple[str, ...],
) -> None:
    plan = ipam.plan_existing_claims(
        [claim(h) for h in held],
        network="net",
        status_ip=IP(status_ip) if status_ip else None,
        requested_ip=IP(requested) if requested else None,
    )
    assert (str(plan.keep.ip) if plan.keep else None) == keep
    assert tuple(str(r.ip) for r in plan.release) == release


def test_foreign_network_claims_are_released() -> None:
    plan = ipam.plan_existing_claims(
        [claim("198.18.0.5", network="old"), claim("198.18.0.6")],
        network="net",
        status_ip=None,
        requested_ip=None,
    )
    assert plan.keep is not None and plan.keep.network == "net"
    assert [r.network for r in plan.release] == ["old"]


def test_claim_body_roundtrip() -> None:
    body = ipam.ip_claim_body("net-a", IP("198.18.0.9"), namespace="ns", name="a", uid="u")
    assert body["metadata"]["name"] == "net-a-198-18-0-9"
    assert body["metadata"]["labels"][c.LABEL_ENDPOINT_UID] == "u"
    body["metadata"]["uid"] = "x"
    body["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    info = ipam.parse_ip_claim(body)
    assert info is not None and info.ip == IP("198.18.0.9") and info.endpoint_uid == "u"
    assert info.created == datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


# -- VNI and MTU -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_mtu", "underlay", "expected"),
    [(None, 1500, 1450), (None, 9000, 8950), (1400, 1500, 1400)],
)
def test_mtu(spec_mtu: int | None, underlay: int, expected: int) -> None:
    assert vni.mtu_for(spec_mtu, underlay) == expected


def test_lowest_free_vni() -> None:
    assert vni.lowest_free_vni(set()) == vni.AUTO_VNI_BASE
    assert vni.lowest_free_vni({4096, 4097, 4099}) == 4098
    assert vni.lowest_free_vni(set(range(c.MAX_VNI - 1, c.MAX_VNI + 1)), base=c.MAX_VNI - 1) is None


def vclaim(n: int) -> vni.VNIClaimInfo:
    return vni.VNIClaimInfo(
        name=vni.vni_claim_name(n), uid=f"u{n}", vni=n, network="a", network_uid="nu"
    )


@pytest.mark.parametrize(
    ("held", "requested", "status_vni", "keep", "want", "release"),
    [
        ((), None, None, None, None, ()),
        ((), 100, None, None, 100, ()),
        ((100,), 100, None, 100, None, ()),
        ((4096,), 100, 4096, None, 100, (4096,)),
        ((4097, 4096), None, None, 4096, None, (4097,)),
        ((4097, 4096), None, 4097, 4097, None, (4096,)),
    ],
)
def test_plan_vni(
    held: tuple[int, ...],
    requested: int | None,
    status_vni: int | None,
    keep: int | None,
    want: int | None,
    release: tuple[int, ...],
) -> None:
    plan = vni.plan_vni([vclaim(h) for h in held], requested=requested, status_vni=status_vni)
    assert (plan.keep.vni if plan.keep else None) == keep
    assert plan.want == want
    assert tuple(r.vni for r in plan.release) == release
