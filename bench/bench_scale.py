"""Scale: N simulated hosts, E Endpoints over M networks, against the real API server.

Up to 10 hosts run real agents on real Open vSwitch in network namespaces (the lab); hosts
beyond ``--ovs-hosts`` run agents with the null datapath (memory only), so at 100 hosts only the
control plane and the agents' own work are measured. One run reports:

- apply -> allocated (status.ip), apply -> Ready (the agent's condition): p50/p99/max, and
  apply -> first ping for a sample of Endpoints on OVS hosts (a namespace each, pinging a probe);
- API requests per Endpoint, by verb and resource, from the API server's own counters
  (apiserver_request_total; the bench's own creates and watch subtracted);
- operator and agent CPU seconds and peak RSS (/proc);
- the baseline in the same run: the raw create rate of the same API server for a concurrent
  client (16 at a time, ConfigMaps of Endpoint size, nothing watching them), and the ratio of
  the operator's allocations/s to it (``--backlog``: the operator is stopped while the Endpoints
  are created, so its rate is its own, not the bench's create rate);
- agent CPU per remote Endpoint change: after everything is Ready, ``--churn`` Endpoints get a
  status change no datapath depends on (a condition of the bench's own field manager, as the
  operator's health conditions are) and then the same number get one that peers must forward on
  (the Endpoint is deleted); the agents' CPU in each phase over the changes;
- deletion of everything: time until no Endpoint is left, leaked claims, duplicate addresses;
- the load average before and after (the machine is shared: say how loaded it was).

Bounded: E <= 12,000, hosts <= 120, every wait has a deadline (``--timeout``, default 600 s).
Run as root (OVS hosts), e.g.:
    .venv/bin/python bench/bench_scale.py --hosts 10 --ovs-hosts 10 --endpoints 1000
    .venv/bin/python bench/bench_scale.py --hosts 100 --ovs-hosts 0 --endpoints 10000 \
        --placement tenant
    .venv/bin/python bench/bench_scale.py --hosts 3 --ovs-hosts 3 --endpoints 30 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voile import clock, kube
from voile.api import constants as c
from voile.controlplane import ControlPlane
from voile.crds import install_crds
from voile.lab.host import add_netns, del_netns
from voile.lab.lab import Lab
from voile.lab.measure import first_ping, free_octet, percentile
from voile_operator.planning import ipam

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
NS = "bench-scale"
BASELINE_CONCURRENCY = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a live process; (0, 0) if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        hwm = next(
            (ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if "VmHWM" in ln),
            "VmHWM: 0 kB",
        )
        return cpu, int(hwm.split()[1]) / 1024
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def supervised(pid: int) -> int:
    """The process a ``voile.lab.supervise`` wrapper runs (its only child), else ``pid``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"voile.lab.supervise" not in cmdline:
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def null_agent(kubeconfig: Path, node: str, vtep: str, state: Path) -> list[str]:
    return [
        str(BIN / "voile-agent"), "run",
        "--node", node,
        "--datapath", "null",
        "--vtep-ip", vtep,
        "--kubeconfig", str(kubeconfig),
        "--namespace", c.DEFAULT_NAMESPACE,
        "--attach-socket", "",
        "--docker-plugin-socket", "",
        "--cni-spool-dir", "",
        "--state-dir", str(state),
        "--probe-interval", "0",
        "--resync-period", "60",
        "--log-level", "warning",
    ]  # fmt: skip


def operator_argv(kubeconfig: Path) -> list[str]:
    return [
        str(BIN / "voile-operator"),
        "--kubeconfig", str(kubeconfig),
        "--id", "bench-scale",
        "--metrics-port", "0",
        "--gc-interval", "60",
        # a loaded shared machine can hold a renewal past the default deadline; the operator
        # then stops (as designed) and the run measures nothing
        "--lease-duration", "60",
        "--log-level", "info",
    ]  # fmt: skip


