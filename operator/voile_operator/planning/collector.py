"""The two-phase claim collector's decision (Antrea's route GC shape: desired vs known, delete
orphans), made safe against partial views.

A claim is an orphan *candidate* in a round when the object that owns it (an Endpoint by uid, an
OverlayNetwork by uid) is absent from a complete list taken *after* the claims were listed (so an
owner that existed when the claim was made is in that list unless it is really gone). A candidate
is collected only when it was already a candidate in the previous complete round, and it is older
than the grace period. A round with any failed page is thrown away, and so are the candidates
remembered from before it: only two consecutive complete rounds count.

Most rounds are *cached*: the claims and their owners come from the operator's watch caches
instead of complete lists, which are taken only at start-up and every ``full_every`` rounds. A
cache can lag, so in a cached round a claim to be collected is *confirmed* first: its owner is
read by name (a GET without resourceVersion: a quorum read from etcd) and the claim goes only if
that read says the owner does not exist, or exists as another incarnation (another uid). A read
that fails confirms nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Iterable


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ClaimRef:
    """Any claim (IP or VNI): its kind, name and uid, the uid of its owner, its creation time."""

    kind: str
    name: str
    uid: str
    owner_uid: str
    created: datetime.datetime | None
    owner_namespace: str = ""  # an Endpoint's namespace; "" for a network (cluster-scoped)
    owner_name: str = ""  # "" when the claim names no owner


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Round:
    candidates: frozenset[str]  # claim uids that are candidates in this round
    collect: tuple[ClaimRef, ...]  # delete these (with a uid precondition)


def collector_round(
    claims: Iterable[ClaimRef],
    owner_uids: Collection[str],
    previous: frozenset[str],
    *,
    now: datetime.datetime,
    grace: datetime.timedelta,
) -> Round:
    """Decide one complete round. ``previous`` is the candidate set of the previous complete
    round (empty after a failed one)."""
    candidates: set[str] = set()
    collect: list[ClaimRef] = []
    for claim in claims:
        if claim.owner_uid and claim.owner_uid in owner_uids:
            continue
        candidates.add(claim.uid)
        old_enough = claim.created is not None and now - claim.created >= grace
        if claim.uid in previous and old_enough:
            collect.append(claim)
    return Round(
        candidates=frozenset(candidates), collect=tuple(sorted(collect, key=lambda r: r.name))
    )


def full_round_due(rounds_done: int, full_every: int) -> bool:
    """Round number ``rounds_done`` (0 = the first after start-up) lists everything."""
    return rounds_done == 0 or full_every <= 1 or rounds_done % full_every == 0


def orphan_confirmed(ref: ClaimRef, owner_uid: str | None) -> bool:
    """Whether a quorum read of the claim's owner by name confirms it is an orphan:
    ``owner_uid`` is the uid that read returned, None when it answered "not found". A claim that
    names no owner cannot be checked this way and is left to the complete rounds."""
    if not ref.owner_name:
        return False
    return owner_uid is None or owner_uid != ref.owner_uid
