"""The Docker driver's pure parts: libnetwork requests parsed at the edge, the answers, which
OverlayNetwork a Docker network or pool is, and the state file's format (written atomically).

Pure: no Docker, no API server. The request bodies are the ones dockerd 20.10.24 sent (recorded
with a probe plugin); tests/e2e/test_docker.py drives the real dockerd.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from tests.catalogue import network as network_obj
from voile.api.model import OverlayNetwork, parse_overlay_network
from voile_agent.docker import networks, protocol
from voile_agent.docker.protocol import Api, DockerError, PoolId
from voile_agent.docker.state import Binding, NetworkStore, StateError, parse, render

NET_ID = "6c861cb1bd68f15be5eaa47d35ed73007c665c439e4694e14e10c21365b847fe"
EP_ID = "d040c47786a929eb0b8571cbfe15b6b3c13fcad8028f7236593394a4ea2b9b43"
POOL = "voile:blue:198.18.1.0/24:0a1b2c3d"
CIDR = ipaddress.IPv4Network("198.18.1.0/24")


def net(name: str, deleting: bool = False, **spec: Any) -> OverlayNetwork:
    obj = network_obj(name, **spec)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return parse_overlay_network(obj)


BLUE = net("blue")
TENANT_A = net("tenant-a", cidr="198.18.3.0/24")
TENANT_B = net("tenant-b", cidr="198.18.3.0/24")
GREEN = net("green", cidr="198.18.4.0/24", gateway="198.18.4.1")
ALL = [BLUE, TENANT_A, TENANT_B, GREEN]


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(DockerError) as exc:
        call(*args)
    return exc.value.message


# -- requests as dockerd 20.10 sends them ----------------------------------------------------


def test_request_pool_as_docker_sends_it() -> None:
    raw = {
        "AddressSpace": "voile",
        "Pool": "",
        "SubPool": "",
        "Options": {"voile.dev/network": "blue"},
        "V6": False,
    }
    req = protocol.parse_request_pool(raw)
    assert req == protocol.RequestPool(address_space="voile", pool=None, network="blue")
    with_subnet = protocol.parse_request_pool({**raw, "Pool": "198.18.1.0/24", "Options": {}})
    assert with_subnet.pool == CIDR and with_subnet.network is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"V6": True}, "IPv4 only"),
        ({"SubPool": "198.18.1.0/25"}, "--ip-range is not supported"),
        ({"Options": {"voile.dev/netwrk": "blue"}}, "unknown option --ipam-opt voile.dev/netwrk"),
        ({"Options": {"voile.dev/network": "Blue_1"}}, "does not name an OverlayNetwork"),
        ({"Pool": "198.18.1.1/24"}, "--subnet '198.18.1.1/24' has host bits set"),
        ({"Pool": "nonsense"}, "is not an IPv4 CIDR"),
        ([], "not a JSON object"),
    ],
)
def test_request_pool_refusals(raw: Any, message: str) -> None:
    assert message in refused(protocol.parse_request_pool, raw)


def test_pool_id_round_trip_and_refusals() -> None:
    pool = protocol.parse_pool_id(POOL)
    assert pool == PoolId(network="blue", cidr=CIDR, nonce="0a1b2c3d")
    assert str(pool) == POOL
    for bad in ("pool-1", "voile:blue:198.18.1.0/24", "voile:Blue:198.18.1.0/24:00", 7, None):
        assert "is not a Voile pool" in refused(protocol.parse_pool_id, bad)


@pytest.mark.parametrize(
    ("raw", "address", "gateway"),
    [
        ({"PoolID": POOL, "Address": "", "Options": None}, None, False),
        ({"PoolID": POOL, "Address": "198.18.1.50", "Options": None}, "198.18.1.50", False),
        (
            {
                "PoolID": POOL,
                "Address": "",
                "Options": {"RequestAddressType": "com.docker.network.gateway"},
            },
            None,
            True,
        ),
    ],
)
def test_request_address(raw: dict[str, Any], address: str | None, gateway: bool) -> None:
    req = protocol.parse_request_address(raw)
    assert req.pool.network == "blue"
    assert req.address == (ipaddress.IPv4Address(address) if address else None)
    assert req.gateway is gateway


def test_create_network_as_docker_sends_it() -> None:
    raw = {
        "NetworkID": NET_ID,
        "Options": {
            "com.docker.network.enable_ipv6": False,
            "com.docker.network.generic": {"voile.dev/network": "blue"},
        },
        "IPv4Data": [
            {"AddressSpace": "voile", "Gateway": "198.18.1.0/24", "Pool": "198.18.1.0/24"}
        ],
        "IPv6Data": [],
    }
    req = protocol.parse_create_network(raw)
    assert (req.network_id, req.network, req.pool) == (NET_ID, "blue", CIDR)
    assert req.gateway == ipaddress.IPv4Interface("198.18.1.0/24")
    generic = raw["Options"]["com.docker.network.generic"]
    assert isinstance(generic, dict)
    generic.clear()
    assert protocol.parse_create_network(raw).network is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Options": {"com.docker.network.enable_ipv6": True}}, "IPv4 only"),
        ({"IPv6Data": [{"Pool": "fd00::/64"}]}, "IPv4 only"),
        ({"Options": {"com.docker.network.generic": {"mtu": "9000"}}}, "unknown option -o mtu"),
        ({"IPv4Data": []}, "exactly one IPv4 subnet"),
        ({"IPv4Data": [{"Pool": "198.18.1.0/24"}, {"Pool": "198.18.2.0/24"}]}, "exactly one"),
        ({"NetworkID": "../../etc"}, "is not a Docker id"),
    ],
)
def test_create_network_refusals(change: dict[str, Any], message: str) -> None:
    raw = {
        "NetworkID": NET_ID,
        "Options": {},
        "IPv4Data": [{"AddressSpace": "voile", "Pool": "198.18.1.0/24"}],
        **change,
    }
    assert message in refused(protocol.parse_create_network, raw)


def test_create_endpoint_and_join_as_docker_sends_them() -> None:
    iface = {"Address": "198.18.1.50/24", "AddressIPv6": "", "MacAddress": "02:00:00:00:00:05"}
    raw = {
        "NetworkID": NET_ID,
        "EndpointID": EP_ID,
        "Interface": iface,
        "Options": {"com.docker.network.endpoint.exposedports": []},
    }
    req = protocol.parse_create_endpoint(raw)
    assert req.address == ipaddress.IPv4Interface("198.18.1.50/24")
    assert req.mac == "02:00:00:00:00:05"
    no_mac = protocol.parse_create_endpoint({**raw, "Interface": {**iface, "MacAddress": ""}})
    assert no_mac.mac is None
    assert "multicast" in refused(
        protocol.parse_create_endpoint,
        {**raw, "Interface": {**iface, "MacAddress": "01:00:5e:00:00:01"}},
    )
    join = protocol.parse_join({**raw, "SandboxKey": "/var/run/docker/netns/0b0ee964d6fa"})
    assert join.endpoint_id == EP_ID and join.sandbox_key.endswith("0b0ee964d6fa")


# -- answers ---------------------------------------------------------------------------------


def test_errors_use_each_protocols_own_field() -> None:
    # The IPAM's response struct has Error, the driver's Err: the other one reads as success.
    assert protocol.error_body(Api.IPAM, "no") == {"Error": "no"}
    assert protocol.error_body(Api.DRIVER, "no") == {"Err": "no"}


def test_capabilities() -> None:
    assert protocol.activate() == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert protocol.driver_capabilities() == {"Scope": "local", "ConnectivityScope": "global"}
    assert protocol.ipam_capabilities()["RequiresMACAddress"] is False


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [(None, "198.18.1.0/24"), (ipaddress.IPv4Address("198.18.1.1"), "198.18.1.1/24")],
)
def test_pool_answer_carries_the_gateway(
    gateway: ipaddress.IPv4Address | None, expected: str
) -> None:
    pool = PoolId(network="blue", cidr=CIDR, nonce="00")
    answer = protocol.pool_answer(pool, gateway)
    assert answer == {
        "PoolID": "voile:blue:198.18.1.0/24:00",
        "Pool": "198.18.1.0/24",
        "Data": {"com.docker.network.gateway": expected},
    }


def test_join_answer_never_asks_for_docker_gwbridge() -> None:
    plain = protocol.join_answer("vh0123456789a", None)
    assert plain == {
        "InterfaceName": {"SrcName": "vh0123456789a", "DstPrefix": "eth"},
        "DisableGatewayService": True,
    }
    routed = protocol.join_answer("vh0123456789a", ipaddress.IPv4Address("198.18.4.1"))
    assert routed["Gateway"] == "198.18.4.1" and routed["DisableGatewayService"] is True


def test_endpoint_answer_gives_the_mac_only_when_docker_has_none() -> None:
    assert protocol.endpoint_answer("0a:58:c6:12:01:05") == {
        "Interface": {"MacAddress": "0a:58:c6:12:01:05"}
    }
    assert protocol.endpoint_answer(None) == {}


# -- which OverlayNetwork --------------------------------------------------------------------


def pool_req(network: str | None = None, pool: str | None = None) -> protocol.RequestPool:
    return protocol.RequestPool(
        address_space="voile",
        network=network,
        pool=ipaddress.IPv4Network(pool) if pool else None,
    )


@pytest.mark.parametrize(
    ("request_", "chosen"),
    [
        (pool_req(network="blue"), "blue"),
        (pool_req(network="blue", pool="198.18.1.0/24"), "blue"),
        (pool_req(pool="198.18.1.0/24"), "blue"),
        (pool_req(network="tenant-b", pool="198.18.3.0/24"), "tenant-b"),
    ],
)
def test_pool_network_chosen(request_: protocol.RequestPool, chosen: str) -> None:
    assert networks.pool_network(request_, ALL).name == chosen


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pool_req(network="nope"), "OverlayNetwork 'nope' does not exist"),
        (pool_req(), "name the OverlayNetwork with --ipam-opt voile.dev/network=NAME"),
        (pool_req(pool="198.18.9.0/24"), "no OverlayNetwork has the CIDR 198.18.9.0/24"),
        (pool_req(pool="198.18.3.0/24"), "tenant-a, tenant-b share the CIDR 198.18.3.0/24"),
        (pool_req(network="blue", pool="198.18.4.0/24"), "--subnet 198.18.4.0/24 disagrees"),
    ],
)
def test_pool_network_refusals(request_: protocol.RequestPool, message: str) -> None:
    assert message in refused(networks.pool_network, request_, ALL)


def test_a_network_being_deleted_is_refused() -> None:
    gone = net("blue", deleting=True)
    assert "being deleted" in refused(networks.pool_network, pool_req(network="blue"), [gone])


def create_req(network: str | None, pool: str, space: str = "voile") -> protocol.CreateNetwork:
    return protocol.CreateNetwork(
        network_id=NET_ID,
        network=network,
        address_space=space,
        pool=ipaddress.IPv4Network(pool),
        gateway=None,
    )


A_POOL = PoolId(network="tenant-a", cidr=ipaddress.IPv4Network("198.18.3.0/24"), nonce="01")


@pytest.mark.parametrize(
    ("request_", "pending", "chosen"),
    [
        (create_req("blue", "198.18.1.0/24"), [], "blue"),
        (create_req(None, "198.18.1.0/24"), [], "blue"),
        # Same CIDR twice: the pool the IPAM just handed out decides.
        (create_req(None, "198.18.3.0/24"), [A_POOL], "tenant-a"),
        (create_req("tenant-a", "198.18.3.0/24"), [A_POOL], "tenant-a"),
    ],
)
def test_driver_network_chosen(
    request_: protocol.CreateNetwork, pending: list[PoolId], chosen: str
) -> None:
    assert networks.driver_network(request_, ALL, pending).name == chosen


@pytest.mark.parametrize(
    ("request_", "pending", "message"),
    [
        (create_req("blue", "198.18.1.0/24", space="LocalDefault"), [], "--ipam-driver voile"),
        (create_req(None, "198.18.3.0/24"), [], "share the CIDR 198.18.3.0/24: name one with -o"),
        (create_req("tenant-b", "198.18.3.0/24"), [A_POOL], "disagrees with the IPAM's"),
        (create_req("green", "198.18.1.0/24"), [], "--subnet 198.18.1.0/24 disagrees"),
        (create_req("nope", "198.18.1.0/24"), [], "'nope' does not exist"),
    ],
)
def test_driver_network_refusals(
    request_: protocol.CreateNetwork, pending: list[PoolId], message: str
) -> None:
    assert message in refused(networks.driver_network, request_, ALL, pending)


def address_req(
    address: str | None, pool: PoolId, gateway: bool = False
) -> protocol.RequestAddress:
    return protocol.RequestAddress(
        pool=pool, address=ipaddress.IPv4Address(address) if address else None, gateway=gateway
    )


GREEN_POOL = PoolId(network="green", cidr=ipaddress.IPv4Network("198.18.4.0/24"), nonce="02")
BLUE_POOL = PoolId(network="blue", cidr=CIDR, nonce="03")


def test_gateway_answers() -> None:
    assert networks.gateway_address(address_req(None, GREEN_POOL, True), GREEN) == "198.18.4.1/24"
    assert networks.gateway_address(address_req("198.18.4.1", GREEN_POOL, True), GREEN) == (
        "198.18.4.1/24"
    )
    assert networks.gateway_address(address_req(None, BLUE_POOL, True), BLUE) == "198.18.1.0/24"
    assert "disagrees with OverlayNetwork 'green'" in refused(
        networks.gateway_address, address_req("198.18.4.9", GREEN_POOL, True), GREEN
    )
    assert "has no gateway" in refused(
        networks.gateway_address, address_req("198.18.1.1", BLUE_POOL, True), BLUE
    )


def test_static_address_outside_the_network_is_refused_before_anything_is_made() -> None:
    networks.check_static(address_req("198.18.1.7", BLUE_POOL))
    networks.check_static(address_req(None, BLUE_POOL))
    assert "outside OverlayNetwork 'blue'" in refused(
        networks.check_static, address_req("198.18.9.7", BLUE_POOL)
    )


# -- the state file --------------------------------------------------------------------------


def test_state_round_trip() -> None:
    bindings = {NET_ID: Binding(network_id=NET_ID, network="blue", cidr=CIDR)}
    assert parse(json.loads(json.dumps(render(bindings)))) == bindings


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"version": 2, "networks": {}},
        {"version": 1, "networks": []},
        {"version": 1, "networks": {NET_ID: {"network": "Blue", "cidr": "198.18.1.0/24"}}},
        {"version": 1, "networks": {NET_ID: {"network": "blue", "cidr": "198.18.1.1/24"}}},
    ],
)
def test_state_refusals(raw: Any) -> None:
    with pytest.raises(StateError):
        parse(raw)


async def test_store_writes_atomically_and_reads_back(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "state")
    store.load()  # no file: no networks
    assert store.all() == []
    binding = Binding(network_id=NET_ID, network="blue", cidr=CIDR)
    await store.put(binding)
    await store.put(binding)  # idempotent
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["docker-networks.json"]
    again = NetworkStore(tmp_path / "state")
    again.load()
    assert again.get(NET_ID) == binding
    assert await again.remove(NET_ID) is True
    assert await again.remove(NET_ID) is False
    third = NetworkStore(tmp_path / "state")
    third.load()
    assert third.all() == []


def test_an_unreadable_state_file_is_an_error_not_no_networks(tmp_path: Path) -> None:
    (tmp_path / "docker-networks.json").write_text("{half")
    store = NetworkStore(tmp_path)
    with pytest.raises(StateError, match="is not JSON"):
        store.load()
