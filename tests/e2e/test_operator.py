"""The operator against the real control plane (etcd + kube-apiserver from the session fixture).

Real: the API server, CRDs, CEL, server-side apply, name uniqueness, Leases, and the operator
itself, run as its own process (``.venv/bin/voile-operator``) as in production, killed with
SIGKILL where a test says so. Not real: node agents. No test adds the agent's finalizer except
the dead-agent test, which plays an agent that died; without kube-controller-manager, deletion
works only through finalizers, which is exactly what is exercised here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from voile import kube
from voile.api import constants as c
from voile.controlplane import Endpoints
from voile.crds import install_crds
from voile_operator.appliers.collector import ClaimCache, ClaimCollector
from voile_operator.planning import ipam

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / ".venv" / "bin" / "voile-operator"
NETWORKS = kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS)
ALL_ENDPOINTS = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS)
IP_CLAIMS = kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)
VNI_CLAIMS = kube.path(c.GROUP, c.VERSION, c.VNI_CLAIMS)
# SIGKILL period: each life must get past start-up (imports, login, listing) on 2 busy cores.
CHAOS_PERIOD = 5.0
FAST = ["--gc-interval", "2", "--gc-grace", "5", "--lease-duration", "15"]


# -- the operator as a process -------------------------------------------------------------


class OperatorProcess:
    """One ``voile-operator`` process; its log goes to a file shown when a test fails."""

    def __init__(self, kubeconfig: Path, log_dir: Path, identity: str, extra: list[str]) -> None:
        self.kubeconfig, self.identity, self.extra = kubeconfig, identity, extra
        self.log = log_dir / f"operator-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"=== start #{self.starts} ===\n".encode())
        self.proc = subprocess.Popen(
            [
                str(OPERATOR),
                "--kubeconfig",
                str(self.kubeconfig),
                "--id",
                self.identity,
                "--metrics-port",
                "0",
                *self.extra,
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (the operator releases its Lease), SIGKILL after 20 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def operators(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(identity: str = "e2e", *extra: str) -> OperatorProcess:
        op = OperatorProcess(kubeconfig, tmp_path, identity, [*FAST, *extra])
        op.start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        for op in started:  # captured: pytest shows it only when the test fails
            sys.stderr.write(f"--- {op.log} (tail)\n")
            sys.stderr.write("\n".join(op.log.read_text().splitlines()[-40:]) + "\n")


# -- objects a test creates, drained on teardown -------------------------------------------


class World:
    """Creates namespaces, networks and endpoints for one test and removes them all after."""

    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.networks: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    async def namespace(self, base: str = "ns") -> str:
        name = self.name(base)
        await self.client.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.namespaces.append(name)
        return name

    async def network(self, base: str, cidr: str, **spec: Any) -> str:
        name = self.name(base)
        await self.client.create(
            NETWORKS,
            {
                "apiVersion": c.API_VERSION,
                "kind": c.OVERLAY_NETWORK,
                "metadata": {"name": name},
                "spec": {"cidr": cidr, **spec},
            },
        )
        self.networks.append(name)
        return name

    async def endpoint(
        self,
        namespace: str,
        name: str,
        network: str,
        node: str = "nowhere",
        finalizers: list[str] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"network": network, "node": node, "target": {"host": {}}, **spec},
        }
        if finalizers:
            body["metadata"]["finalizers"] = finalizers
        return await self.client.create(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace), body
        )

    async def endpoints(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for ns in self.namespaces:
            found, _ = await self.client.list(
                kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
            )
            items.extend(found)
        return items

    async def get_endpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.client.get(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=namespace, name=name)
        )

    async def get_network(self, name: str) -> dict[str, Any] | None:
        return await self.client.get(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=name))

    async def claims(self) -> list[dict[str, Any]]:
        items, _ = await self.client.list(IP_CLAIMS)
        return [i for i in items if i["spec"]["network"] in self.networks]

    async def vni_claims(self) -> list[dict[str, Any]]:
        items, _ = await self.client.list(VNI_CLAIMS)
        return [i for i in items if i["spec"]["network"] in self.networks]

    async def delete_endpoints(self) -> None:
        sem = asyncio.Semaphore(32)

        async def one(ep: dict[str, Any]) -> None:
            async with sem:
                meta = ep["metadata"]
                await self.client.delete(
                    kube.path(
                        c.GROUP,
                        c.VERSION,
                        c.ENDPOINTS,
                        namespace=meta["namespace"],
                        name=meta["name"],
                    )
                )

        await asyncio.gather(*(one(ep) for ep in await self.endpoints()))

    async def drain(self, timeout: float = 60.0) -> None:
        """Delete everything through the running operator; strip finalizers of what is left
        after ``timeout`` so that the session's control plane stays clean."""
        await self.delete_endpoints()
        for net in self.networks:
            await self.client.delete(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net))

        async def gone() -> bool:
            return not await self.endpoints() and not [
                n for n in self.networks if await self.get_network(n)
            ]

        try:
            await kube.wait_for(gone, timeout=timeout, interval=0.5, what="objects drained")
        finally:
            for ep in await self.endpoints():
                meta = ep["metadata"]
                with contextlib.suppress(kube.ApiError):
                    await self.client.patch(
                        kube.path(
                            c.GROUP,
                            c.VERSION,
                            c.ENDPOINTS,
                            namespace=meta["namespace"],
                            name=meta["name"],
                        ),
                        {"metadata": {"finalizers": None}},
                    )
            for net in self.networks:
                with contextlib.suppress(kube.ApiError):
                    await self.client.patch(
                        kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net),
                        {"metadata": {"finalizers": None}},
                    )
            for claim in [*await self.claims(), *await self.vni_claims()]:
                plural = c.IP_CLAIMS if claim["kind"] == c.IP_CLAIM else c.VNI_CLAIMS
                await self.client.delete(
                    kube.path(c.GROUP, c.VERSION, plural, name=claim["metadata"]["name"])
                )
            for ns in self.namespaces:  # stays Terminating without kube-controller-manager
                await self.client.delete(f"/api/v1/namespaces/{ns}")