class Procs:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str]) -> int:
        with (self.log_dir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(proc)
        return proc.pid

    def stop(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# -- API server counters -------------------------------------------------------------------

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


async def request_counts(client: kube.KubeClient) -> collections.Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource[/subresource]) for voile.dev and events."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in (await client.get_text("/metrics")).splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("group") not in ("voile.dev", "") or labels.get("resource") in (
            None,
            "",
            "configmaps",
            "namespaces",
            "leases",
        ):
            continue
        sub = labels.get("subresource")
        resource = labels["resource"] + (f"/{sub}" if sub else "")
        counts[(labels.get("verb", ""), resource)] += int(float(m["value"]))
    return counts


# -- objects -------------------------------------------------------------------------------


def endpoint_body(name: str, network: str, node: str, netns: str | None) -> dict[str, Any]:
    target: dict[str, Any] = (
        {"netns": {"path": f"/run/netns/{netns}", "interface": "eth0"}} if netns else {"host": {}}
    )
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ENDPOINT,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"network": network, "node": node, "target": target},
    }


async def ensure_ns(client: kube.KubeClient, name: str) -> None:
    with contextlib.suppress(kube.Conflict):
        await client.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )


async def raw_baseline(client: kube.KubeClient, count: int) -> float:
    """Creates/s of ConfigMaps (about an Endpoint's size), 16 concurrent, nothing watching."""
    ns = "bench-scale-raw"
    await ensure_ns(client, ns)
    url = f"/api/v1/namespaces/{ns}/configmaps"
    sem = asyncio.Semaphore(BASELINE_CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await client.create(
                url,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"raw-{i:05d}"},
                    "data": {"network": f"n{i % 10}", "node": "null-1", "target": "host"},
                },
            )

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    rate = count / (time.monotonic() - t0)
    await client.request("DELETE", url)  # deletecollection
    return rate


RAW_FINALIZER = "bench.voile.dev/raw"
RAW_MANAGER = "bench-scale-raw"


async def raw_allocation_baseline(client: kube.KubeClient, count: int, workers: int = 64) -> float:
    """Allocations/s of the operator's own three writes done by a plain client, ``workers`` at a
    time, with no decision in between: per pre-created Endpoint its finalizer (server-side
    apply) together with an IPClaim create, then the status (server-side apply on /status).
    What the API server and etcd can give an allocator here. The operator is stopped meanwhile
    (its watch sees the objects come and go afterwards); everything is removed again."""
    ns = "bench-scale-rawalloc"
    await ensure_ns(client, ns)
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns)
    names = [f"raw-{i:05d}" for i in range(count)]
    sem = asyncio.Semaphore(workers)

    async def create(name: str, i: int) -> dict[str, Any]:
        async with sem:
            return await client.create(
                url,
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.ENDPOINT,
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"network": f"raw-net-{i % 10}", "node": "null-raw",
                             "target": {"host": {}}},
                },
            )  # fmt: skip

    made = await asyncio.gather(*(create(n, i) for i, n in enumerate(names)))

    async def allocate(obj: dict[str, Any], i: int) -> None:
        meta = obj["metadata"]
        ip = ipaddress.IPv4Address("198.19.0.0") + 2 + i // 10
        one = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name=meta["name"])
        fin = {"apiVersion": c.API_VERSION, "kind": c.ENDPOINT,
               "metadata": {"name": meta["name"], "namespace": ns, "uid": meta["uid"],
                            "finalizers": [RAW_FINALIZER]}}  # fmt: skip
        claim = ipam.ip_claim_body(
            f"raw-net-{i % 10}", ip, namespace=ns, name=meta["name"], uid=meta["uid"]
        )
        status = {"apiVersion": c.API_VERSION, "kind": c.ENDPOINT,
                  "metadata": {"name": meta["name"], "namespace": ns},
                  "status": {"ip": str(ip), "mac": "0a:58:c6:13:00:02", "prefixLength": 16,
                             "vni": 4096 + i % 10, "mtu": 1450, "observedGeneration": 1,
                             "conditions": [{"type": "Allocated", "status": "True",
                                             "reason": "Allocated", "message": f"allocated {ip}",
                                             "lastTransitionTime": clock.now_rfc3339(),
                                             "observedGeneration": 1}]}}  # fmt: skip
        async with sem:
            await asyncio.gather(
                client.patch(one, fin, kind="apply", field_manager=RAW_MANAGER),
                client.create(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS), claim),
            )
            await client.patch(one + "/status", status, kind="apply", field_manager=RAW_MANAGER)

    t0 = time.monotonic()
    await asyncio.gather(*(allocate(obj, i) for i, obj in enumerate(made)))
    rate = count / (time.monotonic() - t0)
    for k in range(10):  # clean up: claims, finalizers, Endpoints
        await client.request(
            "DELETE",
            kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS),
            params={"labelSelector": f"{c.LABEL_NETWORK}=raw-net-{k}"},
        )

    async def release(name: str) -> None:
        one = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ns, name=name)
        async with sem:
            await client.patch(one, {"metadata": {"finalizers": None}}, kind="merge")

    await asyncio.gather(*(release(n) for n in names))
    await client.request("DELETE", url)  # deletecollection
    return rate


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


