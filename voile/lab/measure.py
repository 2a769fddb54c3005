"""What the benchmarks under bench/ share: a free underlay for their lab, and percentiles."""

from __future__ import annotations

import subprocess


def free_octet(first: int = 15) -> int:
    """An underlay 198.18.<octet>.0/24 that no other lab on this machine uses (each lab's API
    server address is in the root namespace, so a used octet shows there)."""
    used = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    for octet in range(first, 200):
        if f" 198.18.{octet}." not in used:
            return octet
    raise RuntimeError("no free underlay octet in 198.18.15-199.0/24")


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0-100) of ``values``, which must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