@pytest.fixture
async def client(control_plane: Endpoints) -> AsyncIterator[kube.KubeClient]:
    async with kube.KubeClient.from_config(str(control_plane.kubeconfig)) as cl:
        await install_crds(cl)
        with contextlib.suppress(kube.Conflict):
            await cl.create(
                "/api/v1/namespaces",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": c.DEFAULT_NAMESPACE},
                },
            )
        yield cl


@pytest.fixture
async def world(
    client: kube.KubeClient, operators: Callable[..., OperatorProcess]
) -> AsyncIterator[World]:
    """Requested after ``operators`` so it is drained while the operator still runs."""
    w = World(client)
    try:
        yield w
    finally:
        await w.drain()


# -- helpers -------------------------------------------------------------------------------


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


async def wait_condition(
    world: World, namespace: str, name: str, kind: str, reason: str, timeout: float = 20
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        ep = await world.get_endpoint(namespace, name)
        return ep if condition(ep, kind).get("reason") == reason else None

    return await kube.wait_for(check, timeout=timeout, what=f"{name} {kind} reason {reason}")


async def create_many(world: World, specs: list[tuple[str, str, str]]) -> None:
    sem = asyncio.Semaphore(50)

    async def one(ns: str, name: str, net: str) -> None:
        async with sem:
            await world.endpoint(ns, name, net)

    await asyncio.gather(*(one(*s) for s in specs))


async def allocated(world: World) -> list[dict[str, Any]]:
    return [ep for ep in await world.endpoints() if (ep.get("status") or {}).get("ip")]


def assert_no_duplicates(endpoints: list[dict[str, Any]]) -> None:
    seen = collections.Counter(
        (ep["spec"]["network"], ep["status"]["ip"])
        for ep in endpoints
        if (ep.get("status") or {}).get("ip")
    )
    dups = {k: n for k, n in seen.items() if n > 1}
    assert not dups, f"duplicate addresses: {dups}"


async def assert_claims_match(world: World, endpoints: list[dict[str, Any]]) -> None:
    """Every reported address has exactly its claim, and no claim is left over."""
    claims = await world.claims()
    by_uid = collections.defaultdict(list)
    for cl in claims:
        by_uid[cl["spec"]["endpoint"]["uid"]].append(cl["spec"]["ip"])
    for ep in endpoints:
        uid, ip = ep["metadata"]["uid"], ep["status"]["ip"]
        assert by_uid.get(uid) == [ip], f"{ep['metadata']['name']}: claims {by_uid.get(uid)}"
    assert len(claims) == len(endpoints), "leaked claims"


async def settle_claims(world: World, expected: int, timeout: float = 60) -> None:
    async def ok() -> bool:
        return len(await world.claims()) == expected

    await kube.wait_for(ok, timeout=timeout, interval=1, what=f"{expected} claims")


async def assert_full_capacity(world: World, capacity: dict[str, int], timeout: float = 30) -> None:
    seen: dict[str, Any] = {}

    async def ok() -> bool:
        for net, cap in capacity.items():
            status = ((await world.get_network(net)) or {}).get("status") or {}
            seen[net] = {k: status.get(k) for k in ("free", "allocated", "endpoints")}
            if status.get("free") != cap or status.get("allocated") != 0:
                return False
        seen["claims"] = len(await world.claims())
        return not seen["claims"]

    try:
        await kube.wait_for(ok, timeout=timeout, interval=0.5, what="networks back at capacity")
    except TimeoutError as exc:
        raise AssertionError(f"not back at capacity: {seen}") from exc


async def three_networks(world: World, *, prefix: int = 24) -> list[str]:
    """Three networks (/24: 254 addresses each, or /22: 1,022), once they are Ready (hold their
    VNI), as in a running cluster where networks exist before workloads arrive."""
    cidrs = {24: [f"198.18.{20 + i}.0/24" for i in range(3)]}
    cidrs[22] = [f"198.19.{64 + 4 * i}.0/22" for i in range(3)]
    nets = [await world.network(f"n{i}", cidr) for i, cidr in enumerate(cidrs[prefix])]

    async def ready() -> bool:
        objs = [await world.get_network(n) for n in nets]
        return all(condition(o, "Ready").get("status") == "True" for o in objs)

    await kube.wait_for(ready, timeout=60, interval=0.5, what="networks Ready")
    return nets


def spread(namespace: str, nets: list[str], count: int) -> list[tuple[str, str, str]]:
    return [(namespace, f"ep-{i:03d}", nets[i % len(nets)]) for i in range(count)]


# -- acceptance ----------------------------------------------------------------------------


async def test_300_endpoints_at_once(
    world: World, operators: Callable[..., OperatorProcess]
) -> None:
    operators("e2e-bulk")
    ns = await world.namespace()
    nets = await three_networks(world)
    started = time.monotonic()
    await create_many(world, spread(ns, nets, 300))

    async def all_done() -> list[dict[str, Any]] | None:
        done = await allocated(world)
        return done if len(done) == 300 else None

    done = await kube.wait_for(all_done, timeout=30, interval=0.5, what="300 addresses")
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\n300 endpoints allocated in {elapsed:.1f} s\n")
    assert_no_duplicates(done)
    for ep in done:
        assert ipaddress.IPv4Address(ep["status"]["ip"]) in ipaddress.IPv4Network(
            (await world.get_network(ep["spec"]["network"]) or {})["spec"]["cidr"]
        )
        assert ep["status"]["mac"] == "0a:58:" + ":".join(
            f"{int(o):02x}" for o in ep["status"]["ip"].split(".")
        )
        assert condition(ep, "Allocated")["status"] == "True"
        assert ep["status"]["mtu"] == 1450 and ep["status"]["prefixLength"] == 24
    await assert_claims_match(world, done)
    vnis = [((await world.get_network(n)) or {})["status"]["vni"] for n in nets]
    assert len(set(vnis)) == 3 and min(vnis) >= 4096
    await world.delete_endpoints()
    await assert_full_capacity(world, dict.fromkeys(nets, 254))


async def _chaos(ops: list[OperatorProcess], stop: asyncio.Event, period: float) -> int:
    """SIGKILL an operator every ``period`` seconds and start it again (bounded by ``stop``)."""
    kills = 0
    for i in itertools.count():
        with contextlib.suppress(TimeoutError):  # the first kill early: during the burst
            await asyncio.wait_for(stop.wait(), timeout=period if i else 1.5)
        if stop.is_set() or i > 200:
            return kills
        victim = ops[i % len(ops)]
        victim.kill()
        kills += 1
        await asyncio.sleep(0.2)
        victim.start()
    return kills


@pytest.mark.parametrize(
    ("replicas", "count"),
    [(1, 300), (2, 2000)],
    ids=["restarts-300", "two-replicas-2000"],
)
async def test_no_duplicate_or_leak_under_kills(
    world: World,
    operators: Callable[..., OperatorProcess],
    client: kube.KubeClient,
    replicas: int,
    count: int,
) -> None:
    """The operator chaos row of the fault suite: SIGKILL every 5 s (each replica in turn, started
    again 0.2 s later) while ``count`` Endpoints are allocated and then deleted."""
    ops = [operators(f"e2e-chaos-{r}") for r in range(replicas)]
    ns = await world.namespace()
    prefix = 24 if count <= 3 * 254 else 22
    nets = await three_networks(world, prefix=prefix)
    stop = asyncio.Event()
    started = time.monotonic()
    chaos = asyncio.create_task(_chaos(ops, stop, period=CHAOS_PERIOD))
    try:
        await create_many(world, spread(ns, nets, count))

        async def all_done() -> list[dict[str, Any]] | None:
            done = await allocated(world)
            assert_no_duplicates(done)  # at every observation, not only at the end
            return done if len(done) == count else None

        await kube.wait_for(
            all_done, timeout=420, interval=1, what=f"{count} addresses under kills"
        )
    finally:
        stop.set()
        kills = await chaos
    took = time.monotonic() - started
    sys.stderr.write(f"\n{kills} SIGKILLs while allocating {count} endpoints in {took:.1f} s\n")
    assert kills >= 1
    for op in ops:
        if not op.alive():
            op.start()
    done = await allocated(world)
    assert_no_duplicates(done)
    await settle_claims(world, count)
    await assert_claims_match(world, await allocated(world))
    vnis = [cl["spec"]["vni"] for cl in await world.vni_claims()]
    assert len(vnis) == 3 == len(set(vnis))

    # deletion, again under kills
    stop = asyncio.Event()
    chaos = asyncio.create_task(_chaos(ops, stop, period=CHAOS_PERIOD))
    try:
        await world.delete_endpoints()

        async def none_left() -> bool:
            return not await world.endpoints()

        await kube.wait_for(none_left, timeout=300, interval=1, what="endpoints deleted")
    finally:
        stop.set()
        await chaos
    for op in ops:
        if not op.alive():
            op.start()
    await assert_full_capacity(world, dict.fromkeys(nets, 2 ** (32 - prefix) - 2), timeout=60)


async def test_slash30_waits_and_recovers(
    world: World, operators: Callable[..., OperatorProcess]
) -> None:
    operators("e2e-small")
    ns = await world.namespace()
    net = await world.network("tiny", "198.18.30.0/30")
    for i in range(5):
        await world.endpoint(ns, f"e{i}", net)

    async def two_and_three() -> tuple[list[Any], list[Any]] | None:
        eps = await world.endpoints()
        got = [e for e in eps if (e.get("status") or {}).get("ip")]
        waiting = [e for e in eps if condition(e, "Allocated").get("reason") == "PoolExhausted"]
        return (got, waiting) if len(got) == 2 and len(waiting) == 3 else None

    got, waiting = await kube.wait_for(two_and_three, timeout=20, what="2 allocated, 3 waiting")
    assert sorted(e["status"]["ip"] for e in got) == ["198.18.30.1", "198.18.30.2"]
    for e in waiting:
        assert condition(e, "Allocated")["status"] == "False"
        assert condition(e, "Stalled")["status"] == "True"
        assert "2 addresses" in condition(e, "Allocated")["message"]
    freed = got[0]["status"]["ip"]
    await world.client.delete(
        kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name=got[0]["metadata"]["name"])
    )
    started = time.monotonic()

    async def one_more() -> list[Any] | None:
        eps = await allocated(world)
        names = {e["metadata"]["name"] for e in eps}
        return eps if len(eps) == 2 and got[0]["metadata"]["name"] not in names else None

    eps = await kube.wait_for(one_more, timeout=20, what="a waiting endpoint gets the address")
    sys.stderr.write(
        f"\nwaiting endpoint allocated {time.monotonic() - started:.1f} s after the release\n"
    )
    assert freed in {e["status"]["ip"] for e in eps}
    net_status = (await world.get_network(net) or {}).get("status") or {}
    assert net_status.get("vni", 0) >= 4096


