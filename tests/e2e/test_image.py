"""The container image, built as `make image` builds it, and both commands run inside it.

Real: debootstrap, podman (with hack/image/containers.conf: cgroupfs, runc), the Containerfile,
the voile wheel and its dependencies from PyPI. Slow (minutes on a cold machine: the Debian base
is made once and cached as localhost/voile-base:bookworm), so it runs only with VOILE_IMAGE_TEST=1.
The built image is kept (it is what `make image` makes); the containers are removed (--rm).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "image" / "build.sh"
CONTAINERS_CONF = REPO / "hack" / "image" / "containers.conf"

pytestmark = pytest.mark.skipif(
    os.environ.get("VOILE_IMAGE_TEST") != "1", reason="slow: set VOILE_IMAGE_TEST=1"
)


def _version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout.strip().splitlines()[-1]


def _run(image: str, *cmd: str, user: str | None = None) -> str:
    args = ["podman", "run", "--rm", "--network=none"]
    if user:
        args += ["--user", user]
    proc = subprocess.run(
        [*args, image, *cmd],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("command", "user"),
    [("voile-operator", "65532:65532"), ("voile-agent", None)],
    ids=["operator-as-65532", "agent-as-root"],
)
def test_commands_report_their_version(image: str, command: str, user: str | None) -> None:
    """Each command starts in the image, as the user the chart runs it as."""
    assert _run(image, command, "--version", user=user).strip() == f"{command} {_version()}"


def test_agent_tools_are_in_the_image(image: str) -> None:
    """What the agent calls besides Python: ovs-vsctl/ovs-ofctl (OVS 3.1), ip, ethtool."""
    out = _run(image, "sh", "-c", "ovs-ofctl --version && ip -V && ethtool --version")
    assert "Open vSwitch" in out and "iproute2" in out and "ethtool" in out
