#!/usr/bin/env python3
"""kubectl voile: see, trace and diagnose Voile overlays.

    kubectl voile status [-A | -n NS]            networks, nodes, endpoints; exit 1 when unhealthy
    kubectl voile trace NS/SRC NS/DST [--protocol icmp|udp|tcp|arp] [--timeout 30] [--keep]
                                                 the path of one packet through both datapaths
    kubectl voile diagnose [-o voile-diagnose.tar.gz] [--agent-socket PATH ...]
                                                 objects, Leases, Events, agents' datapath dumps

One file, Python 3.11 standard library only, talking to the cluster through ``kubectl`` (the
current context, or --kubeconfig/--context): put it on PATH as ``kubectl-voile``. `make setup`
installs it into the virtualenv; `voile lab status` prints the same tables.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GROUP = "voile.dev"
STAGE_GRACE = 5.0  # seconds a trace waits, after its verdict, for the other node's stage
SYSTEM_NAMESPACE = "voile-system"
LEASE_PREFIX = "voile-agent-"
HEARTBEAT_STALE = 60.0

Obj = dict[str, Any]


class Kubectl:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.base = [os.environ.get("KUBECTL", "kubectl")]
        if kubeconfig:
            self.base += ["--kubeconfig", kubeconfig]
        if context:
            self.base += ["--context", context]

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.base, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def items(self, *args: str) -> list[Obj]:
        out = self.run("get", *args, "-o", "json")
        body = json.loads(out or "{}")
        return list(body.get("items", [body] if body.get("kind") else []))

    def get(self, *args: str) -> Obj | None:
        proc = subprocess.run(
            [*self.base, "get", *args, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise SystemExit(f"kubectl get {' '.join(args)}: {proc.stderr.strip()}")
        result: Obj = json.loads(proc.stdout)
        return result


# -- status --------------------------------------------------------------------------------------


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def age(timestamp: str | None, now: datetime.datetime) -> float | None:
    if not timestamp:
        return None
    when = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (now - when).total_seconds()


def table(rows: Sequence[Sequence[object]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def probe_report(lease: Mapping[str, Any]) -> Mapping[str, Any]:
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(f"{GROUP}/probes")
    try:
        return dict(json.loads(raw)) if raw else {}
    except ValueError:
        return {}


def render_status(
    networks: Iterable[Obj],
    leases: Iterable[Obj],
    endpoints: Iterable[Obj],
    *,
    now: datetime.datetime | None = None,
    hosts: Mapping[str, str] | None = None,
) -> tuple[str, bool]:
    """The three tables and whether everything is healthy. ``hosts`` (name -> process state)
    adds the lab's view of its agent processes."""
    now = now or datetime.datetime.now(datetime.UTC)
    ok = True
    lines: list[str] = []
    by_node = {
        lease["metadata"]["name"].removeprefix(LEASE_PREFIX): lease
        for lease in leases
        if lease["metadata"]["name"].startswith(LEASE_PREFIX)
    }
    vtep_node = {
        ((lease.get("metadata") or {}).get("annotations") or {}).get(f"{GROUP}/vtep"): node
        for node, lease in by_node.items()
    }
    rows: list[tuple[object, ...]] = [("NODE", "VTEP", "DATAPATH", "AGENT", "HEARTBEAT", "PATHS")]
    broken_paths: list[str] = []
    for node in sorted(set(by_node) | set(hosts or {})):
        lease = by_node.get(node, {})
        notes = (lease.get("metadata") or {}).get("annotations") or {}
        seen = age((lease.get("spec") or {}).get("renewTime"), now)
        fresh = seen is not None and seen < HEARTBEAT_STALE
        process = (hosts or {}).get(node, "-")
        ok &= fresh and process in ("-", "running")
        paths = probe_report(lease).get("paths") or []
        bad = [p for p in paths if p.get("state") in ("unreachable", "mtu")]
        ok &= not bad
        for p in bad:
            peer = vtep_node.get(p.get("vtep"), p.get("vtep"))
            broken_paths.append(f"{node} -> {peer} (VNI {p.get('vni')}): {p.get('state')}")
        rows.append(
            (
                node,
                notes.get(f"{GROUP}/vtep", "-"),
                notes.get(f"{GROUP}/datapath", "-"),
                process,
                f"{seen:.0f}s ago" if seen is not None else "none",
                f"{len(paths) - len(bad)} ok, {len(bad)} broken" if paths else "-",
            )
        )
    lines += [*table(rows), ""]
    rows = [("NETWORK", "CIDR", "VNI", "MTU", "ENDPOINTS", "READY", "DATAPATH", "MTU-OK", "NODES")]
    for net in sorted(networks, key=lambda n: n["metadata"]["name"]):
        st = net.get("status") or {}
        ready = condition(net, "Ready").get("status", "Unknown")
        healthy = condition(net, "DataPathHealthy").get("status", "-")
        mtu = condition(net, "MTUVerified").get("status", "-")
        health = st.get("health") or {}
        nodes = (
            f"{health.get('nodesRealized', '-')}/{health.get('nodesExpected', '-')}"
            if health
            else "-"
        )
        ok &= ready == "True" and healthy != "False" and mtu != "False"
        for pair in health.get("brokenPairs") or []:
            broken_paths.append(
                f"{net['metadata']['name']}: {pair.get('from')} -> {pair.get('to')} "
                f"{pair.get('reason')}"
            )
        rows.append(
            (
                net["metadata"]["name"],
                (net.get("spec") or {}).get("cidr", "-"),
                st.get("vni", "-"),
                st.get("mtu", "-"),
                st.get("endpoints", "-"),
                ready,
                healthy,
                mtu,
                nodes,
            )
        )
    lines += [*table(rows), ""]
    rows = [("ENDPOINT", "NODE", "NETWORK", "IP", "MAC", "READY", "DATAPATH", "MTU-OK")]
    for ep in sorted(endpoints, key=lambda e: (e["metadata"]["namespace"], e["metadata"]["name"])):
        st = ep.get("status") or {}
        ready = condition(ep, "Ready").get("status", "Unknown")
        healthy = condition(ep, "DataPathHealthy").get("status", "-")
        mtu = condition(ep, "MTUVerified").get("status", "-")
        ok &= ready == "True" and healthy != "False" and mtu != "False"
        rows.append(
            (
                f"{ep['metadata']['namespace']}/{ep['metadata']['name']}",
                ep["spec"]["node"],
                ep["spec"]["network"],
                st.get("ip", "-"),
                st.get("mac", "-"),
                ready,
                healthy,
                mtu,
            )
        )
    lines += table(rows)
    if broken_paths:
        lines += ["", "BROKEN PATHS", *(f"  {b}" for b in sorted(set(broken_paths)))]
    return "\n".join(lines) + "\n", ok


