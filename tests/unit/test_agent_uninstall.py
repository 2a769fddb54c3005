"""Whether an agent's stop is an uninstall (planning/uninstall.py, pure), and which conflists
its cleanup may remove (host/files.py's is_voile_conflist, pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voile_agent.host.files import is_voile_conflist
from voile_agent.planning.uninstall import OwnerState, OwnerView, advance, uninstalling


def ds(uid: str = "u1", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "voile-agent", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T16:00:00Z"
    return {"metadata": meta}


def run(*steps: tuple[dict[str, Any] | None, bool]) -> OwnerView:
    view = OwnerView()
    for obj, deleted in steps:
        view = advance(view, obj, deleted=deleted)
    return view


@pytest.mark.parametrize(
    ("steps", "state", "final"),
    [
        ((), OwnerState.UNKNOWN, False),  # nothing observed: never an uninstall
        (((ds(), False),), OwnerState.PRESENT, False),  # a restart, an upgrade, a drain
        (((ds(), False), (ds(), True)), OwnerState.GONE, True),  # the watch's DELETED
        (((ds(), False), (None, False)), OwnerState.GONE, True),  # a read that says 404
        (((ds(), False), (ds(deleting=True), False)), OwnerState.DELETING, True),  # foreground
        (((None, False),), OwnerState.GONE, False),  # never seen: a wrong name, not uninstall
        (((ds(), False), (None, False), (ds("u2"), False)), OwnerState.PRESENT, False),  # again
        # Another DaemonSet of the same name deleted: says nothing about ours.
        (((ds(), False), (ds("u2"), True)), OwnerState.PRESENT, False),
    ],
)
def test_only_an_owner_seen_and_then_deleted_means_uninstall(
    steps: tuple[tuple[dict[str, Any] | None, bool], ...], state: OwnerState, final: bool
) -> None:
    view = run(*steps)
    assert view.state == state
    assert uninstalling(view) is final


@pytest.mark.parametrize(
    ("doc", "ours"),
    [
        ({"cniVersion": "1.0.0", "name": "voile", "plugins": [{"type": "voile"}]}, True),
        ({"cniVersion": "1.0.0", "name": "voile", "type": "voile"}, True),  # a single conf
        ({"plugins": [{"type": "voile"}, {"type": "portmap"}]}, False),  # someone chained ours
        ({"plugins": [{"type": "bridge"}]}, False),
        ({"plugins": []}, False),
        ({"plugins": "voile"}, False),
        (["voile"], False),
    ],
)
def test_cleanup_removes_only_a_conflist_of_voile_plugins(doc: Any, ours: bool) -> None:
    assert is_voile_conflist(json.dumps(doc)) is ours


def test_a_conflist_that_is_not_json_is_not_ours() -> None:
    assert not is_voile_conflist("{not json")
