"""Debian's podman 4.3 as a simulated host's container runtime (docs/cni.md, ../shared notes
"runtimes"): the CNI network backend, runc, cgroupfs, and everything of its own under the
host's directory (storage root, run root, libpod tmp, events log, CNI config dir), so several
hosts (and several labs) share one machine without seeing each other's containers.

podman runs inside the host's network namespace (``nsenter --net``, not ``ip netns exec``: that
would give podman a mount namespace of its own, and the container namespaces it mounts under
/run/netns would not be seen by the agent), so the veths of podman's own bridge plugin land in
the host, and the voile plugin reaches that host's agent through the socket its conflist names.

Nothing here needs a registry: ``localhost/busybox:lab`` is imported from busybox-static
(``voile.lab.images``). Unlike the private-mount-namespace recipe of docs/runtimes.md, podman
shares the machine's mount table here: the agent must see the container namespaces podman
mounts under /run/netns. So ``cleanup`` removes what podman leaves there and in libcni's cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from voile.errors import LabError
from voile.lab import cni, images
from voile.lab.host import SimulatedHost, sh
from voile.processes import alive

IMAGE = images.BUSYBOX_IMAGE
SYSTEM_PLUGINS = Path("/usr/lib/cni")  # containernetworking-plugins: bridge, host-local, ...
CNI_RESULTS = Path("/var/lib/cni/results")  # libcni's cache, shared by every podman here
# podman refuses a run root longer than 50 characters (conmon's socket paths): the run root
# and libpod's tmp of each host live under a short directory of their own.
SHORT_ROOT = Path("/run/voile-podman")
# The image's command: wait until SIGTERM or SIGINT, then exit at once (podman stop takes no 10 s),
# so `podman run -d ... localhost/busybox:lab` keeps a container up.
IMAGE_CMD = list(images.PAUSE_ENTRYPOINT)


class Podman:
    """podman as one simulated host's runtime; everything it keeps lives in ``directory``."""

    def __init__(self, host: SimulatedHost, plugin_dir: Path | None = None) -> None:
        self.host = host
        self.directory = host.directory / "podman"
        self.run_directory = SHORT_ROOT / f"{host.fabric.id}-{host.index}"
        self.plugin_dir = plugin_dir

    # -- paths ---------------------------------------------------------------------------------

    @property
    def network_dir(self) -> Path:
        """The CNI configuration directory (one conflist per network)."""
        return self.directory / "net.d"

    @property
    def conf_file(self) -> Path:
        return self.directory / "containers.conf"

    @property
    def storage_conf(self) -> Path:
        return self.directory / "storage.conf"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.conf_file),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "TMPDIR": str(self.directory / "tmp"),
        }

    def argv(self, *args: str) -> list[str]:
        d, r = self.directory, self.run_directory
        return [
            "nsenter", f"--net={self.host.netns_path}",
            "podman",
            "--root", str(d / "root"),
            "--runroot", str(r / "run"),
            "--tmpdir", str(r / "libpod"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--runtime", "runc",
            "--events-backend", "file",
            "--network-config-dir", str(self.network_dir),
            *args,
        ]  # fmt: skip

    # -- set-up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Configuration files and the busybox image. Idempotent."""
        if self.plugin_dir is None:
            self.plugin_dir = cni.plugin().parent
        for sub in ("tmp", "root"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("run", "libpod"):
            (self.run_directory / sub).mkdir(parents=True, exist_ok=True)
        self.network_dir.mkdir(parents=True, exist_ok=True)
        plugin_dirs = json.dumps([str(self.plugin_dir), str(SYSTEM_PLUGINS)])
        self._write(
            self.conf_file,
            f"""# podman of simulated host {self.host.name} (written by voile lab)
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{self.directory / "events.log"}"
image_copy_tmp_dir = "{self.directory / "tmp"}"
static_dir = "{self.directory / "root" / "libpod"}"
volume_path = "{self.directory / "root" / "volumes"}"
[network]
network_backend = "cni"
cni_plugin_dirs = {plugin_dirs}
network_config_dir = "{self.network_dir}"
""",
        )
        self._write(
            self.storage_conf,
            f"""[storage]
driver = "vfs"
graphroot = "{self.directory / "root"}"
runroot = "{self.run_directory / "run"}"
""",
        )
        if self.run("image", "exists", IMAGE, check=False).returncode != 0:
            rootfs = images.ensure()[0].rootfs
            self.run("import", "--change", f"CMD {json.dumps(IMAGE_CMD)}", str(rootfs), IMAGE)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    def networks(self, confs: dict[str, dict[str, Any]]) -> None:
        """Make the CNI config directory hold one voile conflist per network, and no other."""
        cni.write_conflists(self.network_dir, confs)

    def run(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"podman {' '.join(args)} on {self.host.name} failed ({proc.returncode}): "
                f"{proc.stderr.strip()}"
            )
        return proc

    def call(self, args: Sequence[str]) -> int:
        """Run podman with the caller's stdin, stdout and stderr (the CLI)."""
        return subprocess.call(self.argv(*args), env=self.env)

    # -- teardown ------------------------------------------------------------------------------

    def containers(self) -> list[str]:
        out = self.run("ps", "-aq", "--no-trunc", check=False, timeout=60).stdout
        return out.split()

    def _sandboxes(self, ids: Iterable[str]) -> list[str]:
        if not ids:
            return []
        out = self.run(
            "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", *ids, check=False
        ).stdout
        return [line for line in out.split() if line.startswith("/run/netns/")]

    def cleanup(self) -> None:
        """Remove every container (its netns, cgroups, the CNI cache entries), unmount what
        podman mounted under the directory, stop what still runs from it, remove it all.
        Idempotent; safe when podman was never used on this host."""
        if not self.directory.exists() and not self.run_directory.exists():
            return
        ids: list[str] = []
        sandboxes: list[str] = []
        if self.conf_file.exists():
            ids = self.containers()
            sandboxes = self._sandboxes(ids)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run("rm", "-af", "-t", "0", check=False, timeout=120)
        for pid in _processes_under(self.directory) + _processes_under(self.run_directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for netns in sandboxes:
            if os.path.exists(netns):
                sh("umount", "-l", netns, check=False)
                with contextlib.suppress(OSError):
                    os.unlink(netns)
        for cid in ids:
            for cached in CNI_RESULTS.glob(f"*-{cid}-*"):
                cached.unlink(missing_ok=True)
        for directory in (self.directory, self.run_directory):
            _unmount_under(directory)
            shutil.rmtree(directory, ignore_errors=True)
            if directory.exists():
                raise LabError(f"{directory} could not be removed")
        with contextlib.suppress(OSError):
            SHORT_ROOT.rmdir()  # when no other lab uses it


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    if not directory.exists():
        return []
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(directory: Path) -> None:
    for point in _mounts_under(directory):
        sh("umount", "-l", point, check=False)


def _processes_under(directory: Path) -> list[int]:
    """Processes whose command line names ``directory`` (conmon and containers of this host's
    podman, by their unique paths): ours, found by id."""
    if not directory.exists():
        return []
    needle = str(directory.resolve()).encode() + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