async def test_static_addresses_and_vni_conflict(
    world: World, operators: Callable[..., OperatorProcess]
) -> None:
    operators("e2e-static")
    ns = await world.namespace()
    net = await world.network(
        "static",
        "198.18.31.0/24",
        gateway="198.18.31.1",
        excludeIPs=["198.18.31.100-198.18.31.120"],
        mtu=1400,
    )
    await world.endpoint(ns, "holder", net, ip="198.18.31.50", mac="02:AA:00:00:00:01")
    holder = await wait_condition(world, ns, "holder", "Allocated", "Allocated")
    assert holder["status"]["ip"] == "198.18.31.50"
    assert holder["status"]["mac"] == "02:aa:00:00:00:01"
    assert holder["status"]["gateway"] == "198.18.31.1" and holder["status"]["mtu"] == 1400
    cases = {
        "taken": ("198.18.31.50", "AddressTaken"),
        "excluded": ("198.18.31.110", "AddressExcluded"),
        "outside": ("198.18.99.7", "AddressOutsideCIDR"),
        "gateway": ("198.18.31.1", "AddressReserved"),
        "broadcast": ("198.18.31.255", "AddressReserved"),
    }
    for name, (ip, _) in cases.items():
        await world.endpoint(ns, name, net, ip=ip)
    for name, (ip, reason) in cases.items():
        ep = await wait_condition(world, ns, name, "Allocated", reason)
        assert ip in condition(ep, "Allocated")["message"]
        assert "ip" not in ep["status"]
    taken = await world.get_endpoint(ns, "taken")
    assert f"{ns}/holder" in condition(taken, "Allocated")["message"]

    # the cause goes away: the waiting static endpoint gets its address by itself
    await world.client.delete(
        kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name="holder")
    )
    ep = await wait_condition(world, ns, "taken", "Allocated", "Allocated", timeout=30)
    assert ep["status"]["ip"] == "198.18.31.50"

    # VNI: a requested VNI held by another network is a clear conflict
    vni = (await world.get_network(net) or {})["status"]["vni"]
    clash = await world.network("clash", "198.18.32.0/24", vni=vni)
    fixed = await world.network("fixed", "198.18.33.0/24", vni=777)

    async def conflict() -> dict[str, Any] | None:
        obj = await world.get_network(clash)
        return obj if condition(obj, "VNIAllocated").get("reason") == "VNIConflict" else None

    obj = await kube.wait_for(conflict, timeout=20, what="VNIConflict")
    assert condition(obj, "Ready")["status"] == "False"
    assert str(vni) in condition(obj, "VNIAllocated")["message"]
    assert "vni" not in obj["status"]

    async def fixed_ready() -> dict[str, Any] | None:
        obj = await world.get_network(fixed)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    assert (await kube.wait_for(fixed_ready, timeout=20, what="vni 777"))["status"]["vni"] == 777

    # an endpoint of a network in conflict waits with a clear reason
    await world.endpoint(ns, "in-clash", clash)
    await wait_condition(world, ns, "in-clash", "Allocated", "NetworkNotReady")