# -- the run -------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, kubeconfig: Path, nodes: list[str]) -> None:
        self.args, self.kubeconfig, self.nodes = args, kubeconfig, nodes
        self.created: dict[str, float] = {}
        self.allocated: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.pinged: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def network_of(self, i: int) -> int:
        """Index of Endpoint i's network (before the modulo).

        ``all``: every host gets Endpoints of every network (host i % H, network (i // H) % M),
        so each agent watches all networks and each change reaches every other host.
        ``tenant``: host h uses network h % M only, so a change reaches the H / M hosts of its
        network (networks used where they are needed, as a tenant's are)."""
        hosts = len(self.nodes)
        return i // hosts if self.args.placement == "all" else i % hosts

    async def watch(self, client: kube.KubeClient, stop: asyncio.Event) -> None:
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS)
        _, rv = await client.list(url)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, kube.Gone, OSError):
                async for kind, obj in client.watch(url, resource_version=rv, timeout_seconds=30):
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    name, now = str(meta.get("name")), time.monotonic()
                    self.last[name] = obj
                    if (obj.get("status") or {}).get("ip"):
                        self.allocated.setdefault(name, now)
                    if condition(obj, "Ready") == "True":
                        self.ready.setdefault(name, now)
                    if stop.is_set():
                        return

    async def create_all(
        self, client: kube.KubeClient, networks: list[str], ping_targets: dict[str, str]
    ) -> None:
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS)
        sem = asyncio.Semaphore(64)
        period = 1.0 / self.args.rate if self.args.rate else 0.0
        t0 = time.monotonic()

        async def one(i: int) -> None:
            name = f"ep-{i:05d}"
            netns = ping_targets.get(name)
            node = self.nodes[i % len(self.nodes)]
            net = networks[0] if netns else networks[self.network_of(i) % len(networks)]
            if period:
                await asyncio.sleep(max(0.0, t0 + i * period - time.monotonic()))
            async with sem:
                self.created[name] = time.monotonic()
                await client.create(url, endpoint_body(name, net, node, netns))

        await asyncio.gather(*(one(i) for i in range(self.args.endpoints)))


def ping_sampler(
    run: Run, probe: str, targets: dict[str, str], limit: float
) -> list[threading.Thread]:
    """One thread per sampled Endpoint (so that a slow one does not delay the next one's
    measurement): from its creation, ping the probe every 50 ms until the first reply."""

    def work(name: str, netns: str) -> None:
        deadline = time.monotonic() + limit + 600
        while name not in run.created and time.monotonic() < deadline:
            time.sleep(0.01)
        if name not in run.created:
            return
        took = first_ping(netns, probe, limit)
        if took is not None:
            run.pinged[name] = time.monotonic() - run.created[name]

    threads = [
        threading.Thread(target=work, args=(name, netns), daemon=True)
        for name, netns in targets.items()
    ]
    for thread in threads:
        thread.start()
    return threads


