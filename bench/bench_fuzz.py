"""Fuzz a real agent's doors: 10,000 generated requests each to the local attach API, the Docker
driver, the metrics port and the CNI plugin (tests/fuzzing.py: hypothesis, garbage to
well-formed requests).

One-host lab (own run id and underlay). Checks what must hold: no server error leaking a
traceback, an answer to every complete request, the agent never restarted and still answering,
nothing created (Endpoints, IPClaims, bridge ports, the agent's state files unchanged); the
metrics port answers a 4xx to everything but `GET /metrics`, and the agent holds no more fds or
threads after it than before. Baselines in the same run: as many valid `GET /v1/version`
requests on the local API's socket, and as many valid `GET /metrics`; prints the request rates
and their ratios.

Usage (root): .venv/bin/python bench/bench_fuzz.py [--requests 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuzzing
from voile import processes
from voile.lab import cni, faults
from voile.lab.host import run_id
from voile.lab.inventory import of_host
from voile.lab.lab import AGENT_METRICS_PORT, Lab
from voile.lab.measure import free_octet


def kubectl(lab: Lab, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    return subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def inventory(lab: Lab) -> dict[str, str]:
    """What the fuzzing must not change: the API's objects and the host's whole inventory
    (voile.lab.inventory: links, routes, OVS rows and flows, the agent's files...)."""
    host = lab.host(1)
    return {
        "endpoints": kubectl(lab, "get", "vep", "-A", "-o", "name"),
        "claims": kubectl(lab, "get", "ipclaims", "-o", "name"),
        **{
            name: "\n".join(lines)
            for name, lines in of_host(host, [host.state_dir, host.cni_spool_dir]).sections.items()
        },
    }


def baseline(door: fuzzing.Door, request: bytes, count: int, name: str) -> float:
    """``count`` valid requests to ``door``, each answered 200; their rate."""
    started = time.monotonic()
    for _ in range(count):
        assert fuzzing.send(door, request).status == 200
    rate = count / (time.monotonic() - started)
    print(f"baseline {name}: {count} requests, {rate:.0f}/s")
    return rate


def fuzz_metrics(netns: str, agent: int, count: int) -> bool:
    """The agent's metrics port: baseline, fuzz, fds and threads. True if something failed."""
    door = fuzzing.TcpDoor(AGENT_METRICS_PORT, netns)
    valid = b"GET /metrics HTTP/1.1\r\nHost: v\r\n\r\n"
    base_rate = baseline(door, valid, count, "GET /metrics")
    before = processes.resources(agent)
    started = time.monotonic()
    report = fuzzing.fuzz(door, fuzzing.METRICS_PATHS, count, fuzzing.metrics_verdict)
    rate = report.requests / (time.monotonic() - started)
    after = processes.settled_resources(agent, at_most=before, timeout=15)
    print(
        f"metrics port: {report.requests} fuzzed requests, {rate:.0f}/s "
        f"(x{rate / base_rate:.2f} of the baseline), statuses "
        f"{dict(sorted(report.statuses.items(), key=str))}, slowest {report.slowest:.2f}s, "
        f"{len(report.failures)} failures; agent fds {before.fds} -> {after.fds}, threads "
        f"{before.threads} -> {after.threads}"
    )
    for failure in report.failures[:5]:
        print(f"  {failure}")
    leaked = after.fds > before.fds or after.threads > before.threads
    return bool(report.failures) or report.requests != count or leaked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fuzz needs root", file=sys.stderr)
        return 2
    count = max(10, min(args.requests, 50000))
    failed = False
    with tempfile.TemporaryDirectory(prefix="voile-bench-fuzz-") as tmp:
        lab = Lab(Path(tmp) / "lab", run_id=f"bz{run_id()[:4]}", underlay_octet=free_octet())
        try:
            lab.up(hosts=1, datapath="ovs")  # the figures in docs/faults.md
            host = lab.host(1)
            agent = faults.pid(lab, "host-1", "agent")
            before = inventory(lab)
            sock = str(host.attach_socket)
            version = b"GET /v1/version HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n"
            base_rate = baseline(sock, version, count, "GET /v1/version")
            doors = {
                "local attach API": (sock, fuzzing.LOCAL_API_PATHS),
                "Docker driver": (str(host.docker_plugin_socket), fuzzing.DOCKER_PATHS),
            }
            for door, (path, paths) in doors.items():
                started = time.monotonic()
                report = fuzzing.fuzz(path, paths, count)
                rate = report.requests / (time.monotonic() - started)
                print(
                    f"{door}: {report.requests} fuzzed requests, {rate:.0f}/s "
                    f"(x{rate / base_rate:.2f} of the baseline), statuses "
                    f"{dict(sorted(report.statuses.items(), key=str))}, slowest "
                    f"{report.slowest:.2f}s, {len(report.failures)} failures"
                )
                for failure in report.failures[:5]:
                    print(f"  {failure}")
                failed |= bool(report.failures) or report.requests != count
            failed |= fuzz_metrics(host.netns_path, agent, count)
            started = time.monotonic()
            conf = lab.cni_conf("host-1", "fz-net")["plugins"][0]
            report = fuzzing.fuzz_cni(str(cni.plugin()), conf, count)
            rate = report.requests / (time.monotonic() - started)
            print(
                f"CNI plugin: {report.requests} fuzzed invocations, {rate:.0f}/s, exit codes "
                f"{dict(report.statuses)}, slowest {report.slowest:.2f}s, "
                f"{len(report.failures)} failures"
            )
            for failure in report.failures[:5]:
                print(f"  {failure}")
            failed |= bool(report.failures) or report.requests != count
            after = inventory(lab)
            same_agent = faults.pid(lab, "host-1", "agent") == agent
            changed = [k for k in before if before[k] != after[k]]
            print(f"agent restarted: {not same_agent}; changed by the fuzzing: {changed or 'none'}")
            failed |= not same_agent or bool(changed)
        finally:
            lab.down()
    return 1 if failed else 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
