"""Docker: `docker run` until the container's first successful ping, through Voile's libnetwork
driver across hosts, beside Docker's own bridge driver on one host, in the same run.

Each sample starts `docker run --rm` with a container that pings a probe container until the
first reply and then says so on its stdout; the time is from starting the docker CLI to that
line (so it holds Docker, the IPAM's allocation and the driver's calls, the container's start and
the first ping). Voile: the probe on host-1, the containers on host-2 (one OverlayNetwork,
VXLAN between hosts: RequestAddress = an Endpoint allocated by the operator and plumbed by the
agent; CreateEndpoint, Join; flows on both hosts). Baseline: a user-defined network of Docker's
`bridge` driver (no iptables, no masquerade), probe and containers on host-1. The two kinds
alternate, so both see the same machine load. The removal (`--rm`: Leave, DeleteEndpoint,
ReleaseAddress) is timed apart.

Bounded: N samples of each (default 20), 30 s per sample, 15 minutes overall. Root:
    .venv/bin/python bench/bench_docker.py [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voile.lab.docker import DOCKER_CLI, IMAGE, HostDocker
from voile.lab.host import run_id
from voile.lab.lab import Lab
from voile.lab.measure import free_octet, percentile

PER_SAMPLE_LIMIT = 30.0
OVERALL_LIMIT = 15 * 60.0
VOILE_CIDR = "198.19.22.0/24"
BRIDGE_SUBNET = "198.19.23.0/24"


def address(docker: HostDocker, name: str, network: str) -> str:
    fmt = f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"
    return docker.cli("inspect", "--format", fmt, name).stdout.strip()


def sample(docker: HostDocker, network: str, target: str, name: str) -> tuple[float, float]:
    """Seconds from `docker run` to the container's first echo reply from ``target``, and from
    then until `docker run --rm` has returned (the container and its network released)."""
    script = f"until ping -c 1 -W 1 {target} >/dev/null 2>&1; do usleep 20000; done; echo reached"
    argv = [DOCKER_CLI, "run", "--rm", "--name", name, "--network", network, IMAGE, "sh", "-c"]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*argv, script],
        env=docker.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        reached = time.monotonic()
        if line.strip() != "reached":
            raise RuntimeError(f"{name}: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        if reached - started > PER_SAMPLE_LIMIT:
            raise TimeoutError(f"{name}: {reached - started:.1f}s")
        proc.wait(PER_SAMPLE_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            docker.cli("rm", "-f", name, check=False)
    return reached - started, time.monotonic() - reached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_docker needs root", file=sys.stderr)
        return 2
    count = max(1, min(args.samples, 100))
    began = time.monotonic()
    rid = f"bd{run_id()[:4]}"
    voile: list[tuple[float, float]] = []
    bridge: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="voile-bench-docker-") as tmp:
        lab = Lab(Path(tmp) / "lab", run_id=rid, underlay_octet=free_octet())
        try:
            lab.up(hosts=2, datapath="ovs")
            subprocess.run(
                ["kubectl", "apply", "-f", "-"],
                env={**os.environ, "KUBECONFIG": str(lab.kubeconfig)},
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
                input=(
                    "apiVersion: voile.dev/v1alpha1\nkind: OverlayNetwork\n"
                    f"metadata: {{name: bench}}\nspec: {{cidr: {VOILE_CIDR}}}\n"
                ),
            )
            one, two = lab.docker_of("host-1"), lab.docker_of("host-2")
            for docker in (one, two):
                docker.cli("network", "create", "-d", "voile", "--ipam-driver", "voile",
                           "--ipam-opt", "voile.dev/network=bench", "bench")  # fmt: skip
            one.cli("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET,
                    "-o", f"com.docker.network.bridge.name={f'vbr{rid}'[:15]}",
                    "benchbr")  # fmt: skip
            for network in ("bench", "benchbr"):
                one.cli("run", "-d", "--name", f"probe-{network}", "--network", network, IMAGE,
                        "sleep", "3600")  # fmt: skip
            probe = address(one, "probe-bench", "bench")
            probe_bridge = address(one, "probe-benchbr", "benchbr")
            for i in range(count):
                if time.monotonic() - began > OVERALL_LIMIT:
                    print(f"stopped after {i} samples: overall limit", file=sys.stderr)
                    break
                voile.append(sample(two, "bench", probe, f"v{i}"))
                bridge.append(sample(one, "benchbr", probe_bridge, f"b{i}"))
        finally:
            lab.down()

    print(f"docker run -> first ping, {len(voile)} containers each")
    print(f"{'':46}{'p50 s':>8}{'p99 s':>8}{'max s':>8}{'rm p50':>8}")
    for label, values in (
        ("voile driver + IPAM, across hosts (VXLAN)", voile),
        ("docker bridge driver, one host (baseline)", bridge),
    ):
        first = [v[0] for v in values]
        print(
            f"{label:46}{statistics.median(first):8.3f}{percentile(first, 99):8.3f}"
            f"{max(first):8.3f}{statistics.median(v[1] for v in values):8.3f}"
        )
    v_first, b_first = [v[0] for v in voile], [v[0] for v in bridge]
    print(
        f"ratio voile/bridge: p50 {statistics.median(v_first) / statistics.median(b_first):.2f}x, "
        f"p99 {percentile(v_first, 99) / percentile(b_first, 99):.2f}x"
    )
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
