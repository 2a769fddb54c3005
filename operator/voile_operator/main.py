"""``voile-operator``: leader election on a Lease, then kopf embedded (watches and indexes), the
Endpoint work queue, the claim collector and the metrics endpoint.

Every replica starts its watch caches of Endpoints, IPClaims and OverlayNetworks at once and keeps
them current, leader or not. One replica acts at a time: a replica first acquires the Lease
``voile-operator`` in --namespace (the same --id re-acquires at once after a restart; another id
waits for expiry), then starts the work queue on its warm caches and kopf (OverlayNetworks only)
in standalone mode. When it cannot renew the Lease it stops kopf and exits non-zero, so that a
supervisor restarts it as a standby. A clean stop (SIGTERM) releases the Lease for a fast handover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

import kopf

from voile import kube, logs
from voile.api import constants as c
from voile.metrics_http import MetricsServer
from voile_operator import __version__
from voile_operator.appliers.collector import ClaimCollector
from voile_operator.appliers.health import HealthMonitor
from voile_operator.appliers.leader import LeaderElector
from voile_operator.appliers.reconcile import Reconciler, Settings
from voile_operator.handlers import resources  # noqa: F401 - registers the handlers
from voile_operator.handlers.settings import operator_settings

log = logging.getLogger("voile_operator")

EXIT_LOST_LEADERSHIP = 3
EXIT_KOPF_FAILED = 1


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"VOILE_{name.upper().replace('-', '_')}", default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voile-operator", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"voile-operator {__version__}")
    p.add_argument("--kubeconfig", default=_env("kubeconfig", None))
    p.add_argument("--namespace", default=_env("namespace", c.DEFAULT_NAMESPACE))
    p.add_argument(
        "--underlay-mtu",
        type=int,
        default=int(_env("underlay-mtu", str(c.DEFAULT_UNDERLAY_MTU)) or 1500),
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("metrics-port", "8080") or 0),
        help="Prometheus metrics port (0 = off)",
    )
    p.add_argument(
        "--id",
        default=_env("id", os.environ.get("POD_NAME") or socket.gethostname()),
        help="leader election identity (default $POD_NAME or the hostname)",
    )
    p.add_argument(
        "--agent-dead-after",
        type=float,
        default=float(_env("agent-dead-after", "300") or 300),
        help="seconds without an agent heartbeat before its finalizer is removed",
    )
    p.add_argument(
        "--health-interval",
        type=float,
        default=float(_env("health-interval", "1") or 1),
        help="seconds between folds of the agents' probe reports into status",
    )
    p.add_argument(
        "--health-max-age",
        type=float,
        default=float(_env("health-max-age", "35") or 35),
        help="seconds after which an agent's probe report no longer counts (Unknown)",
    )
    p.add_argument("--lease-duration", type=int, default=int(_env("lease-duration", "15") or 15))
    p.add_argument(
        "--gc-interval",
        type=float,
        default=float(_env("gc-interval", "30") or 30),
        help="seconds between claim collector rounds",
    )
    p.add_argument(
        "--gc-full-every",
        type=int,
        default=int(_env("gc-full-every", "10") or 10),
        help="every Nth collector round lists everything (the first always does); the others "
        "read the watch caches and confirm each orphan by a GET of its owner",
    )
    p.add_argument(
        "--gc-grace",
        type=float,
        default=float(_env("gc-grace", "120") or 120),
        help="minimum age of a claim before the collector may delete it",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("workers", "64") or 64),
        help="Endpoints reconciled concurrently (the work queue's workers)",
    )
    p.add_argument("--log-level", default=_env("log-level", "info"))
    p.add_argument("--log-format", choices=["text", "json"], default=_env("log-format", "text"))
    return p


async def run(args: argparse.Namespace) -> int:
    client = kube.KubeClient.from_config(
        args.kubeconfig,
        field_manager="voile-operator",
        max_connections=max(64, 2 * args.workers),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    elector = LeaderElector(
        client,
        namespace=args.namespace,
        name=c.OPERATOR_LEASE,
        identity=args.id,
        duration=args.lease_duration,
    )
    reconciler = Reconciler(
        client,
        Settings(
            namespace=args.namespace,
            underlay_mtu=args.underlay_mtu,
            agent_dead_after=args.agent_dead_after,
        ),
        workers=args.workers,
    )
    reconciler.watches.start()  # warm while standing by
    try:
        acquiring = asyncio.create_task(_acquire(elector, reconciler))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not acquiring.done():
            acquiring.cancel()
            return 0
        stopping.cancel()
        return await _lead(args, client, elector, reconciler)
    finally:
        await reconciler.watches.stop()
        await client.close()


async def _acquire(elector: LeaderElector, reconciler: Reconciler) -> None:
    """The Lease, then caches that hold their first lists (at once on a warm standby)."""
    await elector.acquire()
    waited = time.monotonic()
    await reconciler.watches.wait_synced()
    watches = reconciler.watches
    log.info(
        "leading as %s: caches ready in %.2f s (endpoints=%d ipclaims=%d networks=%d queued=%d)",
        elector.identity,
        time.monotonic() - waited,
        len(watches.endpoints.cache),
        len(watches.claims.cache),
        len(watches.networks.cache),
        len(reconciler.queue),
    )


async def _lead(
    args: argparse.Namespace,
    client: kube.KubeClient,
    elector: LeaderElector,
    reconciler: Reconciler,
) -> int:
    kopf_stop = asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            standalone=True,
            clusterwide=True,
            settings=operator_settings(args.id),
            memo=kopf.Memo(reconciler=reconciler),
            stop_flag=kopf_stop,
        )
    )
    stop_holding = threading.Event()
    holding = asyncio.create_task(asyncio.to_thread(_hold_in_thread, args, stop_holding))
    collector = asyncio.create_task(
        ClaimCollector(
            client,
            interval=args.gc_interval,
            grace=args.gc_grace,
            cache=reconciler.claim_cache(),
            full_every=args.gc_full_every,
        ).run()
    )
    workers = asyncio.create_task(reconciler.queue.run())
    counts = asyncio.create_task(reconciler.run_network_counts())
    health = asyncio.create_task(
        HealthMonitor(
            client,
            namespace=args.namespace,
            interval=args.health_interval,
            max_age=args.health_max_age,
            sources=reconciler.health_sources(),
        ).run()
    )
    await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if holding.done():
        log.error("lost leadership: %s; stopping", holding.exception())
        code = EXIT_LOST_LEADERSHIP
    elif operator.exception() is not None:
        log.error("kopf stopped: %r", operator.exception())
        code = EXIT_KOPF_FAILED
    kopf_stop.set()
    collector.cancel()
    workers.cancel()
    counts.cancel()
    health.cancel()
    stop_holding.set()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(operator, timeout=15)
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(holding, timeout=5)
    if code == 0:
        await elector.release()
    return code


def _hold_in_thread(args: argparse.Namespace, stop: threading.Event) -> None:
    """Renew the Lease from a thread with its own event loop and connection pool, so that a
    main loop busy with hundreds of objects can never delay a renewal past its deadline (the
    process would then lose leadership while healthy). Raises LeadershipLost."""

    async def hold() -> None:
        async with kube.KubeClient.from_config(
            args.kubeconfig, field_manager="voile-operator"
        ) as client:
            elector = LeaderElector(
                client,
                namespace=args.namespace,
                name=c.OPERATOR_LEASE,
                identity=args.id,
                duration=args.lease_duration,
            )
            await elector.hold(stopped=stop.is_set)

    asyncio.run(hold())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format, quiet=("asyncio", "aiohttp"))
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it
    metrics = MetricsServer(args.metrics_port).start() if args.metrics_port else None
    try:
        return asyncio.run(run(args))
    finally:
        if metrics is not None:
            metrics.close()


if __name__ == "__main__":
    sys.exit(main())
