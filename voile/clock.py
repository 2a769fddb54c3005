"""Time as the Kubernetes API writes it: RFC 3339 in UTC. The one clock helper of Voile."""

from __future__ import annotations

import datetime


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(when: datetime.datetime, *, micro: bool = False) -> str:
    """``2026-01-02T03:04:05Z`` (metav1.Time), or with microseconds (metav1.MicroTime)."""
    when = when.astimezone(datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339(*, micro: bool = False) -> str:
    return rfc3339(now(), micro=micro)


def parse_rfc3339(value: object) -> datetime.datetime | None:
    """A timestamp as the API server writes it, or None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
