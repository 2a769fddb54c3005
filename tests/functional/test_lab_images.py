"""The lab image builder (voile.lab.images) against the machine's real busybox-static, and the
docker-archives imported by a real, throwaway containerd (its own root, state and socket under
the test's directory; no task is run, so nothing lands in /run or the cgroup tree). About 2 s."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voile.lab import images
from voile.processes import terminate


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_builds_once_and_reproducibly(tmp_path: Path) -> None:
    first, built = images.ensure(tmp_path / "a")
    assert built
    again, built_again = images.ensure(tmp_path / "a")
    assert again == first
    assert not built_again
    other, _ = images.ensure(tmp_path / "b")
    for name in ("rootfs", "busybox_archive", "pause_archive"):
        assert getattr(first, name).read_bytes() == getattr(other, name).read_bytes(), name
    assert first.directory.name == f"busybox-{first.busybox_version.replace(':', '_')}-r1"
    assert [p.name for p in first.directory.parent.iterdir()] == [first.directory.name]


def test_rootfs_has_busybox_and_the_applets(tmp_path: Path) -> None:
    lab, _ = images.ensure(tmp_path)
    members = _members(lab.rootfs)
    assert members["bin/busybox"].isfile()
    assert members["bin/busybox"].mode == 0o755
    for applet in ("bin/sh", "sbin/ip", "bin/ping", "usr/bin/nc", "bin/sleep", "bin/cat",
                   "sbin/ifconfig", "usr/bin/wget"):  # fmt: skip
        assert members[applet].issym(), applet
        assert members[applet].linkname == "/bin/busybox"
    assert members["tmp"].mode == 0o1777
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
    assert b"root:x:0:0:" in _read(lab.rootfs, "etc/passwd")


@pytest.mark.parametrize(
    ("archive", "tag", "entrypoint"),
    [
        ("busybox_archive", images.BUSYBOX_IMAGE, None),
        ("pause_archive", images.PAUSE_IMAGE, list(images.PAUSE_ENTRYPOINT)),
    ],
)
def test_docker_archive_is_consistent(
    tmp_path: Path, archive: str, tag: str, entrypoint: list[str] | None
) -> None:
    lab, _ = images.ensure(tmp_path)
    path: Path = getattr(lab, archive)
    (manifest,) = json.loads(_read(path, "manifest.json"))
    assert manifest["RepoTags"] == [tag]
    config_bytes = _read(path, manifest["Config"])
    assert manifest["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    (layer_name,) = manifest["Layers"]
    layer = _read(path, layer_name)
    assert layer == lab.rootfs.read_bytes()
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()],
    }
    assert config["os"] == "linux"
    assert config["config"].get("Entrypoint") == entrypoint


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("needs root and containerd (make setup installs it)")
    socket = tmp_path / "containerd.sock"
    config = tmp_path / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{tmp_path}/opt"\n'
    )
    with (tmp_path / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(
            ["ctr", "--address", str(socket), "version"], capture_output=True, check=False
        ).returncode:
            assert proc.poll() is None, (tmp_path / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not answer"
            time.sleep(0.05)
        yield socket
    finally:
        terminate(proc.pid)
        proc.wait()


def test_containerd_imports_both_archives(tmp_path: Path, containerd: Path) -> None:
    lab, _ = images.ensure(tmp_path / "cache")
    ctr = ["ctr", "--address", str(containerd), "-n", "k8s.io", "images"]
    for archive in (lab.busybox_archive, lab.pause_archive):
        subprocess.run([*ctr, "import", str(archive)], check=True, capture_output=True)
    names = subprocess.run([*ctr, "ls", "-q"], check=True, capture_output=True, text=True).stdout
    assert {images.BUSYBOX_IMAGE, images.PAUSE_IMAGE} <= set(names.split())
