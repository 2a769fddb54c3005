"""``voile-agent run|cleanup|--version``: the node agent's command line.

Every option can also come from the environment as ``VOILE_<OPTION>`` (``--vtep-ip`` ->
``VOILE_VTEP_IP``), which is how the DaemonSet configures it; flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import prometheus_client

from voile import kube
from voile.api import constants as c
from voile.errors import VoileError
from voile_agent import __version__
from voile_agent.appliers.kube import FIELD_MANAGER
from voile_agent.appliers.netlink import DEFAULT_ALLOWED_NETNS_DIRS
from voile_agent.appliers.ovs import Ovs
from voile_agent.controller import datapath
from voile_agent.controller.agent import Agent, AgentSettings
from voile_agent.planning.model import DatapathType

log = logging.getLogger("voile_agent")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("VOILE_" + name.upper().replace("-", "_"), default)


def _add_ovs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bridge", default=_env("bridge", "br-voile"))
    p.add_argument(
        "--datapath-type",
        choices=[t.value for t in DatapathType],
        default=_env("datapath-type", DatapathType.SYSTEM.value),
    )
    p.add_argument(
        "--vxlan-port", type=int, default=int(_env("vxlan-port") or c.DEFAULT_VXLAN_PORT)
    )
    p.add_argument(
        "--tunnel-port",
        default=_env("tunnel-port", "vxlan-voile"),
        help="name of the flow-based VXLAN port (<= 15 characters)",
    )
    p.add_argument("--ovsdb", default=_env("ovsdb", "unix:/run/openvswitch/db.sock"))
    p.add_argument(
        "--ovs-rundir",
        default=_env("ovs-rundir", "/run/openvswitch"),
        help="ovs-vswitchd's run directory, which holds <bridge>.mgmt",
    )
    p.add_argument(
        "--underlay-interface",
        default=_env("underlay-interface"),
        help="netdev datapath: put this interface on an OVS bridge that takes over "
        "its addresses (the userspace datapath routes outer packets itself)",
    )
    p.add_argument("--underlay-bridge", default=_env("underlay-bridge", "br-underlay"))
    p.add_argument("--log-level", default=_env("log-level", "info"))
    p.add_argument("--log-format", choices=["text", "json"], default=_env("log-format", "text"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voile-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voile-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent of one host")
    run.add_argument("--node", default=_env("node"), required=_env("node") is None)
    vtep = run.add_mutually_exclusive_group()
    vtep.add_argument("--vtep-ip", default=_env("vtep-ip"))
    vtep.add_argument("--vtep-interface", default=_env("vtep-interface"))
    env_dirs = _env("allowed-netns-dir")
    run.add_argument(
        "--allowed-netns-dir",
        action="append",
        dest="allowed_netns_dirs",
        default=None,
        help="directory whose namespaces Endpoints may target "
        "(repeatable; default /run/netns and /var/run/netns)",
    )
    run.set_defaults(env_netns_dirs=env_dirs)
    run.add_argument("--resync-period", type=float, default=float(_env("resync-period") or 30))
    run.add_argument("--namespace", default=_env("namespace", c.DEFAULT_NAMESPACE))
    run.add_argument("--kubeconfig", default=_env("kubeconfig"))
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("metrics-port") or 0),
        help="Prometheus metrics port (0 = off)",
    )
    run.add_argument(
        "--heartbeat-interval", type=float, default=float(_env("heartbeat-interval") or 10)
    )
    _add_ovs_options(run)

    cleanup = sub.add_parser("cleanup", help="remove everything the agent made on this host")
    _add_ovs_options(cleanup)
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
                **({"exc": self.formatException(record.exc_info)} if record.exc_info else {}),
            }
        )


def _logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("ovsdbapp", "pyroute2", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


def _datapath(args: argparse.Namespace) -> datapath.DatapathSettings:
    if len(args.tunnel_port) > 15 or len(args.bridge) > 15:
        raise VoileError("--tunnel-port and --bridge must be at most 15 characters")
    return datapath.DatapathSettings(
        bridge=args.bridge,
        datapath_type=DatapathType(args.datapath_type),
        vxlan_port=args.vxlan_port,
        tunnel_port=args.tunnel_port,
        ovsdb=args.ovsdb,
        ovs_rundir=args.ovs_rundir,
        underlay_interface=args.underlay_interface,
        underlay_bridge=args.underlay_bridge,
    )


async def _run(args: argparse.Namespace) -> int:
    dirs = args.allowed_netns_dirs
    if not dirs:
        env = args.env_netns_dirs
        dirs = env.split(",") if env else list(DEFAULT_ALLOWED_NETNS_DIRS)
    settings = AgentSettings(
        node=args.node,
        vtep_ip=args.vtep_ip,
        vtep_interface=args.vtep_interface,
        datapath=_datapath(args),
        allowed_netns_dirs=tuple(dirs),
        resync_period=args.resync_period,
        namespace=args.namespace,
        heartbeat_interval=args.heartbeat_interval,
    )
    if not settings.vtep_ip and not settings.vtep_interface:
        raise VoileError("give --vtep-ip or --vtep-interface")
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
        log.info("metrics served port=%s", args.metrics_port)
    client = kube.KubeClient.from_config(args.kubeconfig, field_manager=FIELD_MANAGER)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Leave the datapath as it is: flows keep forwarding while the agent is away.
        loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    try:
        await Agent(settings, client, Ovs(settings.datapath.ovsdb)).run()
    except asyncio.CancelledError:
        log.info("agent stopping; datapath left in place")
    finally:
        await client.close()
    return 0


async def _cleanup(args: argparse.Namespace) -> int:
    settings = _datapath(args)
    removed = await datapath.cleanup(Ovs(settings.ovsdb), settings)
    log.info("cleanup done %s", " ".join(f"{k}={v}" for k, v in removed.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.log_level, args.log_format)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        return asyncio.run(_cleanup(args))
    except VoileError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