def dist(label: str, values: list[float], total: int) -> None:
    if not values:
        print(f"{label:26} none of {total}")
        return
    print(
        f"{label:26} n={len(values):5d}/{total:<5d} p50 {percentile(values, 50):7.2f} s"
        f"  p99 {percentile(values, 99):7.2f} s  max {max(values):7.2f} s"
    )


async def measure(
    args: argparse.Namespace,
    kubeconfig: Path,
    nodes: list[str],
    pids: dict[str, int],
    probe: tuple[str, str] | None,
    ping_targets: dict[str, str],
) -> int:
    run = Run(args, kubeconfig, nodes)
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        await ensure_ns(client, NS)
        networks = [f"scale-{i}" for i in range(args.networks)]
        if probe is None:
            for i, net in enumerate(networks):
                await client.create(
                    kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
                    {
                        "apiVersion": c.API_VERSION,
                        "kind": c.OVERLAY_NETWORK,
                        "metadata": {"name": net},
                        "spec": {"cidr": f"198.19.{i * 8}.0/21"},
                    },
                )

        async def nets_ready() -> bool:
            for net in networks:
                obj = await client.get(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS, name=net))
                if not ((obj or {}).get("status") or {}).get("vni"):
                    return False
            return True

        await kube.wait_for(nets_ready, timeout=120, what="networks Ready")
        raw_rate = await raw_baseline(client, min(args.endpoints, 2000))
        os.kill(pids["operator"], signal.SIGSTOP)  # the baseline's objects are not its work
        try:
            raw_alloc_rate = await raw_allocation_baseline(client, min(args.endpoints, 2000))
        finally:
            os.kill(pids["operator"], signal.SIGCONT)
        await asyncio.sleep(3)  # the operator drains the baseline's events
        before_stats = {k: proc_stats(p) for k, p in pids.items()}
        before = await request_counts(client)
        stop = asyncio.Event()
        watcher = asyncio.create_task(run.watch(client, stop))
        await asyncio.sleep(1)
        pingers = ping_sampler(run, probe[1], ping_targets, 30.0) if probe else []
        if args.backlog:  # the operator sees nothing until every Endpoint exists
            os.kill(pids["operator"], signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            await run.create_all(client, networks, ping_targets)
        finally:
            if args.backlog:
                os.kill(pids["operator"], signal.SIGCONT)
        created_in = time.monotonic() - t0
        resumed = time.monotonic()
        deadline = t0 + args.timeout
        goal = run.allocated if args.no_agents else run.ready
        while time.monotonic() < deadline and len(goal) < args.endpoints:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        all_ready = time.monotonic() - t0
        for pinger in pingers:
            await asyncio.to_thread(pinger.join, 60)
        after = await request_counts(client)
        after_stats = {k: proc_stats(p) for k, p in pids.items()}
        stop.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher

        # duplicates, then delete everything and look for leaks
        by_net: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for name, obj in run.last.items():
            ip = (obj.get("status") or {}).get("ip")
            if ip:
                by_net[(obj["spec"]["network"], ip)].append(name)
        duplicates = {k: v for k, v in by_net.items() if len(v) > 1}

    n = args.endpoints
    alloc = [run.allocated[k] - run.created[k] for k in run.created if k in run.allocated]
    ready = [run.ready[k] - run.created[k] for k in run.created if k in run.ready]
    print(
        f"# {n} endpoints, {args.networks} networks, {len(nodes)} hosts "
        f"({args.ovs_hosts} OVS, {len(nodes) - args.ovs_hosts} null), "
        f"{'burst' if not args.rate else f'{args.rate}/s'}, placement {args.placement}; "
        f"created in {created_in:.1f} s"
    )
    dist("apply -> allocated", alloc, n)
    dist("apply -> Ready", ready, n)
    if ping_targets:
        dist("apply -> first ping", list(run.pinged.values()), len(ping_targets))
    # with --backlog the operator's own pace: from its SIGCONT, every Endpoint already there
    start = resumed if args.backlog else t0
    last_alloc = max(run.allocated.values(), default=start) - start
    print(f"all Ready after            {all_ready:7.1f} s ({len(run.ready)}/{n} Ready)")
    alloc_rate = len(alloc) / last_alloc if last_alloc > 0 else 0.0
    if args.backlog:
        print(f"backlog: all {n} created in {created_in:.1f} s with the operator stopped")
    print(f"raw API creates (baseline) {raw_rate:7.1f}/s  ({BASELINE_CONCURRENCY} concurrent)")
    print(
        f"raw allocation writes       {raw_alloc_rate:7.1f}/s  (finalizer + claim, then status; "
        "64 concurrent, no operator)"
    )
    print(
        f"operator allocations       {alloc_rate:7.1f}/s  ratio x{alloc_rate / raw_rate:.2f} of raw"
        f" creates, x{alloc_rate / raw_alloc_rate:.2f} of the raw allocation writes"
    )
    delta = after - before
    delta[("POST", "endpoints")] -= n  # the bench's own
    delta[("WATCH", "endpoints")] -= 1
    total = sum(v for v in delta.values() if v > 0)
    print(f"API requests per endpoint  {total / n:7.2f} (operator + agents, bench excluded)")
    for (verb, res), count in sorted(delta.items(), key=lambda kv: -kv[1]):
        if count > 0:
            print(f"    {verb:8} {res:28} {count / n:6.2f}/endpoint  ({count})")
    op = [k for k in pids if k == "operator"]
    agents = [k for k in pids if k != "operator"]
    for key in op:
        cpu = after_stats[key][0] - before_stats[key][0]
        print(f"operator CPU {cpu:7.1f} s   peak RSS {after_stats[key][1]:6.1f} MB")
    if agents:
        cpus = [after_stats[k][0] - before_stats[k][0] for k in agents]
        rss = [after_stats[k][1] for k in agents]
        print(
            f"agents ({len(agents)}) CPU mean {sum(cpus) / len(cpus):6.2f} s max {max(cpus):6.2f}"
            f" s; peak RSS mean {sum(rss) / len(rss):6.1f} MB max {max(rss):6.1f} MB"
        )
    print(f"duplicate addresses        {len(duplicates)}", flush=True)
    if agents and args.churn:
        await churn(kubeconfig, sorted(run.ready)[: args.churn], pids, agents, len(nodes))
    deleted_in, left, claims = await delete_all(kubeconfig, args.timeout)
    print(f"delete all: {deleted_in:6.1f} s; left {left} endpoints, {claims} leaked claims")
    return 0 if not duplicates and not claims else 1


async def churn(
    kubeconfig: Path, names: list[str], pids: dict[str, int], agents: list[str], hosts: int
) -> None:
    """Agent CPU per remote Endpoint change: first a status condition no forwarding depends on
    (``BenchTouched``, the bench's own field manager, like the operator's health conditions),
    then deletion of the same Endpoints (every peer must stop forwarding to them). Each
    phase waits until the agents' CPU has been quiet for 2 s (at most 60 s)."""
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS)
    sem = asyncio.Semaphore(16)

    async def touch(name: str) -> None:
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {"name": name, "namespace": NS},
            "status": {
                "conditions": [
                    {
                        "type": "BenchTouched",
                        "status": "True",
                        "reason": "Bench",
                        "message": "a change no datapath depends on",
                        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                ]
            },
        }
        async with sem:
            with contextlib.suppress(kube.ApiError, TimeoutError, OSError):
                await client.patch(
                    f"{url}/{name}/status", body, kind="apply", field_manager="bench-scale"
                )

    async def remove(name: str) -> None:
        async with sem:
            with contextlib.suppress(kube.ApiError, TimeoutError, OSError):
                await client.delete(f"{url}/{name}")

    def agents_cpu() -> float:
        return sum(proc_stats(pids[k])[0] for k in agents)

    async def quiet() -> None:
        last, t0 = agents_cpu(), time.monotonic()
        while time.monotonic() - t0 < 60:
            await asyncio.sleep(2)
            now = agents_cpu()
            if now - last < 0.02 * len(agents):
                return
            last = now

    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        await quiet()
        for label, fn in (("irrelevant (condition)", touch), ("relevant (deletion)", remove)):
            cpu0, t0 = agents_cpu(), time.monotonic()
            await asyncio.gather(*(fn(n) for n in names))
            await quiet()
            cpu = agents_cpu() - cpu0  # idle work (heartbeats, timers) included
            # every change reaches the agents of the other hosts that use the network
            per = cpu / max(1, len(names)) / max(1, len(agents) - 1) * 1000
            print(
                f"agent CPU per remote change, {label:22}: {per:6.2f} ms "
                f"({len(names)} changes, all agents {cpu:6.2f} s in {time.monotonic() - t0:.0f} s)"
            )


