"""The Docker driver's calls that decide what to delete or bind, against in-memory fakes at our
own seams: the agent's view of its host's Endpoints and the Kubernetes client (one store serves
both, so a delete is seen by the view). What is real: DockerDriver, the attach library's
detach, the shared model. What is not: the API server, the operator, dockerd
(tests/e2e/test_docker.py drives all of those).
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest

from voile.api import constants as c
from voile.api.attach import Owner, OwnerKind, endpoint_name
from voile.api.model import Endpoint, parse_endpoint
from voile_agent.controller.source import AgentSource, Pulse
from voile_agent.docker import driver as docker_driver
from voile_agent.docker import protocol
from voile_agent.docker.driver import DockerDriver
from voile_agent.docker.protocol import DockerError, PoolId
from voile_agent.docker.state import Binding, NetworkStore

NODE = "host-1"
NET_ID = "6c861cb1bd68f15be5eaa47d35ed73007c665c439e4694e14e10c21365b847fe"
EP_ID = "d040c47786a929eb0b8571cbfe15b6b3c13fcad8028f7236593394a4ea2b9b43"
CIDR = ipaddress.IPv4Network("198.18.1.0/24")
POOL = PoolId(network="blue", cidr=CIDR, nonce="01")


class Store:
    """Endpoints by (namespace, name): what the API server holds and the watch shows."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.patched: list[tuple[str, Any]] = []

    @staticmethod
    def _key(path: str) -> tuple[str, str]:
        parts = path.split("/")
        return parts[parts.index("namespaces") + 1], parts[-1]

    # the KubeClient calls the driver and voile.attach make
    async def get(self, path: str) -> dict[str, Any] | None:
        return self.objs.get(self._key(path))

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        self.deleted.append(path.rsplit("/", 1)[-1])
        return self.objs.pop(self._key(path), None) is not None

    async def patch(self, path: str, body: Any, *, kind: str = "merge") -> dict[str, Any]:
        self.patched.append((path.rsplit("/", 1)[-1], body))
        obj = self.objs[self._key(path)]
        obj["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return obj


class View:
    synced = True

    async def wait_synced(self) -> None:
        return None


class FakeAgent:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.view = View()

    def endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(o) for o in self.store.objs.values()]


def docker_ep(store: Store, owner_id: str, ip: str, *, bound: str | None = None,
              kind: str = "docker", name: str | None = None) -> str:  # fmt: skip
    owner = Owner(kind=OwnerKind(kind), id=owner_id)
    name = name or endpoint_name("blue", owner, "")
    annotations = {c.ANNOTATION_OWNER_ID: owner_id, c.ANNOTATION_INTERFACE: ""}
    if bound:
        annotations[c.ANNOTATION_DOCKER_ENDPOINT] = bound
    last = int(ip.rsplit(".", 1)[1])
    store.objs[("default", name)] = {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "labels": {c.LABEL_OWNER_KIND: kind},
            "annotations": annotations,
        },
        "spec": {"network": "blue", "node": NODE, "target": {"handoff": {}}},
        "status": {"ip": ip, "mac": f"0a:58:c6:12:01:{last:02x}", "prefixLength": 24},
    }
    return name


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def driver(store: Store, tmp_path: Path) -> DockerDriver:
    agent = FakeAgent(store)
    d = DockerDriver(
        agent=agent,  # type: ignore[arg-type]
        client=store,  # type: ignore[arg-type]
        source=AgentSource(agent, Pulse(), poll=0.01),  # type: ignore[arg-type]
        node=NODE,
        namespace="default",
        store=NetworkStore(tmp_path),
        timeout=2,
    )
    await d.store.put(Binding(network_id=NET_ID, network="blue", cidr=CIDR))
    return d


async def test_release_deletes_only_the_docker_endpoint_holding_the_address(
    store: Store, driver: DockerDriver
) -> None:
    held = docker_ep(store, "ipam-aa", "198.18.1.5", bound=EP_ID)
    docker_ep(store, "ipam-bb", "198.18.1.6", bound="f" * 64)
    docker_ep(store, "pod-1", "198.18.1.7", kind="cni")  # same network, not Docker's
    release = protocol.ReleaseAddress(pool=POOL, address=ipaddress.IPv4Address("198.18.1.5"))
    assert await driver.release_address(release) == {}
    assert store.deleted == [held]
    # Idempotent: nothing holds it any more (and nothing holds a gateway): success, no delete.
    assert await driver.release_address(release) == {}
    cni = protocol.ReleaseAddress(pool=POOL, address=ipaddress.IPv4Address("198.18.1.7"))
    assert await driver.release_address(cni) == {}
    assert store.deleted == [held]


