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
from pathlib import Path

import prometheus_client

from voile import kube, logs
from voile.agentapi import AgentClient
from voile.api import constants as c
from voile.errors import VoileError
from voile.metrics_http import MetricsServer
from voile_agent import __version__
from voile_agent.controller.agent import Agent, AgentSettings
from voile_agent.controller.owner import OwnerWatch
from voile_agent.controller.source import AgentSource, Pulse
from voile_agent.datapath.base import Datapath
from voile_agent.datapath.ebpf.backend import EbpfDatapath, EbpfSettings
from voile_agent.datapath.null import NullDatapath
from voile_agent.datapath.ovs import OvsDatapath, OvsSettings
from voile_agent.datapath.ovs.model import DatapathType
from voile_agent.docker.driver import DockerDriver
from voile_agent.docker.server import DEFAULT_SOCKET as DEFAULT_DOCKER_PLUGIN_SOCKET
from voile_agent.docker.server import DockerPluginServer
from voile_agent.docker.state import FILE_NAME as NETWORK_STORE_FILE
from voile_agent.docker.state import NetworkStore
from voile_agent.host import files
from voile_agent.host.netlink import DEFAULT_ALLOWED_NETNS_DIRS, check_netns
from voile_agent.kubeapi import FIELD_MANAGER
from voile_agent.localapi.janitor import INVALID_SUFFIX, Janitor
from voile_agent.localapi.server import LocalApiServer
from voile_agent.localapi.service import AttachService

log = logging.getLogger("voile_agent")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("VOILE_" + name.upper().replace("-", "_"), default)


BACKENDS = ("auto", "ovs", "ebpf", "null")
OVS_MODULE = Path("/sys/module/openvswitch")
DEFAULT_ATTACH_SOCKET = "/run/voile/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/voile"
DEFAULT_CNI_SPOOL_DIR = "/var/lib/voile/cni-pending"


def _add_datapath_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--datapath",
        choices=BACKENDS,
        default=_env("datapath", "auto"),
        help="the datapath backend: ovs (Open vSwitch), ebpf (tc programs on a VXLAN device in "
        "external mode), auto (ovs with --datapath-type netdev or where the openvswitch kernel "
        "module is loaded, else ebpf), or null (memory only: measures the control plane alone, "
        "for scale tests)",
    )
    vtep = p.add_mutually_exclusive_group()
    vtep.add_argument("--vtep-ip", default=_env("vtep-ip"))
    vtep.add_argument("--vtep-interface", default=_env("vtep-interface"))
    p.add_argument(
        "--allowed-netns-dir",
        action="append",
        dest="allowed_netns_dirs",
        default=None,
        help="directory whose namespaces Endpoints may target "
        "(repeatable; default /run/netns and /var/run/netns)",
    )
    p.set_defaults(env_netns_dirs=_env("allowed-netns-dir"))
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
    p.add_argument(
        "--bpffs",
        default=_env("bpffs", "/sys/fs/bpf"),
        help="ebpf: the bpffs the programs and maps are pinned in (under voile/); it must "
        "outlive the agent",
    )
    p.add_argument(
        "--bpf-object",
        default=_env("bpf-object"),
        help="ebpf: a compiled voile.c (default: the cached build, compiled with clang if missing)",
    )
    p.add_argument(
        "--offload",
        choices=["on", "off"],
        default=_env("offload", "on"),
        help="ebpf: TX checksum and segmentation offload on the endpoints' interfaces; off for "
        "hosts that share networks with OVS netdev (userspace) hosts, which cannot take "
        "partial checksums or GSO frames",
    )
    p.add_argument("--log-level", default=_env("log-level", "info"))
    p.add_argument("--log-format", choices=["text", "json"], default=_env("log-format", "text"))


