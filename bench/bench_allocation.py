"""Allocation latency and throughput of voile-operator, against a fresh real control plane.

Starts etcd + kube-apiserver in a temporary directory, installs the CRDs, starts the operator as
its own process, creates N Endpoints at once across 3 networks, and measures for each Endpoint
the time from its create call returning to its status showing an address (watched, not polled).
In the same run, as a baseline, it measures the raw API cost of what allocation minimally needs
without the operator: create an Endpoint, create its IPClaim, server-side apply its status, with
the same concurrency. Prints p50/p99 latency, throughput, and the ratios operator/baseline.

Bounded: N <= 1000 (default 300), every wait has a timeout (default 120 s).
Usage: .venv/bin/python bench/bench_allocation.py [--count 300] [--timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voile import kube
from voile.api import constants as c
from voile.controlplane import ControlPlane
from voile.crds import install_crds
from voile.lab.measure import create_networks

REPO = Path(__file__).resolve().parents[1]
OPERATOR = REPO / ".venv" / "bin" / "voile-operator"
CONCURRENCY = 50


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ensure_ns(client: kube.KubeClient, name: str) -> None:
    with contextlib.suppress(kube.Conflict):
        await client.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )


def endpoint_body(ns: str, name: str, net: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ENDPOINT,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"network": net, "node": "bench", "target": {"host": {}}},
    }


async def networks(client: kube.KubeClient, prefix: str) -> list[str]:
    """Three /22 networks (1022 addresses each: room for the largest allowed N)."""
    return await create_networks(client, prefix, [f"198.18.{40 + i * 4}.0/22" for i in range(3)])


async def run_operator_case(client: kube.KubeClient, count: int, timeout: float) -> list[float]:
    ns = "bench-op"
    await ensure_ns(client, ns)
    nets = await networks(client, "bench-op-")

    async def ready() -> bool:  # the operator is up and the networks hold their VNI
        for net in nets:
            obj = await client.get(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net))
            if not ((obj or {}).get("status") or {}).get("vni"):
                return False
        return True

    await kube.wait_for(ready, timeout=60, what="networks Ready")
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
    created: dict[str, float] = {}
    done: dict[str, float] = {}
    _, rv = await client.list(url)

    async def watch() -> None:
        nonlocal rv
        while len(done) < count:
            with contextlib.suppress(asyncio.TimeoutError, kube.Gone):
                async for kind, obj in client.watch(url, resource_version=rv, timeout_seconds=60):
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    name = obj.get("metadata", {}).get("name", "")
                    if kind != "BOOKMARK" and (obj.get("status") or {}).get("ip"):
                        done.setdefault(name, time.monotonic())
                    if len(done) >= count:
                        return

    watcher = asyncio.create_task(watch())
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        name = f"ep-{i:04d}"
        async with sem:
            await client.create(url, endpoint_body(ns, name, nets[i % 3]))
            created[name] = time.monotonic()

    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.wait_for(watcher, timeout=timeout)
    return [done[n] - created[n] for n in created]


async def run_baseline(client: kube.KubeClient, count: int) -> list[float]:
    """Without the operator: create Endpoint, create its IPClaim, apply its status."""
    ns = "bench-raw"
    await ensure_ns(client, ns)
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
    claims = kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)
    sem = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []

    async def one(i: int) -> None:
        name = f"raw-{i:04d}"
        ip = f"198.18.{60 + i // 250}.{1 + i % 250}"
        async with sem:
            obj = await client.create(url, endpoint_body(ns, name, "raw"))
            t0 = time.monotonic()
            await client.create(
                claims,
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.IP_CLAIM,
                    "metadata": {"name": f"raw-{ip.replace('.', '-')}"},
                    "spec": {
                        "network": "raw",
                        "ip": ip,
                        "endpoint": {"namespace": ns, "name": name, "uid": obj["metadata"]["uid"]},
                    },
                },
            )
            await client.patch(
                kube.path(
                    c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name=name, subresource="status"
                ),
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.ENDPOINT,
                    "metadata": {"name": name, "namespace": ns},
                    "status": {"ip": ip},
                },
                kind="apply",
            )
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


async def cleanup_baseline(client: kube.KubeClient) -> None:
    """The baseline's objects go before the operator starts (no finalizers yet)."""
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace="bench-raw")
    items, _ = await client.list(url)
    claims, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS))
    sem = asyncio.Semaphore(CONCURRENCY)

    async def delete(path: str) -> None:
        async with sem:
            await client.delete(path)

    await asyncio.gather(
        *(delete(f"{url}/{i['metadata']['name']}") for i in items),
        *(
            delete(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS, name=i["metadata"]["name"]))
            for i in claims
        ),
    )


def report(label: str, lat: list[float], wall: float) -> tuple[float, float, float]:
    p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
    rate = len(lat) / wall
    print(
        f"{label:<10} n={len(lat)} p50={p50 * 1000:8.1f} ms  p99={p99 * 1000:8.1f} ms  "
        f"wall={wall:6.2f} s  throughput={rate:7.1f}/s"
    )
    return p50, p99, rate


async def baseline_phase(kubeconfig: Path, count: int) -> tuple[list[float], float]:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        await install_crds(client)
        await ensure_ns(client, c.DEFAULT_NAMESPACE)
        t0 = time.monotonic()
        base = await run_baseline(client, count)
        wall = time.monotonic() - t0
        await cleanup_baseline(client)
    return base, wall


async def operator_phase(kubeconfig: Path, count: int, timeout: float) -> tuple[list[float], float]:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        t0 = time.monotonic()
        lat = await run_operator_case(client, count, timeout)
        return lat, time.monotonic() - t0


def run_all(kubeconfig: Path, count: int, timeout: float, log: Path) -> int:
    base, base_wall = asyncio.run(baseline_phase(kubeconfig, count))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(OPERATOR),
                "--kubeconfig",
                str(kubeconfig),
                "--metrics-port",
                "0",
                "--id",
                "bench",
                "--gc-interval",
                "3600",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        lat, wall = asyncio.run(operator_phase(kubeconfig, count, timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"# {count} endpoints, 3 networks, client concurrency {CONCURRENCY}")
    b50, b99, brate = report("baseline", base, base_wall)
    o50, o99, orate = report("operator", lat, wall)
    print(
        f"ratios operator/baseline: p50 x{o50 / b50:.1f}  p99 x{o99 / b99:.1f}  "
        f"throughput x{orate / brate:.2f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--operator-log", type=Path, default=None, help="keep the operator log")
    args = parser.parse_args()
    count = max(3, min(args.count, 1000))
    with tempfile.TemporaryDirectory(prefix="voile-bench-") as tmp:
        plane = ControlPlane(Path(tmp) / "cp")
        endpoints = plane.start()
        try:
            log = args.operator_log or Path(tmp) / "operator.log"
            return run_all(endpoints.kubeconfig, count, args.timeout, log)
        finally:
            plane.stop()


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