async def test_missing_network_then_created(
    world: World, operators: Callable[..., OperatorProcess]
) -> None:
    operators("e2e-missing")
    ns = await world.namespace()
    later = world.name("later")
    await world.endpoint(ns, "early", later)
    ep = await wait_condition(world, ns, "early", "Allocated", "NetworkNotFound")
    assert condition(ep, "Reconciling")["status"] == "True"
    await world.network("later", "198.18.34.0/29")
    ep = await wait_condition(world, ns, "early", "Allocated", "Allocated", timeout=30)
    assert ep["status"]["ip"] == "198.18.34.1"


async def test_restart_keeps_allocations(
    world: World, operators: Callable[..., OperatorProcess]
) -> None:
    op = operators("e2e-restart")
    ns = await world.namespace()
    nets = await three_networks(world)
    await create_many(world, spread(ns, nets, 30))

    async def all_done() -> list[dict[str, Any]] | None:
        done = await allocated(world)
        return done if len(done) == 30 else None

    before = await kube.wait_for(all_done, timeout=30, what="30 addresses")
    ips = {e["metadata"]["uid"]: e["status"]["ip"] for e in before}
    vnis = {n: (await world.get_network(n) or {})["status"]["vni"] for n in nets}
    op.kill()
    op.start()
    await world.endpoint(ns, "after-restart", nets[0])  # proves the new process is working
    await wait_condition(world, ns, "after-restart", "Allocated", "Allocated", timeout=30)
    await asyncio.sleep(3)  # resume handlers have run over the existing objects
    after = {e["metadata"]["uid"]: e["status"]["ip"] for e in await allocated(world)}
    assert {uid: after[uid] for uid in ips} == ips
    assert {n: (await world.get_network(n) or {})["status"]["vni"] for n in nets} == vnis
    await assert_claims_match(world, await allocated(world))


