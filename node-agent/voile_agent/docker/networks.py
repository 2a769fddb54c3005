"""Which OverlayNetwork a Docker network or address pool is, and what Docker may be told about
it. Pure: the OverlayNetworks come in parsed, a decision (or ``DockerError``) comes out.

The IPAM learns the OverlayNetwork from ``--ipam-opt voile.dev/network=NAME`` or from ``--subnet``
(when exactly one OverlayNetwork has that CIDR): Docker gives an IPAM driver nothing else. The
driver learns it from ``-o voile.dev/network=NAME``, else from the pool the IPAM has just handed
out for this creation (the IPAM's RequestPool and the driver's CreateNetwork are one ``docker
network create``, in that order), else from the CIDR when it is unique.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence

from voile.api.model import OverlayNetwork
from voile_agent.docker.protocol import (
    ADDRESS_SPACE,
    OPTION_NETWORK,
    CreateNetwork,
    DockerError,
    PoolId,
    RequestAddress,
    RequestPool,
    docker_gateway,
)

NAME_IT = f"--ipam-opt {OPTION_NETWORK}=NAME"


def _by_name(name: str, networks: Sequence[OverlayNetwork]) -> OverlayNetwork:
    for net in networks:
        if net.name == name:
            return net
    raise DockerError(f"OverlayNetwork {name!r} does not exist (kubectl get overlaynetworks)")


def _by_cidr(
    cidr: ipaddress.IPv4Network, networks: Sequence[OverlayNetwork], how: str
) -> OverlayNetwork:
    matches = sorted(n.name for n in networks if n.spec.cidr == cidr)
    if not matches:
        raise DockerError(f"no OverlayNetwork has the CIDR {cidr}; name one with {how}")
    if len(matches) > 1:
        raise DockerError(
            f"OverlayNetworks {', '.join(matches)} share the CIDR {cidr}: name one with {how}"
        )
    return _by_name(matches[0], networks)


def _usable(net: OverlayNetwork, subnet: ipaddress.IPv4Network | None) -> OverlayNetwork:
    if net.deleting:
        raise DockerError(f"OverlayNetwork {net.name!r} is being deleted")
    if subnet is not None and subnet != net.spec.cidr:
        raise DockerError(
            f"--subnet {subnet} disagrees with OverlayNetwork {net.name!r}, whose CIDR is "
            f"{net.spec.cidr} (give --subnet {net.spec.cidr}, or leave it out)"
        )
    return net


def pool_network(request: RequestPool, networks: Sequence[OverlayNetwork]) -> OverlayNetwork:
    """The OverlayNetwork an IPAM pool request means."""
    if request.address_space not in ("", ADDRESS_SPACE):
        raise DockerError(f"address space {request.address_space!r} is not Voile's")
    if request.network is not None:
        net = _by_name(request.network, networks)
    elif request.pool is not None:
        net = _by_cidr(request.pool, networks, NAME_IT)
    else:
        raise DockerError(
            f"name the OverlayNetwork with {NAME_IT} (Docker tells an IPAM driver neither the "
            "network's name nor its -o options), or give --subnet with its CIDR"
        )
    return _usable(net, request.pool)


def driver_network(
    request: CreateNetwork, networks: Sequence[OverlayNetwork], pending: Collection[PoolId]
) -> OverlayNetwork:
    """The OverlayNetwork a Docker network is, given the pools the IPAM handed out and no
    network has taken yet (``pending``)."""
    if request.address_space != ADDRESS_SPACE:
        raise DockerError(
            "the Voile driver needs Voile's IPAM: create the network with --ipam-driver voile "
            "(Voile allocates every address, so a container never gets one a pod holds)"
        )
    how = f"-o {OPTION_NETWORK}=NAME"
    offered = sorted({p.network for p in pending if p.cidr == request.pool})
    if request.network is not None:
        net = _by_name(request.network, networks)
        if offered and net.name not in offered:
            raise DockerError(
                f"-o {OPTION_NETWORK}={net.name} disagrees with the IPAM's OverlayNetwork "
                f"{offered[0]!r} (--ipam-opt); name the same network in both"
            )
    elif len(offered) == 1:
        net = _by_name(offered[0], networks)
    else:
        net = _by_cidr(request.pool, networks, how)
    return _usable(net, request.pool)


def gateway_address(request: RequestAddress, net: OverlayNetwork) -> str:
    """The answer to Docker's request for the network's gateway (``--gateway`` must agree)."""
    want = net.spec.gateway
    if request.address is not None:
        if want is None:
            raise DockerError(
                f"OverlayNetwork {net.name!r} has no gateway: leave out --gateway "
                "(or set the network's spec.gateway)"
            )
        if request.address != want:
            raise DockerError(
                f"--gateway {request.address} disagrees with OverlayNetwork {net.name!r}'s "
                f"gateway {want}"
            )
    return docker_gateway(net.spec.cidr, want)


def check_static(request: RequestAddress) -> None:
    """What can be refused before anything is created: an address outside the pool."""
    if request.address is not None and request.address not in request.pool.cidr:
        raise DockerError(
            f"--ip {request.address} is outside OverlayNetwork {request.pool.network!r}'s "
            f"CIDR {request.pool.cidr}"
        )