def _add_host_file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=_env("state-dir", DEFAULT_STATE_DIR),
        help="where the agent keeps what it must find again after a restart (the Docker "
        "driver's network mapping)",
    )
    p.add_argument(
        "--cni-spool-dir",
        default=_env("cni-spool-dir", DEFAULT_CNI_SPOOL_DIR),
        help="where the CNI plugin records a DEL the agent did not answer; the agent finishes "
        "each record at start and periodically (empty = off)",
    )
    p.add_argument(
        "--cni-bin-file",
        default=_env("cni-bin-file", ""),
        help="the CNI plugin binary the chart installed on the host, removed by cleanup "
        "(empty = none)",
    )
    p.add_argument(
        "--cni-conf-file",
        default=_env("cni-conf-file", ""),
        help="the conflist the chart installed on the host (cni.mode=primary), removed by "
        "cleanup if it is Voile's (empty = none)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voile-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voile-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent of one host")
    run.add_argument("--node", default=_env("node"), required=_env("node") is None)
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
    run.add_argument(
        "--lease-duration",
        type=int,
        default=int(_env("lease-duration") or 40),
        help="the heartbeat Lease's leaseDurationSeconds: the operator finds the node lost "
        "(its Endpoints NodeLost, peers stop forwarding to it) when the Lease has not been "
        "renewed for this long; several heartbeat intervals",
    )
    run.add_argument(
        "--probe-interval",
        type=float,
        default=float(_env("probe-interval") or 2),
        help="seconds between rounds of data-path probes to the peers of each network (0 = off)",
    )
    run.add_argument(
        "--watchdog-interval",
        type=float,
        default=float(_env("watchdog-interval") or 1),
        help="seconds between health checks of the datapath's daemons (0 = off)",
    )
    run.add_argument(
        "--attach-socket",
        default=_env("attach-socket", DEFAULT_ATTACH_SOCKET),
        help="the local attach API's unix socket (root only; empty = off)",
    )
    run.add_argument(
        "--attach-namespace",
        default=_env("attach-namespace", "default"),
        help="the namespace of Endpoints attached through the socket without one",
    )
    run.add_argument(
        "--docker-plugin-socket",
        default=_env("docker-plugin-socket", DEFAULT_DOCKER_PLUGIN_SOCKET),
        help="serve Docker's network and IPAM driver 'voile' on this socket, in a directory "
        "dockerd reads plugins from (empty = off)",
    )
    run.add_argument(
        "--owner-daemonset",
        default=_env("owner-daemonset", ""),
        help="the DaemonSet (in --namespace) this agent runs in: on SIGTERM, when that "
        "DaemonSet was seen and is now being deleted or gone (helm uninstall), the agent cleans "
        "the host as `voile-agent cleanup` does before it exits; any other stop leaves the "
        "datapath forwarding (empty = never clean on exit)",
    )
    _add_datapath_options(run)
    _add_host_file_options(run)

    cleanup = sub.add_parser("cleanup", help="remove everything the agent made on this host")
    _add_datapath_options(cleanup)
    _add_host_file_options(cleanup)

    dump = sub.add_parser("dump", help="print the running agent's datapath (its local API)")
    dump.add_argument("--attach-socket", default=_env("attach-socket", DEFAULT_ATTACH_SOCKET))
    dump.add_argument("--log-level", default=_env("log-level", "warning"))
    dump.add_argument("--log-format", choices=["text", "json"], default="text")
    return parser


def _dump(args: argparse.Namespace) -> int:
    try:
        status, body = AgentClient(args.attach_socket).request("GET", "/v1/dump")
    except OSError as exc:
        raise VoileError(f"no agent answers on {args.attach_socket}: {exc}") from exc
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def _allowed_dirs(args: argparse.Namespace) -> tuple[str, ...]:
    if args.allowed_netns_dirs:
        return tuple(args.allowed_netns_dirs)
    env = args.env_netns_dirs
    return tuple(env.split(",")) if env else DEFAULT_ALLOWED_NETNS_DIRS


def choose_backend(args: argparse.Namespace) -> str:
    """``auto``: Open vSwitch where it can forward in the kernel (the openvswitch module is
    loaded) or was asked for its userspace datapath (--datapath-type netdev), else eBPF."""
    if args.datapath != "auto":
        return str(args.datapath)
    if args.datapath_type == DatapathType.NETDEV.value or OVS_MODULE.exists():
        return "ovs"
    return "ebpf"


def build_datapath(args: argparse.Namespace) -> Datapath:
    """The backend the flags choose; the only place that knows the backends."""
    backend = choose_backend(args)
    if args.datapath == "auto":
        log.info("datapath auto: chose %s", backend)
    if backend == "null":
        return NullDatapath(vtep_ip=args.vtep_ip or "198.18.0.1")
    if backend == "ebpf":
        datapath = EbpfDatapath(
            EbpfSettings(
                vtep_ip=args.vtep_ip,
                vtep_interface=args.vtep_interface,
                bpffs=args.bpffs,
                vxlan_port=args.vxlan_port,
                allowed_netns_dirs=_allowed_dirs(args),
                offload=args.offload == "on",
                bpf_object=args.bpf_object,
            )
        )
        if args.command == "run":
            prometheus_client.REGISTRY.register(datapath.collector())
        return datapath
    if len(args.tunnel_port) > 15 or len(args.bridge) > 15:
        raise VoileError("--tunnel-port and --bridge must be at most 15 characters")
    return OvsDatapath(
        OvsSettings(
            bridge=args.bridge,
            datapath_type=DatapathType(args.datapath_type),
            vxlan_port=args.vxlan_port,
            tunnel_port=args.tunnel_port,
            ovsdb=args.ovsdb,
            ovs_rundir=args.ovs_rundir,
            underlay_interface=args.underlay_interface,
            underlay_bridge=args.underlay_bridge,
            vtep_ip=args.vtep_ip,
            vtep_interface=args.vtep_interface,
            allowed_netns_dirs=_allowed_dirs(args),
        )
    )


