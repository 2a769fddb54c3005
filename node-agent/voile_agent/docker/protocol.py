"""libnetwork's remote NetworkDriver and IpamDriver protocols, parsed once at the edge. Pure.

Every request Docker sends becomes a frozen dataclass here (or ``DockerError`` with a message
``docker`` prints), and every answer is built here. Facts from moby/libnetwork (the 20.10 line
that Debian's docker.io 20.10.24 vendors: drivers/remote/api/api.go, ipams/remote/api/api.go,
network.go) and from dockerd 20.10 itself:

- Driver errors are ``{"Err": "..."}``; IPAM errors are ``{"Error": "..."}`` (the IPAM response's
  field is ``Error``, and an IPAM answer with only ``Err`` would read as success). Both with HTTP
  200: Docker prints ``Error response from daemon: ... remote: <message>``.
- The IPAM driver sees neither the network's name nor its ``-o`` options: RequestPool carries
  ``--subnet`` (Pool), ``--ip-range`` (SubPool) and ``--ipam-opt`` (Options) only, and it runs
  before the driver's CreateNetwork. So the OverlayNetwork reaches the IPAM as
  ``--ipam-opt voile.dev/network=NAME`` or through ``--subnet``; the pool id we answer names it,
  and every later RequestAddress carries that pool id.
- Without ``RequiresMACAddress`` (we do not ask for it) Docker generates no MAC: CreateEndpoint
  carries ``--mac-address`` or none, and the driver may answer the Endpoint's own MAC, which
  Docker then sets on the container's interface. That keeps Voile's MACs derived from the
  address (``0a:58:<ip>``), so a reused address keeps its MAC and every peer's ARP cache stays
  right (Docker's random 02:42:... MACs would leave peers sending to the previous holder's MAC,
  as Voile answers ARP on each host and peers are never asked again). RequestAddress carries no
  options for a container and for ``--aux-address``; the gateway request carries
  ``RequestAddressType: com.docker.network.gateway``.
- ``docker run --ip`` works only on networks created with ``--subnet`` (dockerd checks that).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from voile.api.model import DNS_LABEL, parse_cidr, parse_ipv4, parse_mac
from voile.errors import ValidationError, VoileError

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
NETWORK_DRIVER = "NetworkDriver"
IPAM_DRIVER = "IpamDriver"

# The option users give, as -o (driver) and --ipam-opt (IPAM).
OPTION_NETWORK = "voile.dev/network"
# What Docker puts into requests.
GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY = "com.docker.network.gateway"  # the address type, and RequestPool's Data key

ADDRESS_SPACE = "voile"
POOL_PREFIX = "voile:"
_DOCKER_ID = re.compile(r"[0-9A-Za-z]{1,128}")
DST_PREFIX = "eth"


class DockerError(VoileError):
    """A request Docker cannot be given what it asks for; ``message`` is what ``docker`` prints
    (after ``remote: ``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Api(str, enum.Enum):
    DRIVER = NETWORK_DRIVER
    IPAM = IPAM_DRIVER


def error_body(api: Api, message: str) -> dict[str, str]:
    """The error answer of one protocol: ``Err`` for the driver, ``Error`` for the IPAM."""
    return {"Error": message} if api == Api.IPAM else {"Err": message}


# -- the pool id: which OverlayNetwork a Docker address pool is ----------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PoolId:
    """``voile:<network>:<cidr>:<nonce>``: the IPAM answers it from RequestPool and Docker hands
    it back with every RequestAddress and ReleaseAddress, so addresses need no IPAM state. The
    nonce tells the pools of two Docker networks apart (and a pool whose network is still being
    created from one in use)."""

    network: str
    cidr: ipaddress.IPv4Network
    nonce: str

    def __str__(self) -> str:
        return f"{POOL_PREFIX}{self.network}:{self.cidr}:{self.nonce}"


_NONCE = re.compile(r"[0-9a-f]{1,32}")


def parse_pool_id(raw: object) -> PoolId:
    bad = DockerError(f"pool {raw!r} is not a Voile pool")
    if not isinstance(raw, str) or not raw.startswith(POOL_PREFIX):
        raise bad
    parts = raw.removeprefix(POOL_PREFIX).split(":")
    if len(parts) != 3 or not DNS_LABEL.fullmatch(parts[0]) or not _NONCE.fullmatch(parts[2]):
        raise bad
    try:
        cidr = parse_cidr(parts[1], "PoolID")
    except ValidationError:
        raise bad from None
    return PoolId(network=parts[0], cidr=cidr, nonce=parts[2])


def docker_gateway(cidr: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address | None) -> str:
    """What Docker is told the network's gateway is: the OverlayNetwork's, or without one its
    network address (Docker insists on a gateway; Voile never hands that address out, and the
    driver gives containers no route through it)."""
    return f"{gateway or cidr.network_address}/{cidr.prefixlen}"


# -- requests --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RequestPool:
    address_space: str
    pool: ipaddress.IPv4Network | None  # --subnet
    network: str | None  # --ipam-opt voile.dev/network


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RequestAddress:
    pool: PoolId
    address: ipaddress.IPv4Address | None  # --ip, --aux-address, or --gateway for the gateway
    gateway: bool  # Docker asks for the network's gateway


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseAddress:
    pool: PoolId
    address: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ReleasePool:
    pool: PoolId


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CreateNetwork:
    network_id: str
    network: str | None  # -o voile.dev/network
    address_space: str
    pool: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Interface | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkRef:
    network_id: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CreateEndpoint:
    network_id: str
    endpoint_id: str
    address: ipaddress.IPv4Interface | None
    mac: str | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EndpointRef:
    network_id: str
    endpoint_id: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Join:
    network_id: str
    endpoint_id: str
    sandbox_key: str


def _object(raw: object) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DockerError("the request is not a JSON object")
    return raw


def _docker_id(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not _DOCKER_ID.fullmatch(value):
        raise DockerError(f"{key} {value!r} is not a Docker id")
    return value


def _string(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key) or ""
    if not isinstance(value, str):
        raise DockerError(f"{key} {value!r} is not a string")
    return value


def _options(raw: object, where: str) -> dict[str, str]:
    """User options (``-o``, ``--ipam-opt``): only ``voile.dev/network`` is known, so a typo is
    an error and not silently ignored."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DockerError(f"{where} options are not an object")
    for key, value in raw.items():
        if key != OPTION_NETWORK:
            raise DockerError(
                f"unknown option {where} {key}: the Voile driver takes only "
                f"{where} {OPTION_NETWORK}=NAME"
            )
        if not isinstance(value, str) or not DNS_LABEL.fullmatch(value):
            raise DockerError(f"{where} {OPTION_NETWORK}={value!r} does not name an OverlayNetwork")
    return dict(raw)


def _cidr(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        return parse_cidr(value, what)
    except ValidationError as exc:
        raise DockerError(f"{what} {exc.message}") from None


def _ip(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return parse_ipv4(value, what)
    except ValidationError:
        raise DockerError(f"{what} {value!r} is not an IPv4 address") from None


def _interface(value: str, what: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise DockerError(f"{what} {value!r} is not an IPv4 address with a prefix") from None
    return iface


def parse_request_pool(raw: object) -> RequestPool:
    body = _object(raw)
    if body.get("V6"):
        raise DockerError("Voile networks are IPv4 only: create the network without --ipv6")
    if _string(body, "SubPool"):
        raise DockerError(
            "--ip-range is not supported: Voile's operator allocates from the whole CIDR "
            "(keep addresses out with the OverlayNetwork's spec.excludeIPs)"
        )
    pool = _string(body, "Pool")
    options = _options(body.get("Options"), "--ipam-opt")
    return RequestPool(
        address_space=_string(body, "AddressSpace"),
        pool=_cidr(pool, "--subnet") if pool else None,
        network=options.get(OPTION_NETWORK),
    )


def parse_request_address(raw: object) -> RequestAddress:
    body = _object(raw)
    options = body.get("Options") or {}
    if not isinstance(options, Mapping):
        raise DockerError("RequestAddress options are not an object")
    address = _string(body, "Address")
    return RequestAddress(
        pool=parse_pool_id(body.get("PoolID")),
        address=_ip(address, "address") if address else None,
        gateway=options.get(REQUEST_ADDRESS_TYPE) == GATEWAY,
    )


def _mac(value: object) -> str:
    try:
        return parse_mac(value, "--mac-address")
    except ValidationError as exc:
        raise DockerError(exc.message) from None


def parse_release_address(raw: object) -> ReleaseAddress:
    body = _object(raw)
    return ReleaseAddress(
        pool=parse_pool_id(body.get("PoolID")), address=_ip(_string(body, "Address"), "address")
    )


def parse_release_pool(raw: object) -> ReleasePool:
    return ReleasePool(pool=parse_pool_id(_object(raw).get("PoolID")))


def parse_create_network(raw: object) -> CreateNetwork:
    body = _object(raw)
    options = body.get("Options") or {}
    if not isinstance(options, Mapping):
        raise DockerError("CreateNetwork options are not an object")
    if options.get(ENABLE_IPV6) or body.get("IPv6Data"):
        raise DockerError("Voile networks are IPv4 only: create the network without --ipv6")
    generic = _options(options.get(GENERIC), "-o")
    data = body.get("IPv4Data") or []
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], Mapping):
        raise DockerError("a Voile network has exactly one IPv4 subnet (one OverlayNetwork)")
    v4 = data[0]
    gateway = _string(v4, "Gateway")
    return CreateNetwork(
        network_id=_docker_id(body, "NetworkID"),
        network=generic.get(OPTION_NETWORK),
        address_space=_string(v4, "AddressSpace"),
        pool=_cidr(_string(v4, "Pool"), "--subnet"),
        gateway=_interface(gateway, "gateway") if gateway else None,
    )


def parse_network_ref(raw: object) -> NetworkRef:
    return NetworkRef(network_id=_docker_id(_object(raw), "NetworkID"))


def parse_create_endpoint(raw: object) -> CreateEndpoint:
    body = _object(raw)
    iface = body.get("Interface") or {}
    if not isinstance(iface, Mapping):
        raise DockerError("CreateEndpoint's Interface is not an object")
    if _string(iface, "AddressIPv6"):
        raise DockerError("Voile networks are IPv4 only")
    address = _string(iface, "Address")
    mac = _string(iface, "MacAddress")
    return CreateEndpoint(
        network_id=_docker_id(body, "NetworkID"),
        endpoint_id=_docker_id(body, "EndpointID"),
        address=_interface(address, "address") if address else None,
        mac=_mac(mac) if mac else None,
    )


def parse_endpoint_ref(raw: object) -> EndpointRef:
    body = _object(raw)
    return EndpointRef(
        network_id=_docker_id(body, "NetworkID"), endpoint_id=_docker_id(body, "EndpointID")
    )


def parse_join(raw: object) -> Join:
    body = _object(raw)
    return Join(
        network_id=_docker_id(body, "NetworkID"),
        endpoint_id=_docker_id(body, "EndpointID"),
        sandbox_key=_string(body, "SandboxKey"),
    )


# -- answers ---------------------------------------------------------------------------------


def activate() -> dict[str, Any]:
    return {"Implements": [NETWORK_DRIVER, IPAM_DRIVER]}


def driver_capabilities() -> dict[str, Any]:
    """Scope local: Docker 20.10 refuses a global-scope driver without a key-value store; each
    host runs its own ``docker network create``. Connectivity global: its containers reach
    other hosts (as Docker's macvlan says of itself)."""
    return {"Scope": "local", "ConnectivityScope": "global"}


def ipam_capabilities() -> dict[str, Any]:
    """No MAC from Docker (Voile's own, derived from the address, is answered in
    CreateEndpoint); no replay of requests after a daemon restart (pools need no state here,
    addresses live in the API)."""
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def address_spaces() -> dict[str, Any]:
    return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}


def pool_answer(pool: PoolId, gateway: ipaddress.IPv4Address | None) -> dict[str, Any]:
    """The pool and, in its data, the gateway: Docker then asks for no gateway address."""
    return {
        "PoolID": str(pool),
        "Pool": str(pool.cidr),
        "Data": {GATEWAY: docker_gateway(pool.cidr, gateway)},
    }


def endpoint_answer(mac: str | None) -> dict[str, Any]:
    """The Endpoint's MAC, when Docker has none of its own (no --mac-address)."""
    return {"Interface": {"MacAddress": mac}} if mac else {}


def join_answer(interface: str, gateway: ipaddress.IPv4Address | None) -> dict[str, Any]:
    """Docker moves ``interface`` (the handed-off veth end, with the endpoint's MAC and MTU) into
    the container as eth<N> and sets the address. A default route only through the network's
    own gateway; never Docker's docker_gwbridge (no NAT to the outside behind Voile's back)."""
    answer: dict[str, Any] = {
        "InterfaceName": {"SrcName": interface, "DstPrefix": DST_PREFIX},
        "DisableGatewayService": True,
    }
    if gateway is not None:
        answer["Gateway"] = str(gateway)
    return answer