def cmd_status(k: Kubectl, args: argparse.Namespace) -> int:
    scope = ["-A"] if args.namespace is None else ["-n", args.namespace]
    text, ok = render_status(
        k.items(f"overlaynetworks.{GROUP}"),
        k.items("leases", "-n", args.voile_namespace),
        k.items(f"endpoints.{GROUP}", *scope),
    )
    sys.stdout.write(text)
    return 0 if ok else 1


# -- trace ---------------------------------------------------------------------------------------


def _ref(text: str, default_namespace: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    return namespace or default_namespace, name


def render_trace(trace: Mapping[str, Any]) -> str:
    spec, st = trace.get("spec") or {}, trace.get("status") or {}
    src, dst = spec.get("source") or {}, spec.get("destination") or {}
    lines = [
        f"trace {src.get('namespace')}/{src.get('name')} -> {dst.get('namespace')}/"
        f"{dst.get('name')} ({spec.get('protocol', 'icmp')})"
    ]
    for stage in sorted(st.get("stages") or [], key=lambda s: s.get("stage") != "source"):
        lines.append(
            f"\n[{stage.get('stage')}] node {stage.get('node')} ({stage.get('datapath')} datapath)"
        )
        for i, hop in enumerate(stage.get("hops") or [], start=1):
            lines.append(f"  {i:2}. {hop}")
        result = stage.get("result")
        detail = stage.get("message") or ""
        if result == "dropped" and stage.get("rule"):
            detail = f"dropped by {stage['rule']}" + (f" ({detail})" if detail else "")
        lines.append(f"  => {result}: {detail}")
    verdict = st.get("verdict") or "Pending"
    word = "delivered" if verdict == "Delivered" else verdict
    lines.append(f"\nverdict: {word}" + (f" ({st['message']})" if st.get("message") else ""))
    return "\n".join(lines) + "\n"


def cmd_trace(k: Kubectl, args: argparse.Namespace) -> int:
    default_ns = args.namespace or "default"
    refs = [_ref(args.source, default_ns), _ref(args.destination, default_ns)]
    eps = []
    for namespace, name in refs:
        ep = k.get(f"endpoints.{GROUP}", name, "-n", namespace)
        if ep is None:
            sys.stderr.write(f"no Endpoint {namespace}/{name}\n")
            return 2
        eps.append(ep)
    name = f"trace-{secrets.token_hex(4)}"
    body = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Trace",
        "metadata": {"name": name},
        "spec": {
            "source": {"namespace": refs[0][0], "name": refs[0][1]},
            "destination": {"namespace": refs[1][0], "name": refs[1][1]},
            "sourceNode": eps[0]["spec"]["node"],
            "destinationNode": eps[1]["spec"]["node"],
            "protocol": args.protocol,
        },
    }
    k.run("create", "-f", "-", input=json.dumps(body))
    try:
        deadline = time.monotonic() + args.timeout
        # A verdict can come before the other node's stage (the source already shows the
        # packet never goes there): give that stage a few seconds more, for the whole path.
        nodes = 1 if eps[0]["spec"]["node"] == eps[1]["spec"]["node"] else 2
        trace: Obj | None = None
        while time.monotonic() < deadline:
            trace = k.get(f"traces.{GROUP}", name)
            status = (trace or {}).get("status") or {}
            if status.get("verdict"):
                if len(status.get("stages") or ()) >= nodes:
                    break
                deadline = min(deadline, time.monotonic() + STAGE_GRACE)
            time.sleep(0.3)
        sys.stdout.write(render_trace(trace or body))
        verdict = ((trace or {}).get("status") or {}).get("verdict")
        if verdict is None:
            sys.stderr.write(f"no verdict within {args.timeout:.0f}s (are the agents running?)\n")
            return 2
        return 0 if verdict == "Delivered" else 1
    finally:
        if not args.keep:
            k.run("delete", f"traces.{GROUP}", name, "--wait=false", check=False)


