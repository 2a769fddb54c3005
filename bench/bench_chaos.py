"""Operator chaos: allocations while operator replicas are SIGKILLed every few seconds.

Starts a fresh real control plane, two voile-operator replicas (leader election: one active),
each under voile.lab.supervise (restarted 0.1 s after it dies, as a Deployment's pod is), then
creates N Endpoints across 3 networks while a killer SIGKILLs one replica (chosen in turn) every
--kill-every seconds. Then it checks what must hold: every Endpoint allocated, no address or MAC
twice in a network, exactly one IPClaim per Endpoint; deletes every Endpoint and checks that no
claim is left (0 leaked). Baseline in the same run: N/4 allocations with no kill; prints both
rates and their ratio.

Bounded: N <= 3000 (default 2000), every wait has a timeout (default 900 s).
Usage: .venv/bin/python bench/bench_chaos.py [--count 2000] [--kill-every 5] [--timeout 900]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
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
from voile.lab.measure import create_networks, percentile

REPO = Path(__file__).resolve().parents[1]
OPERATOR = REPO / ".venv" / "bin" / "voile-operator"
CONCURRENCY = 20


@dataclasses.dataclass
class Result:
    count: int
    allocated: int
    seconds: float
    kills: int
    duplicates: int
    claims_after_allocation: int
    leaked_claims: int
    leader_kills: int = 0
    # seconds from each SIGKILL of the leader to the next allocation
    takeover: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.allocated / self.seconds


class Replicas:
    """Operator replicas, each under a supervisor that starts it again when it dies."""

    def __init__(self, kubeconfig: Path, directory: Path, n: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pidfiles: list[Path] = []
        for i in range(n):
            log = (directory / f"operator-{i}.log").open("ab")
            argv = [
                sys.executable, "-m", "voile.lab.supervise",
                "--pidfile", str(directory / f"supervise-{i}.pid"),
                "--", str(OPERATOR), "--kubeconfig", str(kubeconfig),
                "--namespace", c.DEFAULT_NAMESPACE, "--id", f"chaos-{i}",
                "--metrics-port", "0",
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def operator_pid(self, i: int) -> int | None:
        """The operator process under supervisor ``i`` (its only child)."""
        try:
            children = Path(f"/proc/{self.procs[i].pid}/task/{self.procs[i].pid}/children")
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            return None
        return pids[0] if pids else None

    def kill(self, i: int) -> bool:
        pid = self.operator_pid(i)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            return True
        return False

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def ensure_ns(client: kube.KubeClient, name: str) -> None:
    with contextlib.suppress(kube.Conflict):
        await client.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )


async def make_networks(client: kube.KubeClient, prefix: str, third: int) -> list[str]:
    return await create_networks(client, prefix, [f"198.{18 + i}.{third}.0/22" for i in range(3)])


def endpoint_body(ns: str, name: str, net: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ENDPOINT,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"network": net, "node": "chaos", "target": {"host": {}}},
    }


async def _retry(call: Any, what: str, attempts: int = 30) -> Any:
    for attempt in range(attempts):
        try:
            return await call()
        except kube.Conflict:
            raise
        except Exception as exc:  # the API server under load: try again
            if attempt == attempts - 1:
                raise RuntimeError(f"{what}: {exc}") from exc
            await asyncio.sleep(1)
    return None


async def run_case(
    client: kube.KubeClient,
    replicas: Replicas | None,
    *,
    ns: str,
    third: int,
    count: int,
    kill_every: float,
    timeout: float,
) -> Result:
    await ensure_ns(client, ns)
    nets = await make_networks(client, f"{ns}-", third)
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
    claims_url = kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)
    lease_url = kube.path(
        "coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE, name=c.OPERATOR_LEASE
    )
    kills = 0
    leader_kills: list[float] = []  # when a replica that held the Lease was killed
    allocations: list[float] = []  # when the watch first showed an Endpoint's address

    async def killer() -> None:
        nonlocal kills
        turn = 0
        while replicas is not None:
            await asyncio.sleep(kill_every)
            i = turn % len(replicas.procs)
            try:
                lease = await client.get(lease_url) or {}
                leader = ((lease.get("spec") or {}).get("holderIdentity")) == f"chaos-{i}"
            except (kube.ApiError, OSError, TimeoutError):
                leader = False
            if replicas.kill(i):
                kills += 1
                if leader:
                    leader_kills.append(time.monotonic())
            turn += 1

    async def watch_allocations() -> None:
        seen: set[str] = set()
        _, version = await client.list(url)
        while True:
            try:
                async for kind, obj in client.watch(url, resource_version=version):
                    version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                    name = str((obj.get("metadata") or {}).get("name", ""))
                    ip = (obj.get("status") or {}).get("ip")
                    if kind != "BOOKMARK" and ip and name not in seen:
                        seen.add(name)
                        allocations.append(time.monotonic())
            except kube.Gone:
                _, version = await client.list(url)
            except Exception:  # the API server under load, a broken stream: watch again
                await asyncio.sleep(0.5)

    async def vnis() -> bool:  # an operator leads and the networks are ready: start the clock
        for net in nets:
            obj = await client.get(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net))
            if not ((obj or {}).get("status") or {}).get("vni"):
                return False
        return True

    await kube.wait_for(vnis, timeout=timeout, what="networks with a VNI")
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        name = f"ep-{i:05d}"
        async with sem:
            with contextlib.suppress(kube.Conflict):  # created by an earlier attempt
                await _retry(lambda: client.create(url, endpoint_body(ns, name, nets[i % 3])), name)

    watching = asyncio.create_task(watch_allocations())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    killing = asyncio.create_task(killer())
    try:
        await asyncio.gather(*(one(i) for i in range(count)))

        async def allocated() -> list[dict[str, Any]] | None:
            items, _ = await client.list(url)
            done = [o for o in items if (o.get("status") or {}).get("ip")]
            return items if len(done) == count else None

        try:
            items = await kube.wait_for(allocated, timeout=timeout, interval=2, what="allocation")
        except TimeoutError:  # report how far it got; the checks below still hold for those
            items, _ = await client.list(url)
        seconds = time.monotonic() - started
    finally:
        killing.cancel()
        watching.cancel()
    takeover = []
    for killed in leader_kills:
        after = [t for t in allocations if t > killed]
        if after:
            takeover.append(min(after) - killed)
    done = [o for o in items if (o.get("status") or {}).get("ip")]
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    for obj in done:
        st, net = obj["status"], obj["spec"]["network"]
        for key in ((net, "ip:" + st["ip"]), (net, "mac:" + st["mac"])):
            duplicates += key in seen
            seen.add(key)
    claims, _ = await client.list(claims_url)
    ours = [cl for cl in claims if cl["metadata"]["name"].startswith(f"{ns}-")]

    async def delete(obj: dict[str, Any]) -> None:
        async with sem:
            await _retry(lambda: client.delete(f"{url}/{obj['metadata']['name']}"), "delete")

    await asyncio.gather(*(delete(o) for o in items))

    async def gone() -> bool:
        left, _ = await client.list(url)
        return not left

    try:
        await kube.wait_for(gone, timeout=timeout, interval=2, what="deletion")
    except TimeoutError:
        print("# not every Endpoint deleted in time: claims below may still be released")

    async def claims_left() -> int:
        found, _ = await client.list(claims_url)
        return len([cl for cl in found if cl["metadata"]["name"].startswith(f"{ns}-")])

    # The operator deletes a claim after its Endpoint's finalizer: give it a moment.
    deadline = time.monotonic() + 60
    leaked = await claims_left()
    while leaked and time.monotonic() < deadline:
        await asyncio.sleep(2)
        leaked = await claims_left()
    return Result(
        count, len(done), seconds, kills, duplicates, len(ours), leaked, len(leader_kills), takeover
    )


async def run_all(kubeconfig: Path, directory: Path, args: argparse.Namespace) -> int:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        await install_crds(client)
        await ensure_ns(client, c.DEFAULT_NAMESPACE)
        replicas = Replicas(kubeconfig, directory, 2)
        try:
            base = await run_case(
                client,
                None,
                ns="base",
                third=200,
                count=max(3, args.count // 4),
                kill_every=args.kill_every,
                timeout=args.timeout,
            )
            chaos = await run_case(
                client,
                replicas,
                ns="chaos",
                third=204,
                count=args.count,
                kill_every=args.kill_every,
                timeout=args.timeout,
            )
        finally:
            replicas.stop()
    for label, r in (("baseline (no kill)", base), ("chaos", chaos)):
        print(
            f"{label}: {r.allocated} of {r.count} allocated in {r.seconds:.1f}s ({r.rate:.1f}/s), "
            f"{r.kills} operator SIGKILLs, {r.duplicates} duplicates, "
            f"{r.claims_after_allocation} claims for {r.count} endpoints, "
            f"{r.leaked_claims} claims left after deleting them all"
        )
    if chaos.takeover:
        print(
            f"leader SIGKILL -> next allocation ({chaos.leader_kills} leader kills, "
            f"{len(chaos.takeover)} followed by one): "
            f"p50 {percentile(chaos.takeover, 50):.2f}s p99 {percentile(chaos.takeover, 99):.2f}s "
            f"max {max(chaos.takeover):.2f}s"
        )
    print(f"ratio chaos/baseline allocation rate: x{chaos.rate / base.rate:.2f}")
    ok = all(
        r.allocated == r.count
        and r.duplicates == 0
        and r.leaked_claims == 0
        and r.claims_after_allocation == r.count
        for r in (base, chaos)
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--logs", type=Path, help="copy the operators' logs into this directory")
    args = parser.parse_args()
    args.count = max(3, min(args.count, 3000))
    # SIGTERM (a timeout) still stops the replicas and the control plane (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="voile-chaos-") as tmp:
        plane = ControlPlane(Path(tmp) / "cp")
        endpoints = plane.start()
        try:
            return asyncio.run(run_all(endpoints.kubeconfig, Path(tmp), args))
        finally:
            plane.stop()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).glob("operator-*.log"):
                    shutil.copy(log, args.logs / log.name)


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
