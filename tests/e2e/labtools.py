"""Helpers the lab's e2e modules share: kubectl and the API client against one lab."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import venv_bin
from voile import kube
from voile.lab.lab import Lab


def kubectl(
    lab: Lab, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
) -> str:
    """kubectl against the lab's API server; its stdout. With ``check`` a non-zero exit fails
    the test with kubectl's stderr."""
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    proc = subprocess.run(
        ["kubectl", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def api(lab: Lab, fn: Callable[[kube.KubeClient], Awaitable[Any]]) -> Any:
    """Run ``fn`` with a client of the lab's API server, in a fresh event loop."""

    async def go() -> Any:
        async with kube.KubeClient.from_config(str(lab.kubeconfig)) as client:
            return await fn(client)

    return asyncio.run(go())


def kubectl_voile(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl voile ARGS` against the lab, as a user runs it (never raises on exit codes)."""
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    return subprocess.run(
        [venv_bin("kubectl-voile"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ping(lab: Lab, source: str, address: str, count: int = 3) -> bool:
    """``count`` pings from the attached container ``source`` to ``address`` all answered."""
    argv = ["ip", "netns", "exec", lab.container_netns(source), "ping", "-c", str(count), "-W", "2"]
    return (
        subprocess.run([*argv, address], capture_output=True, timeout=60, check=False).returncode
        == 0
    )
