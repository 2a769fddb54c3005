"""A private Docker Engine per simulated host: ``voile lab docker HOST -- ARGS...``.

The recipe of docs/runtimes.md ("Docker Engine 20.10, a private daemon per host"): a holder
process (``sleep infinity``) keeps a mount namespace of the host's own, made inside the host's
network namespace with ``unshare --mount --propagation slave`` (the machine's later mounts and
unmounts still reach it, nothing made inside leaks out). In it a tmpfs is the host's ``/run``,
so the daemon has its own ``/run/docker/plugins`` (plugin discovery) and ``/run/containerd/s``
(shim sockets), and the host's directory ``docker/plugins``, which holds its agent's
``voile.sock``, is bound onto ``/run/docker/plugins``: the daemons of several hosts never see
each other's plugins. dockerd runs there (``nsenter --mount=/proc/<holder>/ns/mnt --net=...``,
which keeps the machine's /sys and its cgroup mounts, unlike ``ip netns exec``) with a
``--config-file`` of its own (``/etc/docker`` is never read or written: the trust key goes to
``deprecated-key-path``), its own data and exec roots, socket, pid file and cgroup parent
``/voile-<run>-<host>``, and the flags of the runtimes notes: no iptables, no masquerading, no
default bridge, vfs, cgroupfs.

``stop`` stops the daemon, its containerd and shims, what is left in its cgroups and the holder,
and keeps its files (a later start finds its networks and containers); ``remove`` (``voile lab
down``) first removes the containers (Docker releases their networks through the driver), then
stops and removes the cgroups and files. The lab image ``localhost/busybox:lab`` is imported on
first start from ``voile.lab.images``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from voile.errors import LabError
from voile.lab import images
from voile.lab.host import SimulatedHost
from voile.processes import alive, terminate

DOCKERD = "/usr/sbin/dockerd"
# Debian's client matches its daemon (20.10); another docker on PATH may be a newer one.
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
IMAGE = images.BUSYBOX_IMAGE
PLUGIN_DIR = "/run/docker/plugins"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostDocker:
    """The dockerd of one simulated host (not started until ``start``)."""

    def __init__(self, host: SimulatedHost, run_id: str) -> None:
        self.host = host
        self.directory = host.docker_plugin_socket.parent.parent
        self.plugins = host.docker_plugin_socket.parent
        self.etc = self.directory / "etc"
        self.socket = self.directory / "docker.sock"
        self.pidfile = self.directory / "docker.pid"
        self.holder_pidfile = self.directory / "holder.pid"
        self.config = self.directory / "daemon.json"
        self.log = self.directory / "dockerd.log"
        self.cgroup_parent = f"voile-{run_id}-{host.name}"

    def argv(self, holder: int) -> list[str]:
        d = self.directory
        return [
            "nsenter", f"--mount=/proc/{holder}/ns/mnt", f"--net={self.host.netns_path}",
            DOCKERD, "--config-file", str(self.config), "--host", f"unix://{self.socket}",
            "--data-root", f"{d}/data", "--exec-root", f"{d}/exec", "--pidfile", str(self.pidfile),
            "--iptables=false", "--ip-masq=false", "--bridge=none", "--storage-driver=vfs",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--cgroup-parent", f"/{self.cgroup_parent}", "--default-ulimit", "nofile=20000:20000",
        ]  # fmt: skip

    def _holder(self) -> int:
        """The holder of the host's mount namespace, started (with the private /run and the
        plugin directory bound in) when it is not running. Idempotent."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.holder_pidfile.read_text().strip())
            if _runs(pid, "sleep"):
                return pid
        proc = subprocess.Popen(
            ["nsenter", f"--net={self.host.netns_path}", "unshare", "--mount", "--propagation",
             "slave", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        own = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/mnt") == own:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the mount namespace of {self.host.name} was not made")
            time.sleep(0.01)
        subprocess.run(
            ["nsenter", f"--mount=/proc/{proc.pid}/ns/mnt", "sh", "-euc",
             f"mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p {PLUGIN_DIR} && "
             f"mount --bind {self.plugins} {PLUGIN_DIR}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.holder_pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.directory / "cli"),
        }

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [DOCKER_CLI, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(f"docker {' '.join(args)} on {self.host.name}: {proc.stderr.strip()}")
        return proc

    def answers(self) -> bool:
        """Whether the daemon's API answers ``/_ping`` (within a second)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    def pid(self) -> int | None:
        """The running daemon's pid, from its pid file: None when that process is gone or is
        not a dockerd (pids are reused)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _runs(pid, "dockerd") else None

    def start(self, *, timeout: float = 60) -> int:
        """Start the daemon and load the lab image. Idempotent: a running daemon is kept."""
        pid = self.pid()
        if pid is not None:
            return pid
        if not Path(DOCKERD).exists():
            raise LabError("dockerd is not installed (make setup installs docker.io)")
        # A killed daemon leaves its pid file; dockerd refuses to start while the pid in it runs,
        # which may by now be another process.
        self.pidfile.unlink(missing_ok=True)
        for path in (self.plugins, self.directory / "cli"):
            path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps({"deprecated-key-path": str(self.directory / "key.json")})
        )
        self._no_stale_containerd()
        holder = self._holder()
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(holder),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                terminate(proc.pid, grace=10)
                self.stop()
                raise LabError(
                    f"dockerd of {self.host.name} did not start (see {self.log}):\n{tail}"
                )
            time.sleep(0.1)
        if self.cli("image", "inspect", IMAGE, check=False).returncode != 0:
            built, _ = images.ensure()
            self.cli("import", "--change", "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
                     "--change", 'CMD ["sh"]', str(built.rootfs), IMAGE)  # fmt: skip
        return proc.pid

    def _processes(self, name: str) -> list[int]:
        """This daemon's ``containerd`` or ``containerd-shim`` processes: their command lines
        name our exec root (the agent's names only the plugin directory)."""
        mine = f"{self.directory}/exec/"
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if Path(argv[0].decode()).name.startswith(name) and mine in " ".join(
                    a.decode() for a in argv
                ):
                    pids.append(int(proc.name))
        return pids

    def _no_stale_containerd(self) -> None:
        """A killed daemon's containerd dies after it (parent-death signal). A new daemon that
        finds its pid file's process running takes it for its containerd and waits for its
        socket in vain (or for another process that reused the pid): end it, or drop the file."""
        pidfile = self.directory / "exec" / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _runs(pid, "containerd"):
            terminate(pid, grace=10)
        pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the daemon, its containerd and shims, and what still runs in its containers;
        keep its files (a later start finds its networks and containers). Idempotent."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, grace=20)
        for leftover in self._processes("containerd"):  # containerd and its shims
            terminate(leftover, grace=5)
        for leftover in self._contained():
            terminate(leftover, signal.SIGKILL, grace=5)
        with contextlib.suppress(OSError, ValueError):
            holder = int(self.holder_pidfile.read_text().strip())
            if _runs(holder, "sleep"):  # only our holder: the pid may have been reused
                terminate(holder, grace=5)
        self.holder_pidfile.unlink(missing_ok=True)

    def remove(self) -> None:
        """Remove the containers (Docker releases their networks through the driver while the
        agent runs), stop everything, remove the cgroups and the daemon's files. The plugin
        directory is the agent's and stays. Idempotent."""
        if self.pid() is not None:
            ids = self.cli("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=120)
        self.stop()
        self._remove_cgroups()
        for path in self.directory.iterdir() if self.directory.is_dir() else ():
            if path != self.plugins:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _contained(self) -> list[int]:
        """Processes of this daemon's containers still running (a container whose shim was
        killed with its daemon): everything in the cgroup parent named for this host."""
        pids: set[int] = set()
        for procs in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}/**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(p) for p in procs.read_text().split()}
        return sorted(pids)

    def _remove_cgroups(self) -> None:
        for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
            top = controller / self.cgroup_parent
            if not top.is_dir():
                continue
            for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _runs(pid: int, program: str) -> bool:
    """Whether ``pid`` is alive and runs ``program`` (a pid file's pid may have been reused)."""
    try:
        return alive(pid) and Path(f"/proc/{pid}/exe").resolve().name == program
    except OSError:
        return False


def run_cli(docker: HostDocker, argv: Sequence[str]) -> int:
    """The docker CLI against one host's daemon, attached to this terminal."""
    return subprocess.call([DOCKER_CLI, *argv], env=docker.env())
