"""The user CLI: ``voile controlplane up|down|status`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voile import __version__
from voile.errors import VoileError


def _controlplane(args: argparse.Namespace) -> int:
    from voile.controlplane import ControlPlane

    plane = ControlPlane(Path(args.dir) if args.dir else None)
    if args.action == "up":
        endpoints = plane.start()
        print(
            f"# kube-apiserver at {endpoints.server}, files under {endpoints.directory}",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={endpoints.kubeconfig}")
    elif args.action == "down":
        plane.stop()
        print(f"# control plane stopped, {plane.directory} removed", file=sys.stderr)
    else:
        running = plane.running()
        if running is None:
            print("control plane: not running")
            return 1
        print(f"control plane: running at {running.server}")
        print(f"export KUBECONFIG={running.kubeconfig}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from voile.lab.lab import Lab

    lab = Lab()
    if args.action in ("restart", "pause", "resume"):
        return _fault(lab, args)
    if args.action == "up":
        kubeconfig = lab.up(
            hosts=args.hosts, nodes=args.nodes, pod_network=args.pod_network, datapath=args.datapath
        )
        print(f"export KUBECONFIG={kubeconfig}")
    elif args.action == "down":
        lab.down()
        print("lab: down, nothing left", file=sys.stderr)
    elif args.action == "attach":
        address = lab.attach(args.host, args.name, args.network, args.ip, timeout=args.timeout)
        print(f"{args.name}: attached on {args.host} to {args.network}", file=sys.stderr)
        print(address)
    elif args.action == "detach":
        lab.detach(args.name)
    elif args.action == "remove-host":
        lab.remove_host(args.host)
        print(f"{args.host}: removed; `voile lab up` makes it again", file=sys.stderr)
    elif args.action == "exec":
        argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            print("voile lab exec NAME -- CMD...", file=sys.stderr)
            return 2
        return lab.exec(args.name, argv)
    elif args.action == "docker":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            print("voile lab docker HOST -- ARGS...", file=sys.stderr)
            return 2
        return lab.docker(args.host, argv)
    elif args.action == "crictl":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return lab.crictl(args.host, argv)
    elif args.action == "status":
        table, ok = lab.status()
        print(table, end="")
        return 0 if ok else 1
    elif args.action == "podman":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            print("voile lab podman HOST -- ARGS...", file=sys.stderr)
            return 2
        return lab.podman(args.host).call(argv)
    elif args.action == "cni-conf":
        print(json.dumps(lab.cni_conf(args.host, args.network), indent=2))
    elif args.action == "cni-path":
        from voile.lab import cni

        print(cni.plugin().parent)
    return 0


def _fault(lab: Any, args: argparse.Namespace) -> int:
    import signal

    from voile.lab import faults

    component = args.component
    if component is None:
        if args.target != "controlplane" or args.action != "restart":
            print(f"voile lab {args.action} {args.target} COMPONENT", file=sys.stderr)
            return 2
        for part in ("etcd", "apiserver"):
            pid = faults.restart(lab, "controlplane", part, sig=signal.SIGTERM)
            print(f"controlplane {part}: restarted, pid {pid}", file=sys.stderr)
        return 0
    if args.action == "restart":
        sig = signal.Signals[f"SIG{args.signal.upper().removeprefix('SIG')}"]
        pid = faults.restart(lab, args.target, component, sig=sig)
    elif args.action == "pause":
        pid = faults.pause(lab, args.target, component)
    else:
        pid = faults.resume(lab, args.target, component)
    done = {"restart": "restarted", "pause": "paused", "resume": "resumed"}[args.action]
    print(f"{args.target} {component}: {done}, pid {pid}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voile", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("controlplane", help="a real etcd + kube-apiserver on loopback")
    cp.add_argument("action", choices=["up", "down", "status"])
    cp.add_argument("--dir", help="state directory (default /tmp/voile-$UID/controlplane)")
    cp.set_defaults(func=_controlplane)

    lab = sub.add_parser("lab", help="a multi-host Voile on this machine (root)")
    lab_sub = lab.add_subparsers(dest="action", required=True)
    up = lab_sub.add_parser("up", help="start (or complete) the lab; prints export KUBECONFIG=...")
    up.add_argument("--hosts", type=int, default=3, help="number of simulated hosts (default 3)")
    up.add_argument(
        "--nodes",
        action="store_true",
        help="make every host a Kubernetes node too (containerd + kubelet, Voile as its CNI)",
    )
    up.add_argument(
        "--pod-network",
        help="the OverlayNetwork of Pods without the annotation voile.dev/network (default blue)",
    )
    up.add_argument(
        "--datapath",
        choices=["auto", "ovs", "ebpf"],
        default="auto",
        help="the hosts' datapath: ebpf (tc programs, the kernel's underlay), ovs (userspace "
        "OVS per host), auto (ebpf where the kernel runs it, else ovs; the default)",
    )
    lab_sub.add_parser("down", help="remove everything the lab created")
    lab_sub.add_parser("status", help="hosts, networks and endpoints; non-zero if not all Ready")
    attach = lab_sub.add_parser("attach", help="a container-like namespace on HOST in NETWORK")
    attach.add_argument("host")
    attach.add_argument("name")
    attach.add_argument("--network", required=True)
    attach.add_argument("--ip", help="a static address inside the network")
    attach.add_argument("--timeout", type=float, default=60.0)
    detach = lab_sub.add_parser("detach", help="delete an attached namespace and its Endpoint")
    detach.add_argument("name")
    ex = lab_sub.add_parser("exec", help="run a command inside an attached namespace")
    ex.add_argument("name")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    dk = lab_sub.add_parser(
        "docker", help="the docker CLI against HOST's dockerd (started on first use)"
    )
    dk.add_argument("host")
    dk.add_argument("argv", nargs=argparse.REMAINDER)
    pm = lab_sub.add_parser(
        "podman", help="run podman as HOST's runtime (CNI: one voile network per OverlayNetwork)"
    )
    pm.add_argument("host")
    pm.add_argument("argv", nargs=argparse.REMAINDER)
    conf = lab_sub.add_parser("cni-conf", help="print the conflist for HOST and NETWORK")
    conf.add_argument("host")
    conf.add_argument("network")
    lab_sub.add_parser("cni-path", help="print the directory holding the voile CNI plugin")
    rm = lab_sub.add_parser(
        "remove-host",
        help="the host dies: its agent, OVS daemons and namespace destroyed (its Endpoints "
        "stay); `voile lab up --hosts N` makes it again",
    )
    rm.add_argument("host")
    cri = lab_sub.add_parser("crictl", help="crictl against HOST's containerd (lab up --nodes)")
    cri.add_argument("host")
    cri.add_argument("argv", nargs=argparse.REMAINDER)
    for action, text in {
        "restart": "kill a component (--signal, default KILL) and wait until it runs again",
        "pause": "SIGSTOP a component: it answers nothing until resume",
        "resume": "SIGCONT a paused component",
    }.items():
        fault = lab_sub.add_parser(
            action,
            help=f"{text}: HOST ovsdb|vswitchd|agent, or controlplane [apiserver|etcd]",
        )
        fault.add_argument("target", help="host-N or controlplane")
        fault.add_argument("component", nargs="?", help="ovsdb, vswitchd, agent; apiserver, etcd")
        if action == "restart":
            fault.add_argument("--signal", default="KILL", help="KILL (default), TERM, ...")
    lab.set_defaults(func=_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except VoileError as exc:
        print(f"voile: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