async def test_dead_agent_finalizer_removed(
    world: World, operators: Callable[..., OperatorProcess], client: kube.KubeClient
) -> None:
    operators("e2e-agent", "--agent-dead-after", "6")
    ns = await world.namespace()
    net = await world.network("agent", "198.18.35.0/29")
    node = world.name("ghost")
    lease_url = kube.path("coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE)
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))
    await client.create(
        lease_url,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": f"voile-agent-{node}", "namespace": c.DEFAULT_NAMESPACE},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": stamp},
        },
    )
    try:
        await world.endpoint(ns, "orphan", net, node=node, finalizers=[c.AGENT_FINALIZER])
        await wait_condition(world, ns, "orphan", "Allocated", "Allocated")
        fresh = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        await client.patch(f"{lease_url}/voile-agent-{node}", {"spec": {"renewTime": fresh}})
        await client.delete(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name="orphan"))
        await asyncio.sleep(2)  # the agent's heartbeat is still fresh: deletion waits
        ep = await world.get_endpoint(ns, "orphan")
        assert ep is not None and c.AGENT_FINALIZER in ep["metadata"]["finalizers"]
        assert len(await world.claims()) == 1, "released while the agent may still use it"

        async def gone() -> bool:
            return await world.get_endpoint(ns, "orphan") is None

        await kube.wait_for(gone, timeout=30, what="endpoint of a dead agent deleted")
        assert not await world.claims()
        events, _ = await client.list(f"/api/v1/namespaces/{ns}/events")
        assert any(e.get("reason") == "AgentGone" for e in events), events
    finally:
        await client.delete(
            kube.path(
                "coordination.k8s.io",
                "v1",
                "leases",
                namespace=c.DEFAULT_NAMESPACE,
                name=f"voile-agent-{node}",
            )
        )


