"""Pods: created until their first successful ping across nodes, through the real chain (API
server -> kubelet -> containerd -> CNI -> the voile plugin -> the agent), beside the same Pods on
a node whose CNI is the reference bridge plugin, in the same run.

Each sample creates a Pod (bound to its node: there is no scheduler) whose container pings a
probe Pod until the first reply and then prints one line; the time is from the create request to
the timestamp containerd gave that line (the kubelet's log API with timestamps, nanoseconds, the
machine's clock). So it holds the API server, the kubelet's sync, the sandbox, the CNI ADD, the
container's start and the first ping; Kubernetes' pod-startup SLO (p99 <= 5 s, without image
pulls) is about the same span up to the Pod running. Voile: the probe on host-1, the samples on
host-2 (one network, VXLAN between the nodes: ADD = the agent's local API, the operator's
allocation, plumbing, flows on both hosts). Baseline: host-3's node with the reference `bridge`
plugin and `host-local` IPAM (containernetworking-plugins), probe and samples on host-3 (a bridge
has no way across nodes). The two kinds alternate, so both see the same machine load.

Bounded: N samples of each (default 20), 60 s per sample, 20 minutes overall. Root:
    .venv/bin/python bench/bench_pods.py [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voile import kube
from voile.lab import images
from voile.lab.host import run_id
from voile.lab.lab import Lab
from voile.lab.measure import free_octet, percentile
from voile.lab.node import bridge_conflist, wait_all

PER_SAMPLE_LIMIT = 60.0
OVERALL_LIMIT = 20 * 60.0
SLO_P99 = 5.0
NETWORK, VOILE_CIDR = "bench-pods", "198.19.22.0/24"
BRIDGE_SUBNET = "198.19.23.0/24"
PODS = kube.path("", "v1", "pods", namespace="default")


def pod(name: str, node: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "bb",
                    "image": images.BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                }
            ],
        },
    }


IDLE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


async def running_ip(client: kube.KubeClient, name: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = await client.get(kube.path("", "v1", "pods", namespace="default", name=name))
        status = (obj or {}).get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            return str(status["podIP"])
        await asyncio.sleep(0.2)
    raise TimeoutError(f"probe {name} not running")


async def first_line_at(client: kube.KubeClient, name: str, deadline: float) -> tuple[float, int]:
    """The wall-clock time containerd stamped on the container's first output line, and the
    number of pings that went unanswered before."""
    url = kube.path("", "v1", "pods", namespace="default", name=name) + "/log"
    while time.monotonic() < deadline:
        try:
            text = await client.get_text(url, params={"timestamps": "true"})
        except kube.ApiError:
            text = ""  # not started yet: the log is not there
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            word, _, missed = rest.strip().partition(" ")
            if word == "reached":
                when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                return when, int(missed or 0)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{name}: no first ping within {PER_SAMPLE_LIMIT:.0f}s")


async def sample(client: kube.KubeClient, name: str, node: str, target: str) -> tuple[float, int]:
    script = (  # the line says how many pings went unanswered first (each waits up to 1 s)
        f"n=0; until ping -c 1 -W 1 {target} >/dev/null 2>&1; do n=$((n+1)); usleep 20000; done; "
        f"echo reached $n; {IDLE}"
    )
    started = time.time()
    await client.create(PODS, pod(name, node, script))
    try:
        reached, missed = await first_line_at(client, name, time.monotonic() + PER_SAMPLE_LIMIT)
    finally:
        await client.delete(kube.path("", "v1", "pods", namespace="default", name=name))
        deadline = time.monotonic() + PER_SAMPLE_LIMIT  # gone (CNI DEL) before the next one
        while time.monotonic() < deadline:
            if (
                await client.get(kube.path("", "v1", "pods", namespace="default", name=name))
                is None
            ):
                break
            await asyncio.sleep(0.2)
    return reached - started, missed


async def run(lab: Lab, count: int, began: float) -> tuple[list[float], list[float], list[int]]:
    voile: list[float] = []
    bridge: list[float] = []
    missed = [0, 0]  # unanswered first pings, voile and bridge
    async with kube.KubeClient.from_config(str(lab.kubeconfig)) as client:
        await client.create(
            kube.path("voile.dev", "v1alpha1", "overlaynetworks"),
            {
                "apiVersion": "voile.dev/v1alpha1",
                "kind": "OverlayNetwork",
                "metadata": {"name": NETWORK},
                "spec": {"cidr": VOILE_CIDR},
            },
        )
        await client.create(PODS, pod("probe", "host-1", IDLE))
        await client.create(PODS, pod("probe-bridge", "host-3", IDLE))
        probe = await running_ip(client, "probe")
        probe_bridge = await running_ip(client, "probe-bridge")
        for i in range(count):
            if time.monotonic() - began > OVERALL_LIMIT:
                print(f"stopping after {i} rounds: the overall time bound", file=sys.stderr)
                break
            for kind, (values, node, target) in enumerate(
                ((voile, "host-2", probe), (bridge, "host-3", probe_bridge))
            ):
                took, lost = await sample(client, f"{'vb'[kind]}{i}", node, target)
                values.append(took)
                missed[kind] += lost
            print(f"  {i + 1:2d}: voile {voile[-1]:.2f}s  bridge {bridge[-1]:.2f}s", flush=True)
    return voile, bridge, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_pods needs root", file=sys.stderr)
        return 2
    count = max(1, min(args.samples, 100))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voile-bench-pods-") as tmp:
        lab = Lab(Path(tmp) / "lab", run_id=f"bp{run_id()[:4]}", underlay_octet=free_octet())
        try:
            lab.up(hosts=3, nodes=True, pod_network=NETWORK, datapath="ovs")
            baseline = lab.node(3)
            baseline.set_cni(bridge_conflist("bench-bridge", BRIDGE_SUBNET, baseline.directory))
            wait_all([baseline], lab.kubeconfig)
            voile, bridge, missed = asyncio.run(run(lab, count, began))
        finally:
            lab.down()
    if not voile or not bridge:
        print("no samples", file=sys.stderr)
        return 1
    rows = []
    for label, values in (("voile (across nodes)", voile), ("bridge (one node)", bridge)):
        rows.append(
            (label, statistics.median(values), percentile(values, 99), max(values), len(values))
        )
    print(f"\nPod created -> first ping reply, {len(voile)} Pods each (same run, alternating)")
    print(f"{'':22} {'p50':>7} {'p99':>7} {'max':>7}  n")
    for label, p50, p99, top, n in rows:
        print(f"{label:22} {p50:6.2f}s {p99:6.2f}s {top:6.2f}s  {n}")
    (_, v50, v99, _, _), (_, b50, b99, _, _) = rows
    print(f"ratio voile/bridge: p50 {v50 / b50:.2f}x, p99 {v99 / b99:.2f}x")
    print(f"first pings unanswered: voile {missed[0]}, bridge {missed[1]} (each costs up to 1 s)")
    verdict = "within" if v99 <= SLO_P99 else "OUTSIDE"
    print(f"Kubernetes pod-startup SLO (p99 <= {SLO_P99:.0f} s): voile p99 {v99:.2f}s, {verdict}")
    return 0


if __name__ == "__main__":
    from voile.lab.measure import exit_on_sigterm

    exit_on_sigterm()
    sys.exit(main())
