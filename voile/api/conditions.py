"""metav1.Condition, the one Condition type of Voile (operator and agent alike).

Conditions are a list-map keyed by ``type`` in every status: each writer (the operator, the agent,
later the health aggregation) owns its own entries and applies them by server-side apply.
``lastTransitionTime`` moves only when a condition's status changes, as Kubernetes requires, so
rendering takes the previous conditions as an input. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voile.api import constants as c


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    type: str
    status: c.ConditionStatus
    reason: str
    message: str
    observed_generation: int = 0
    last_transition_time: str | None = None  # only on conditions parsed from the API

    @property
    def is_true(self) -> bool:
        return self.status == c.ConditionStatus.TRUE

    def same(self, other: Condition | None) -> bool:
        """Whether ``other`` says the same thing (the transition time aside)."""
        return (
            other is not None
            and other.type == self.type
            and other.status == self.status
            and other.reason == self.reason
            and other.message == self.message
            and other.observed_generation == self.observed_generation
        )

    def to_api(self, *, now: str, previous: Condition | None = None) -> dict[str, Any]:
        """The metav1.Condition dict; the transition time is kept from ``previous`` while the
        status is unchanged, else ``now`` (RFC 3339)."""
        since = now
        if (
            previous is not None
            and previous.status == self.status
            and previous.last_transition_time
        ):
            since = previous.last_transition_time
        return {
            "type": self.type,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": since,
        }


def make(
    kind: c.ConditionType | str,
    ok: bool,
    reason: c.Reason | str,
    message: str,
    generation: int = 0,
) -> Condition:
    return Condition(
        type=str(getattr(kind, "value", kind)),
        status=c.ConditionStatus.TRUE if ok else c.ConditionStatus.FALSE,
        reason=str(getattr(reason, "value", reason)),
        message=message,
        observed_generation=generation,
    )


def true(kind: c.ConditionType, reason: c.Reason | str, message: str, gen: int) -> Condition:
    return make(kind, True, reason, message, gen)


def false(kind: c.ConditionType, reason: c.Reason | str, message: str, gen: int) -> Condition:
    return make(kind, False, reason, message, gen)


def parse_condition(raw: object) -> Condition | None:
    """One condition from the API, or None for an entry that is not one."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        return None
    try:
        status = c.ConditionStatus(raw.get("status"))
    except ValueError:
        return None
    generation = raw.get("observedGeneration")
    since = raw.get("lastTransitionTime")
    return Condition(
        type=raw["type"],
        status=status,
        reason=str(raw.get("reason") or ""),
        message=str(raw.get("message") or ""),
        observed_generation=generation if isinstance(generation, int) else 0,
        last_transition_time=since if isinstance(since, str) and since else None,
    )


def parse_conditions(raw: object) -> tuple[Condition, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return ()
    return tuple(cond for cond in map(parse_condition, raw) if cond is not None)


def find(conditions: Iterable[Condition], kind: c.ConditionType | str) -> Condition | None:
    name = str(getattr(kind, "value", kind))
    for cond in conditions:
        if cond.type == name:
            return cond
    return None


def render(
    wanted: Iterable[Condition], existing: Sequence[Mapping[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    """Condition dicts for ``wanted``, each keeping its lastTransitionTime from ``existing``
    while its status is unchanged."""
    previous = parse_conditions(existing or ())
    return [cond.to_api(now=now, previous=find(previous, cond.type)) for cond in wanted]
