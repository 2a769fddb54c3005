"""CNI: `podman run` until the container's first successful ping, through Voile's plugin across
hosts, beside podman's own bridge plugin on one host, in the same run.

Each sample starts `podman run --rm` with a container that pings a probe container until the
first reply and then says so on its stdout; the time is from starting podman to that line (so it
holds podman, the CNI ADD, the container's start and the first ping). Voile: the probe on host-1,
the containers on host-2 (one network, VXLAN between hosts: ADD = the agent's local API, the
operator's allocation, plumbing, flows on both hosts). Baseline: the reference `bridge` plugin
with `host-local` IPAM (containernetworking-plugins, what `podman network create` uses), probe
and containers on host-1. The two kinds alternate, so both see the same machine load.

Bounded: N samples of each (default 20), 30 s per sample, 15 minutes overall. Root:
    .venv/bin/python bench/bench_cni.py [--samples 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voile.lab.host import run_id
from voile.lab.lab import Lab
from voile.lab.measure import free_octet, percentile
from voile.lab.podman import IMAGE, Podman

PER_SAMPLE_LIMIT = 30.0
OVERALL_LIMIT = 15 * 60.0
BRIDGE_SUBNET = "198.19.21.0/24"
VOILE_CIDR = "198.19.20.0/24"


def bridge_conflist(runtime: Podman, rid: str) -> None:
    """podman's own bridge network on this host (no masquerade, no firewall plugin: the lab
    never touches a firewall), its IPAM state kept in the host's podman directory."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "bench-bridge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"vbr{rid}"[:15],
                "isGateway": False,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": BRIDGE_SUBNET}]],
                    "dataDir": str(runtime.directory / "ipam"),
                },
            }
        ],
    }
    (runtime.network_dir / "10-bench-bridge.conflist").write_text(json.dumps(conf))


def address(runtime: Podman, name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return runtime.run("inspect", "--format", fmt, name).stdout.strip()


def sample(runtime: Podman, network: str, target: str, name: str) -> float:
    """Seconds from `podman run` to the container's first echo reply from ``target``."""
    script = f"until ping -c 1 -W 1 {target} >/dev/null 2>&1; do usleep 20000; done; echo reached"
    started = time.monotonic()
    proc = subprocess.Popen(
        runtime.argv(
            "run", "--rm", "--name", name, "--network", network, IMAGE, "sh", "-c", script
        ),
        env=runtime.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.monotonic() - started
        if line.strip() != "reached":
            raise RuntimeError(f"{name}: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        if elapsed > PER_SAMPLE_LIMIT:
            raise TimeoutError(f"{name}: {elapsed:.1f}s")
        proc.wait(PER_SAMPLE_LIMIT)  # --rm: removed (CNI DEL) before the next sample
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            runtime.run("rm", "-f", "-t", "0", name, check=False)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cni needs root", file=sys.stderr)
        return 2
    count = max(1, min(args.samples, 100))
    began = time.monotonic()
    rid = f"bc{run_id()[:4]}"
    voile: list[float] = []
    bridge: list[float] = []
    with tempfile.TemporaryDirectory(prefix="voile-bench-cni-") as tmp:
        lab = Lab(Path(tmp) / "lab", run_id=rid, underlay_octet=free_octet())
        try:
            lab.up(hosts=2, datapath="ovs")
            env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
            subprocess.run(
                ["kubectl", "apply", "-f", "-"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
                input=(
                    "apiVersion: voile.dev/v1alpha1\nkind: OverlayNetwork\n"
                    f"metadata: {{name: bench}}\nspec: {{cidr: {VOILE_CIDR}}}\n"
                ),
            )
            one, two = lab.podman("host-1"), lab.podman("host-2")
            bridge_conflist(one, rid)
            one.run("run", "-d", "--name", "probe", "--network", "bench", IMAGE)
            one.run("run", "-d", "--name", "probe-bridge", "--network", "bench-bridge", IMAGE)
            probe, probe_bridge = address(one, "probe"), address(one, "probe-bridge")
            for i in range(count):
                if time.monotonic() - began > OVERALL_LIMIT:
                    print(f"stopped after {i} samples: overall limit", file=sys.stderr)
                    break
                voile.append(sample(two, "bench", probe, f"v{i}"))
                bridge.append(sample(one, "bench-bridge", probe_bridge, f"b{i}"))
        finally:
            lab.down()

    print(f"podman run -> first ping, {len(voile)} containers each")
    print(f"{'':44}{'p50 s':>8}{'p99 s':>8}{'max s':>8}")
    for label, values in (
        ("voile CNI, across hosts (VXLAN)", voile),
        ("podman bridge plugin, one host (baseline)", bridge),
    ):
        print(
            f"{label:44}{statistics.median(values):8.3f}{percentile(values, 99):8.3f}"
            f"{max(values):8.3f}"
        )
    print(
        f"ratio voile/bridge: p50 {statistics.median(voile) / statistics.median(bridge):.2f}x, "
        f"p99 {percentile(voile, 99) / percentile(bridge, 99):.2f}x"
    )
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
