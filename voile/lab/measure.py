"""What the benchmarks under bench/ and the fault tests share: a free underlay for their lab,
percentiles, the first ping through a new endpoint, the replies of a ``ping -D`` and the
OverlayNetworks a run allocates from."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Sequence

from voile import kube
from voile.api import constants as c


def exit_on_sigterm() -> None:
    """End the process by ``SystemExit`` on SIGTERM (``kill``, ``timeout``), so that every
    ``finally`` runs and a bench stopped from outside removes the hosts, namespaces and
    processes it made, as one that ends does. A second SIGTERM during that cleanup is ignored."""

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


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


def ping_replies(output: str) -> dict[int, float]:
    """icmp_seq -> the time its reply arrived (ping's own ``-D`` timestamp) in ping's output."""
    found = re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)", output, re.M)
    return {int(seq): float(stamp) for stamp, seq in found}


def first_ping(netns: str, address: str, limit: float) -> float | None:
    """Seconds until the first echo reply from ``address`` (a ping every 50 ms), or None after
    ``limit`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "0.2", "-q", address],
            capture_output=True,
            check=False,
            timeout=5,
        )
        if proc.returncode == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


async def create_networks(client: kube.KubeClient, prefix: str, cidrs: Sequence[str]) -> list[str]:
    """One OverlayNetwork ``<prefix><i>`` per CIDR: their names."""
    names = []
    for i, cidr in enumerate(cidrs):
        name = f"{prefix}{i}"
        await client.create(
            kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": name},
                "spec": {"cidr": cidr},
            },
        )
        names.append(name)
    return names