async def test_an_endpoint_not_named_by_the_driver_is_never_deleted(
    store: Store, driver: DockerDriver
) -> None:
    docker_ep(store, "ipam-aa", "198.18.1.5", name="hand-made")
    release = protocol.ReleaseAddress(pool=POOL, address=ipaddress.IPv4Address("198.18.1.5"))
    await driver.release_address(release)
    assert store.deleted == []


async def test_create_endpoint_binds_and_answers_voiles_mac(
    store: Store, driver: DockerDriver
) -> None:
    name = docker_ep(store, "ipam-aa", "198.18.1.5")
    req = protocol.CreateEndpoint(
        network_id=NET_ID,
        endpoint_id=EP_ID,
        address=ipaddress.IPv4Interface("198.18.1.5/24"),
        mac=None,
    )
    assert await driver.create_endpoint(req) == {"Interface": {"MacAddress": "0a:58:c6:12:01:05"}}
    assert store.patched == [
        (
            name,
            {
                "metadata": {
                    "annotations": {
                        c.ANNOTATION_DOCKER_ENDPOINT: EP_ID,
                        c.ANNOTATION_DOCKER_NETWORK: NET_ID,
                    }
                }
            },
        )
    ]
    # Later calls carry Docker's endpoint id alone; a restarted driver finds it by annotation.
    driver._bound.clear()
    join = await driver.endpoint_oper_info(
        protocol.EndpointRef(network_id=NET_ID, endpoint_id=EP_ID)
    )
    assert join == {"Value": {"voile.dev/endpoint": f"default/{name}"}}


async def test_create_endpoint_refusals(store: Store, driver: DockerDriver) -> None:
    docker_ep(store, "ipam-aa", "198.18.1.5", bound="f" * 64)
    unknown = protocol.CreateEndpoint(
        network_id="0" * 64, endpoint_id=EP_ID, address=None, mac=None
    )
    with pytest.raises(DockerError, match="is not known to the Voile driver"):
        await driver.create_endpoint(unknown)
    other = protocol.CreateEndpoint(
        network_id=NET_ID, endpoint_id=EP_ID,
        address=ipaddress.IPv4Interface("198.18.1.9/24"), mac=None,
    )  # fmt: skip
    with pytest.raises(DockerError, match=r"no Voile Endpoint of this host holds 198\.18\.1\.9"):
        await driver.create_endpoint(other)
    taken = protocol.CreateEndpoint(
        network_id=NET_ID, endpoint_id=EP_ID,
        address=ipaddress.IPv4Interface("198.18.1.5/24"), mac=None,
    )  # fmt: skip
    with pytest.raises(DockerError, match="already Docker endpoint ffffffffffff's"):
        await driver.create_endpoint(taken)
    assert store.patched == []


async def test_unbound_endpoints_are_collected_after_the_grace_only(
    store: Store, driver: DockerDriver
) -> None:
    bound = docker_ep(store, "ipam-aa", "198.18.1.5", bound=EP_ID)
    orphan = docker_ep(store, "ipam-bb", "198.18.1.6")
    docker_ep(store, "pod-1", "198.18.1.7", kind="cni")
    assert await driver.collect() == []  # first seen unbound now
    assert await driver.collect() == []
    driver._unbound[f"uid-{orphan}"] = time.monotonic() - docker_driver.UNBOUND_GRACE - 1
    assert await driver.collect() == [f"default/{orphan}"]
    assert ("default", bound) in store.objs and len(store.objs) == 2


async def test_pool_requests_without_a_subnet_end_dockers_overlap_loop(
    store: Store, driver: DockerDriver
) -> None:
    async def networks(name: str | None = None) -> list[Any]:
        from tests.catalogue import network
        from voile.api.model import parse_overlay_network

        return [parse_overlay_network(network("blue"))]

    driver._networks = networks  # type: ignore[method-assign]
    ask = protocol.RequestPool(address_space="voile", pool=None, network="blue")
    first = await driver.request_pool(ask)
    assert first["Pool"] == "198.18.1.0/24"
    # Docker asks again (its CIDR overlapped a host route): the second answer ends the loop.
    with pytest.raises(DockerError, match="overlaps a route or name server of this host"):
        await driver.request_pool(ask)
    # Released (or taken by CreateNetwork), the next creation is fine.
    await driver.release_pool(protocol.ReleasePool(pool=protocol.parse_pool_id(first["PoolID"])))
    assert (await driver.request_pool(ask))["Pool"] == "198.18.1.0/24"
    # An address asked for while the pool's network is being created is an --aux-address.
    with_subnet = protocol.RequestPool(address_space="voile", pool=CIDR, network="blue")
    pending = protocol.parse_pool_id((await driver.request_pool(with_subnet))["PoolID"])
    aux = protocol.RequestAddress(
        pool=pending, address=ipaddress.IPv4Address("198.18.1.9"), gateway=False
    )
    with pytest.raises(DockerError, match="--aux-address is not supported"):
        await driver.request_address(aux)