async def delete_all(kubeconfig: Path, timeout: float) -> tuple[float, int, int]:
    """Delete every Endpoint (32 at a time); seconds until none and no IPClaim is left."""
    url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=NS)
    claims_url = kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        items, _ = await client.list(url)
        sem = asyncio.Semaphore(32)

        async def one(name: str) -> None:
            async with sem:
                with contextlib.suppress(kube.ApiError, TimeoutError, OSError):
                    await client.delete(f"{url}/{name}")

        d0 = time.monotonic()
        await asyncio.gather(*(one(str(i["metadata"]["name"])) for i in items))
        left: list[Any] = []
        claims: list[Any] = []
        while time.monotonic() - d0 < timeout:
            left, _ = await client.list(url)
            claims = [  # this bench's (the lab's probe keeps its own)
                cl
                for cl in (await client.list(claims_url))[0]
                if ((cl.get("spec") or {}).get("endpoint") or {}).get("namespace") == NS
            ]
            if not left and not claims:
                break
            await asyncio.sleep(1)
        return time.monotonic() - d0, len(left), len(claims)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--ovs-hosts", type=int, default=None, help="default min(hosts, 10)")
    p.add_argument("--endpoints", type=int, default=1000)
    p.add_argument("--networks", type=int, default=10)
    p.add_argument("--rate", type=float, default=0.0, help="endpoints/s (0 = all at once)")
    p.add_argument(
        "--ping-sample", type=int, default=30, help="Endpoints on OVS hosts pinged (<= 200)"
    )
    p.add_argument(
        "--placement",
        choices=("all", "tenant"),
        default="all",
        help="all: every host holds Endpoints of every network (each change reaches every "
        "host); tenant: host h holds network h %% M only (a change reaches H/M hosts)",
    )
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--backlog",
        action="store_true",
        help="SIGSTOP the operator while the Endpoints are created, then SIGCONT: allocations/s "
        "at the operator's own pace, not bounded by how fast the bench creates",
    )
    p.add_argument(
        "--no-agents",
        action="store_true",
        help="null hosts without agents: the operator's allocation alone (no Ready)",
    )
    p.add_argument(
        "--churn", type=int, default=200, help="Endpoints changed to measure agent CPU (0 = off)"
    )
    p.add_argument("--log-dir", type=Path, default=None, help="keep the processes' logs here")
    args = p.parse_args()
    args.ovs_hosts = min(args.hosts, 10) if args.ovs_hosts is None else args.ovs_hosts
    if not (1 <= args.hosts <= 120 and 0 <= args.ovs_hosts <= min(10, args.hosts)):
        p.error("1 <= hosts <= 120 and 0 <= ovs-hosts <= min(10, hosts)")
    if not 0 <= args.ping_sample <= 200:
        p.error("0 <= ping-sample <= 200")
    if not 1 <= args.endpoints <= 12000 or not 1 <= args.networks <= 30:
        p.error("1 <= endpoints <= 12000, 1 <= networks <= 30")
    if args.ovs_hosts and os.geteuid() != 0:
        p.error("OVS hosts need root")
    if args.no_agents and args.ovs_hosts:
        p.error("--no-agents takes --ovs-hosts 0")
    with tempfile.TemporaryDirectory(prefix="voile-scale-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> int:
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(args.log_dir or tmp)
    pids: dict[str, int] = {}
    lab: Lab | None = None
    plane: ControlPlane | None = None
    ping_targets: dict[str, str] = {}
    probe: tuple[str, str] | None = None
    nodes: list[str] = []
    octet = free_octet()
    print(f"load average before        {load_average()}", flush=True)
    try:
        if args.ovs_hosts:
            # the lab's operator reads its lease duration from the environment (see operator_argv)
            os.environ.setdefault("VOILE_LEASE_DURATION", "60")
            lab = Lab(tmp / "lab", run_id=f"sc{octet}", underlay_octet=octet)
            lab.up(hosts=args.ovs_hosts)
            kubeconfig = lab.kubeconfig
            state = lab._state()
            pids["operator"] = supervised(int(state["pids"]["operator"]))
            for i in range(1, args.ovs_hosts + 1):
                pids[f"agent/host-{i}"] = int(state["pids"][f"agent/host-{i}"])
                nodes.append(f"host-{i}")
            asyncio.run(_lab_networks(kubeconfig, args.networks))
            probe = ("host-1", lab.attach("host-1", "probe", "scale-0"))
            sample = min(args.ping_sample, args.endpoints)
            for i in range(args.endpoints):
                if len(ping_targets) >= sample:
                    break
                if i % args.hosts < args.ovs_hosts:  # on an OVS host
                    netns = f"{lab.container_prefix}p{i}"
                    add_netns(netns)
                    ping_targets[f"ep-{i:05d}"] = netns
        else:
            plane = ControlPlane(tmp / "controlplane")
            plane.start()
            kubeconfig = plane.kubeconfig
            asyncio.run(_install(kubeconfig))
            pids["operator"] = procs.start("operator", operator_argv(kubeconfig))
        for k in range(args.ovs_hosts + 1, args.hosts + 1):
            node = f"null-{k}"
            nodes.append(node)
            if args.no_agents:
                continue
            state_dir = tmp / node
            state_dir.mkdir()
            vtep = f"198.18.{octet}.{k + 100}"
            pids[f"agent/{node}"] = procs.start(node, null_agent(kubeconfig, node, vtep, state_dir))
        if not args.no_agents:
            asyncio.run(_wait_agents(kubeconfig, nodes))
        # order: by host index, so endpoint i lands on nodes[i % hosts] (OVS hosts first)
        return asyncio.run(measure(args, kubeconfig, nodes, pids, probe, ping_targets))
    finally:
        procs.stop()
        if lab is not None:
            lab.down()
        for netns in ping_targets.values():
            del_netns(netns)
        if plane is not None:
            plane.stop()
        print(f"load average after         {load_average()}", flush=True)


async def _install(kubeconfig: Path) -> None:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        await install_crds(client)
        await ensure_ns(client, c.DEFAULT_NAMESPACE)


async def _lab_networks(kubeconfig: Path, count: int) -> None:
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:
        for i in range(count):
            await client.create(
                kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS),
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.OVERLAY_NETWORK,
                    "metadata": {"name": f"scale-{i}"},
                    "spec": {"cidr": f"198.19.{i * 8}.0/21"},
                },
            )


async def _wait_agents(kubeconfig: Path, nodes: list[str]) -> None:
    """Every agent's heartbeat Lease exists (it is up and talking to the API server)."""
    url = kube.path("coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE)
    async with kube.KubeClient.from_config(str(kubeconfig)) as client:

        async def all_up() -> bool:
            items, _ = await client.list(url)
            names = {str((i.get("metadata") or {}).get("name")) for i in items}
            return all(f"{c.AGENT_LEASE_PREFIX}{n}" in names for n in nodes)

        await kube.wait_for(all_up, timeout=300, interval=1, what="agent heartbeats")


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