async def test_standby_takes_over_and_lost_lease_exits(
    world: World, operators: Callable[..., OperatorProcess], client: kube.KubeClient
) -> None:
    first = operators("e2e-lead-a")
    ns = await world.namespace()
    net = await world.network("lead", "198.18.36.0/28")
    await world.endpoint(ns, "one", net)
    await wait_condition(world, ns, "one", "Allocated", "Allocated")
    second = operators("e2e-lead-b")
    await asyncio.sleep(2)
    lease_url = kube.path(
        "coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE, name=c.OPERATOR_LEASE
    )
    lease = await client.get(lease_url)
    assert lease is not None and lease["spec"]["holderIdentity"] == "e2e-lead-a"
    first.kill()  # no clean release: the standby must wait for expiry (15 s)
    started = time.monotonic()
    await world.endpoint(ns, "two", net)
    await wait_condition(world, ns, "two", "Allocated", "Allocated", timeout=30)
    took = time.monotonic() - started
    lease = await client.get(lease_url)
    assert lease is not None and lease["spec"]["holderIdentity"] == "e2e-lead-b"
    assert took > 3, "the standby must not act before the leader's lease expires"
    # someone else takes the Lease: the leader notices, stops and exits non-zero
    await client.patch(
        lease_url, {"spec": {"holderIdentity": "intruder", "renewTime": lease["spec"]["renewTime"]}}
    )
    assert second.proc is not None
    code = await asyncio.to_thread(second.proc.wait, 30)
    assert code == 3
    await client.patch(lease_url, {"spec": {"holderIdentity": None}})
    operators("e2e-lead-c")  # someone has to drain this test's objects


