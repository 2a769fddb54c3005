"""Voile's CNI plugin as the lab, the tests and the benchmarks use it: the static binary that
hack/cni/build.sh builds (once per source hash, cached), and the conflists that point a runtime
(podman, any libcni client) at one simulated host's agent (docs/cni.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from voile.errors import LabError

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "cni" / "build.sh"
PLUGIN_TYPE = "voile"  # the binary's name is the plugin type
CNI_VERSION = "1.0.0"  # what conflists declare (libcni 1.1 passes it through)
CONFLIST_PREFIX = "50-voile-"


def plugin() -> Path:
    """The plugin binary, built if its sources changed (needs Go then). Its folder is what a
    runtime's CNI_PATH must hold."""
    env = {**os.environ}
    if "VOILE_CACHE" not in env:
        env["VOILE_CACHE"] = str(Path.home() / ".cache" / "voile")
    if not BUILD.exists():
        raise LabError(f"{BUILD} is missing: the lab runs from a Voile checkout")
    proc = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=600, check=False, env=env
    )
    if proc.returncode != 0:
        raise LabError(f"building the CNI plugin failed: {proc.stderr.strip()}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise LabError(f"the CNI plugin build printed {path}, which is not executable")
    return path


def plugin_conf(
    network: str,
    *,
    socket: str | Path,
    spool_dir: str | Path,
    namespace: str | None = None,
    timeout: float | None = None,
    pod_network_annotation: bool = False,
) -> dict[str, Any]:
    """One ``voile`` entry of a conflist: the network, this host's agent socket and spool.
    ``pod_network_annotation``: ``network`` is only the default of Pods (a kubelet's primary
    network); a Pod's annotation voile.dev/network may choose another."""
    conf: dict[str, Any] = {
        "type": PLUGIN_TYPE,
        "network": network,
        "socket": str(socket),
        "spoolDir": str(spool_dir),
        "capabilities": {"ips": True, "mac": True},
    }
    if namespace:
        conf["namespace"] = namespace
    if timeout is not None:
        conf["timeout"] = timeout
    if pod_network_annotation:
        conf["podNetworkAnnotation"] = True
    return conf


def conflist(
    network: str,
    *,
    socket: str | Path,
    spool_dir: str | Path,
    namespace: str | None = None,
    name: str | None = None,
    pod_network_annotation: bool = False,
) -> dict[str, Any]:
    """The conflist that puts a container on ``network`` through the agent at ``socket``: the
    voile plugin alone (the runtime brings up lo itself)."""
    plugin = plugin_conf(
        network,
        socket=socket,
        spool_dir=spool_dir,
        namespace=namespace,
        pod_network_annotation=pod_network_annotation,
    )
    return {"cniVersion": CNI_VERSION, "name": name or network, "plugins": [plugin]}


def write_conflists(directory: Path, confs: dict[str, dict[str, Any]]) -> None:
    """Make ``directory`` hold exactly these voile conflists (by network): each written
    atomically, those of networks that are gone removed. Other files are left alone."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f"{CONFLIST_PREFIX}{net}.conflist": conf for net, conf in confs.items()}
    for path in directory.glob(f"{CONFLIST_PREFIX}*.conflist"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
    for fname, conf in wanted.items():
        path = directory / fname
        text = json.dumps(conf, indent=2) + "\n"
        if path.exists() and path.read_text() == text:
            continue
        tmp = path.with_name(f".{fname}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