async def _run(args: argparse.Namespace) -> int:
    settings = AgentSettings(
        node=args.node,
        resync_period=args.resync_period,
        namespace=args.namespace,
        heartbeat_interval=args.heartbeat_interval,
        lease_duration=args.lease_duration,
        probe_interval=args.probe_interval,
        watchdog_interval=args.watchdog_interval,
    )
    if not args.vtep_ip and not args.vtep_interface:
        raise VoileError("give --vtep-ip or --vtep-interface")
    datapath = build_datapath(args)
    metrics = MetricsServer(args.metrics_port).start() if args.metrics_port else None
    if metrics is not None:
        log.info("metrics served port=%s", metrics.port)
    client = kube.KubeClient.from_config(args.kubeconfig, field_manager=FIELD_MANAGER)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Leave the datapath as it is: flows keep forwarding while the agent is away.
        loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    agent = Agent(settings, client, datapath)
    owner = (
        OwnerWatch(client, namespace=args.namespace, name=args.owner_daemonset)
        if args.owner_daemonset
        else None
    )
    owner_task = asyncio.create_task(owner.run(), name="owner-watch") if owner else None
    pulse = Pulse()
    agent.view.listeners.append(pulse.fire)
    servers: list[LocalApiServer | DockerPluginServer] = []
    janitor: asyncio.Task[None] | None = None
    if args.attach_socket:
        allowed = _allowed_dirs(args)
        service = AttachService(
            agent=agent,
            client=client,
            node=args.node,
            namespace=args.attach_namespace,
            check_netns=lambda path: check_netns(path, allowed),
            pulse=pulse,
        )
        servers.append(LocalApiServer(service, args.attach_socket))
    if args.docker_plugin_socket:
        driver = DockerDriver(
            agent=agent,
            client=client,
            source=AgentSource(agent, pulse),
            node=args.node,
            namespace=args.attach_namespace,
            store=NetworkStore(Path(args.state_dir)),
        )
        driver.load()
        servers.append(DockerPluginServer(driver, args.docker_plugin_socket))
    for server in servers:
        await server.start()
    if args.attach_socket:
        janitor = asyncio.create_task(
            Janitor(service, args.cni_spool_dir or None).run(), name="cni-janitor"
        )
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("agent stopping")
    finally:
        if janitor is not None:
            janitor.cancel()
        for server in servers:
            await server.stop()
        if owner_task is not None:
            owner_task.cancel()
        if owner is not None and await owner.uninstalling():
            log.info("daemonset %s is gone: uninstall, cleaning the host", args.owner_daemonset)
            await _clean_host(args, datapath)
        else:
            log.info("datapath left in place")
        await datapath.close()
        await client.close()
        if metrics is not None:
            metrics.close()
    return 0


def _remove_host_files(args: argparse.Namespace) -> dict[str, int]:
    """The agent's files on the host (host/files.py). Idempotent."""
    removed = {"files": 0, "directories": 0}
    if args.cni_bin_file:
        removed["files"] += files.remove_file(Path(args.cni_bin_file))
    if args.cni_conf_file:
        removed["files"] += files.remove_conflist(Path(args.cni_conf_file))
    if args.cni_spool_dir:
        spool = Path(args.cni_spool_dir)
        removed["files"] += files.remove_matching(
            spool, ["*.json", "*" + INVALID_SUFFIX, ".pending-*"]
        )
        removed["directories"] += files.remove_empty_dir(spool)
    if args.state_dir:
        state = Path(args.state_dir)
        removed["files"] += files.remove_matching(state, [NETWORK_STORE_FILE])
        removed["directories"] += files.remove_empty_dir(state)
    return removed


async def _clean_host(args: argparse.Namespace, datapath: Datapath) -> None:
    """Everything the agent made on this host: the datapath's (its cleanup()), then its files.
    Idempotent."""
    removed = await datapath.cleanup()
    removed.update(await asyncio.to_thread(_remove_host_files, args))
    log.info("cleanup done %s", " ".join(f"{k}={v}" for k, v in removed.items()))


async def _cleanup(args: argparse.Namespace) -> int:
    datapath = build_datapath(args)
    try:
        await _clean_host(args, datapath)
    finally:
        await datapath.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "dump":
            return _dump(args)
        return asyncio.run(_cleanup(args))
    except VoileError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
