"""VNI and MTU planning for OverlayNetworks.

Automatic VNIs start at ``AUTO_VNI_BASE`` (4096): the range 1..4095 is left to users who pick VNIs
by hand (often mirroring VLAN ids), so an automatic choice never steals a number someone is about
to request. Uniqueness is again the API server's: a VNIClaim is named ``vni-<n>``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from voile import clock
from voile.api import constants as c
from voile.api.model import overlay_mtu

AUTO_VNI_BASE = 4096


def vni_claim_name(vni: int) -> str:
    return f"vni-{vni}"


# One MTU rule for the whole project (voile.api.model.overlay_mtu).
mtu_for = overlay_mtu


def lowest_free_vni(taken: Collection[int], *, base: int = AUTO_VNI_BASE) -> int | None:
    """The lowest VNI >= base that is not taken, or None when the space is exhausted."""
    vni = base
    while vni <= c.MAX_VNI:
        if vni not in taken:
            return vni
        vni += 1
    return None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VNIClaimInfo:
    name: str
    uid: str
    vni: int
    network: str
    network_uid: str
    created: datetime.datetime | None = None


def parse_vni_claim(obj: Mapping[str, Any]) -> VNIClaimInfo | None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    vni = spec.get("vni")
    if isinstance(vni, bool) or not isinstance(vni, int):
        return None
    return VNIClaimInfo(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        vni=vni,
        network=str(spec.get("network", "")),
        network_uid=str(spec.get("networkUID", "")),
        created=clock.parse_rfc3339(meta.get("creationTimestamp")),
    )


def vni_claim_body(vni: int, *, network: str, network_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.VNI_CLAIM,
        "metadata": {
            "name": vni_claim_name(vni),
            "labels": {c.LABEL_NETWORK: network, c.LABEL_MANAGED_BY: c.MANAGED_BY},
        },
        "spec": {"vni": vni, "network": network, "networkUID": network_uid},
    }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VNIPlan:
    """Which VNI claim to keep (if already held), which to try to create, which to release."""

    keep: VNIClaimInfo | None
    want: int | None  # the VNI to claim when nothing suitable is held (None: pick lowest free)
    release: tuple[VNIClaimInfo, ...] = ()


def plan_vni(
    held: Sequence[VNIClaimInfo], *, requested: int | None, status_vni: int | None
) -> VNIPlan:
    """Decide from the claims a network holds (matched by its uid).

    Requested VNI: keep its claim if held, else claim it; release everything else only once it is
    held (the caller releases ``release`` after success). No request: keep the one equal to
    status.vni (what the data path uses), else the lowest held; release the rest.
    """
    if requested is not None:
        keep = next((cl for cl in held if cl.vni == requested), None)
        want = None if keep is not None else requested
    else:
        keep = next((cl for cl in held if cl.vni == status_vni), None)
        if keep is None and held:
            keep = min(held, key=lambda cl: cl.vni)
        want = None
    release = tuple(
        sorted((cl for cl in held if keep is None or cl.name != keep.name), key=lambda x: x.vni)
    )
    return VNIPlan(keep=keep, want=want, release=release)
