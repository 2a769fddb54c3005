"""Is this agent's stop an uninstall? Decided from what was observed of the agent's owner (its
DaemonSet), never from a failed read. Pure.

A DaemonSet's pods are stopped for many reasons (a rolling upgrade, a node drain, an eviction):
the datapath must then stay, since it forwards while the agent is away. Only when the DaemonSet
itself is being deleted or gone (``helm uninstall``, ``kubectl delete -f``) is the stop final
(kubernetes#44911 asks for exactly this signal; Kubernetes gives none). The agent must have seen
its owner present first: a misspelled name, or an agent run by hand, never means "uninstalled".
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any


class OwnerState(str, enum.Enum):
    UNKNOWN = "unknown"  # not observed yet (or only failed reads)
    PRESENT = "present"
    DELETING = "deleting"  # metadata.deletionTimestamp set (foreground deletion)
    GONE = "gone"  # a DELETED event, or a read that answered 404


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OwnerView:
    state: OwnerState = OwnerState.UNKNOWN
    seen: bool = False  # observed PRESENT at least once
    uid: str = ""  # of the DaemonSet seen present: a new one of the same name is not ours


def state_of(obj: Mapping[str, Any] | None) -> OwnerState:
    """The state an observed object (None: observed absent) says."""
    if obj is None:
        return OwnerState.GONE
    return (
        OwnerState.DELETING
        if obj.get("metadata", {}).get("deletionTimestamp")
        else (OwnerState.PRESENT)
    )


def advance(view: OwnerView, obj: Mapping[str, Any] | None, *, deleted: bool = False) -> OwnerView:
    """The view after one successful observation: ``obj`` as read or watched (None: absent),
    ``deleted`` for a watch's DELETED event. A DaemonSet of the same name but another uid
    (deleted and made again) counts as the old one gone and a new one present."""
    state = OwnerState.GONE if deleted else state_of(obj)
    uid = str((obj or {}).get("metadata", {}).get("uid", "")) if obj is not None else ""
    if state == OwnerState.PRESENT:
        return OwnerView(state=state, seen=True, uid=uid)
    if uid and view.uid and uid != view.uid:
        return view  # a stranger's deletion says nothing about ours
    return dataclasses.replace(view, state=state)


def uninstalling(view: OwnerView) -> bool:
    """Clean the host on stop: the owner was seen, and then seen being deleted or gone."""
    return view.seen and view.state in (OwnerState.DELETING, OwnerState.GONE)
