"""Fixtures for the e2e tier: one real control plane per test session."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from voile.controlplane import ControlPlane, Endpoints


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """etcd + kube-apiserver for the whole session, stopped and removed at the end."""
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        yield plane.start()
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: Endpoints) -> Path:
    return control_plane.kubeconfig


class Kubectl:
    """Runs the real kubectl against the session's API server."""

    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args],
            input=input,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def json(self, *args: str) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.run(*args, "-o", "json").stdout)
        return result


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)