# -- diagnose ------------------------------------------------------------------------------------


def agent_dump(socket_path: str, timeout: float = 30.0) -> str:
    """GET /v1/dump from a local agent's socket (the host must be the agent's)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(b"GET /v1/dump HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    return raw.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def cmd_diagnose(k: Kubectl, args: argparse.Namespace) -> int:
    files: dict[str, str] = {}
    for kind in (
        f"overlaynetworks.{GROUP}",
        f"endpoints.{GROUP}",
        f"ipclaims.{GROUP}",
        f"vniclaims.{GROUP}",
        f"traces.{GROUP}",
    ):
        files[f"objects/{kind}.json"] = k.run("get", kind, "-A", "-o", "json", check=False)
    files["objects/leases.json"] = k.run(
        "get", "leases", "-n", args.voile_namespace, "-o", "json", check=False
    )
    files["events.txt"] = k.run("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)
    text, _ = render_status(
        json.loads(files[f"objects/overlaynetworks.{GROUP}.json"] or "{}").get("items", []),
        json.loads(files["objects/leases.json"] or "{}").get("items", []),
        json.loads(files[f"objects/endpoints.{GROUP}.json"] or "{}").get("items", []),
    )
    files["status.txt"] = text
    pods = k.items("pods", "-n", args.voile_namespace, "-l", "app.kubernetes.io/component=agent")
    for pod in pods:
        pname = pod["metadata"]["name"]
        files[f"agents/{pname}/log.txt"] = k.run(
            "logs", "-n", args.voile_namespace, pname, "--tail=2000", check=False
        )
        files[f"agents/{pname}/dump.json"] = k.run(
            "exec", "-n", args.voile_namespace, pname, "--", "voile-agent", "dump", check=False
        )
    for i, path in enumerate(args.agent_socket or []):
        try:
            files[f"agents/local-{i}/dump.json"] = agent_dump(path)
        except OSError as exc:
            files[f"agents/local-{i}/dump.json"] = json.dumps({"error": f"{path}: {exc}"})
    with tarfile.open(args.output, "w:gz") as tar:
        for name, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(f"voile-diagnose/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    print(f"wrote {args.output} ({len(files)} files)")
    return 0


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl voile", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig")
    p.add_argument("--context")
    p.add_argument("-n", "--namespace")
    p.add_argument("--voile-namespace", default=SYSTEM_NAMESPACE)
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="networks, nodes and endpoints; exit 1 when unhealthy")
    st.add_argument("-A", "--all-namespaces", action="store_true")
    tr = sub.add_parser("trace", help="the path of a packet from one Endpoint to another")
    tr.add_argument("source", help="NAMESPACE/NAME of the sending Endpoint")
    tr.add_argument("destination", help="NAMESPACE/NAME of the receiving Endpoint")
    tr.add_argument("--protocol", choices=["icmp", "udp", "tcp", "arp"], default="icmp")
    tr.add_argument("--timeout", type=float, default=30.0)
    tr.add_argument("--keep", action="store_true", help="keep the Trace object")
    dg = sub.add_parser("diagnose", help="gather everything into one archive")
    dg.add_argument("-o", "--output", default="voile-diagnose.tar.gz")
    dg.add_argument(
        "--agent-socket", action="append", help="also ask a local agent's socket for its dump"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    k = Kubectl(args.kubeconfig, args.context)
    if args.command == "status":
        if getattr(args, "all_namespaces", False):
            args.namespace = None
        return cmd_status(k, args)
    if args.command == "trace":
        return cmd_trace(k, args)
    return cmd_diagnose(k, args)


if __name__ == "__main__":
    sys.exit(main())
