"""The user CLI: ``voile controlplane up|down|status`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voile", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("controlplane", help="a real etcd + kube-apiserver on loopback")
    cp.add_argument("action", choices=["up", "down", "status"])
    cp.add_argument("--dir", help="state directory (default /tmp/voile-$UID/controlplane)")
    cp.set_defaults(func=_controlplane)
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