async def test_network_mtu_change_reaches_endpoints(
    world: World, operators: Callable[..., OperatorProcess], client: kube.KubeClient
) -> None:
    operators("e2e-mtu", "--underlay-mtu", "9000")
    ns = await world.namespace()
    net = await world.network("mtu", "198.18.37.0/29")
    await world.endpoint(ns, "a", net)
    ep = await wait_condition(world, ns, "a", "Allocated", "Allocated")
    assert ep["status"]["mtu"] == 8950  # underlay 9000 minus the VXLAN overhead
    await client.patch(
        kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net), {"spec": {"mtu": 1300}}
    )

    async def updated() -> bool:
        obj = await world.get_endpoint(ns, "a")
        return ((obj or {}).get("status") or {}).get("mtu") == 1300

    await kube.wait_for(updated, timeout=20, what="endpoint status.mtu follows the network")
    assert ((await world.get_network(net) or {})["status"])["mtu"] == 1300


# -- the claim collector's cached rounds (in-process, against the real API server) ---------------


async def test_cached_collector_rounds_delete_only_what_a_read_of_the_owner_confirms(
    client: kube.KubeClient,
) -> None:
    """The collector run directly (no operator process), with a cache that lags: it knows the
    claims but none of their owners. Only claims whose owner a GET by name shows gone (or
    re-created under another uid) are deleted; a claim of a living Endpoint stays."""
    ns = f"gc-{uuid.uuid4().hex[:6]}"
    await client.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    eps = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
    made: list[str] = []
    try:
        alive = await client.create(
            eps,
            {
                "apiVersion": c.API_VERSION,
                "kind": c.ENDPOINT,
                "metadata": {"name": "alive", "namespace": ns},
                "spec": {"network": f"{ns}-net", "node": "n1", "target": {"host": {}}},
            },
        )
        alive_uid = alive["metadata"]["uid"]
        owners = {  # address -> (owner name, owner uid)
            "198.18.80.10": ("alive", alive_uid),  # its owner lives
            "198.18.80.11": ("gone", str(uuid.uuid4())),  # no such Endpoint
            "198.18.80.12": ("alive", str(uuid.uuid4())),  # an earlier incarnation of "alive"
        }
        claims: list[ipam.IPClaimInfo] = []
        for ip, (name, uid) in owners.items():
            body = ipam.ip_claim_body(
                f"{ns}-net", ipaddress.IPv4Address(ip), namespace=ns, name=name, uid=uid
            )
            claim = ipam.parse_ip_claim(await client.create(IP_CLAIMS, body))
            assert claim is not None
            claims.append(claim)
            made.append(claim.name)
        cache = ClaimCache(ip_claims=lambda: claims, owner_uids=set, ready=lambda: True)
        collector = ClaimCollector(client, grace=0, cache=cache, full_every=100)
        collector.rounds = 1  # past its start-up round (a full one): the next are cached
        assert await collector.run_round() == []  # first sighting: candidates only
        deleted = await collector.run_round()
        assert sorted(r.name for r in deleted) == sorted(made[1:])
        left = {
            cl["metadata"]["name"]
            for cl in (await client.list(IP_CLAIMS))[0]
            if cl["metadata"]["name"] in made
        }
        assert left == {made[0]}, "the living Endpoint's claim must stay"
    finally:
        for name in made:
            await client.delete(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS, name=name))
        await client.delete(f"{eps}/alive")
        await client.delete(f"/api/v1/namespaces/{ns}")


async def test_full_collector_round_lists_and_collects_an_orphan(client: kube.KubeClient) -> None:
    """The start-up round (and every ``full_every``-th) lists everything instead of reading the
    cache: an orphan the cache does not even know is collected after two of them."""
    body = ipam.ip_claim_body(
        "gc-full-net",
        ipaddress.IPv4Address("198.18.81.10"),
        namespace="gc-full",
        name="gone",
        uid=str(uuid.uuid4()),
    )
    name = body["metadata"]["name"]
    await client.create(IP_CLAIMS, body)
    try:
        empty = ClaimCache(ip_claims=list, owner_uids=set, ready=lambda: True)
        collector = ClaimCollector(client, grace=0, cache=empty, full_every=1)
        first = await collector.run_round()
        assert name not in {r.name for r in first}
        second = await collector.run_round()
        assert name in {r.name for r in second}
        assert await client.get(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS, name=name)) is None
    finally:
        await client.delete(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS, name=name))
