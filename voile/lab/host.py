"""Simulated hosts on one machine: a network namespace per host, joined by veth to an underlay
Linux bridge that lives in its own "fabric" namespace. An ``ovs`` host has its own ovsdb-server
and ovs-vswitchd (userspace datapath) in its own directory, and its agent puts the underlay NIC
on an OVS bridge; an ``ebpf`` host runs no OVS at all (its underlay stays the kernel's) and has
its own bpffs mounted in its directory, so the hosts' pins never meet on one kernel.

Used by the functional tests, the benchmark and the lab. Every name carries a run id, so several
runs on one machine (parallel test sessions, the lab) never collide, and ``stop`` removes exactly
what ``start`` made: daemons (by their pid files), namespaces, links and files.

Only 198.18.0.0/15 addresses are used (RFC 2544 benchmarking space), and only inside the
namespaces created here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from voile.errors import LabError
from voile.netns import inside_netns
from voile.processes import alive

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
NETNS_DIR = Path("/run/netns")
CNI_PLUGIN = "voile"  # the plugin binary's name (its type)
CNI_CONF_NAME = "10-voile.conflist"  # the chart's cni.confName
DATAPATHS = ("ovs", "ebpf", "none")  # none: a bare namespace (benchmarks' baselines)


def run_id() -> str:
    """A short random id for one run (names stay within 15 characters)."""
    return secrets.token_hex(3)


def sh(
    *cmd: str,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        input=input,
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    """Create a named namespace (under /run/netns) with loopback up. Idempotent."""
    if not netns_exists(name):
        sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def del_netns(name: str) -> None:
    """Remove a named namespace. Idempotent."""
    if netns_exists(name):
        sh("ip", "netns", "del", name, check=False)


def _kill_pidfile(pidfile: Path, timeout: float = 5.0) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Fabric:
    """The underlay: a Linux bridge ``br0`` in namespace ``voile-fabric-<id>``."""

    def __init__(
        self,
        directory: Path,
        rid: str | None = None,
        underlay: ipaddress.IPv4Network = UNDERLAY,
    ) -> None:
        self.id = rid or run_id()
        self.underlay = underlay
        self.directory = Path(directory)
        self.namespace = f"voile-fabric-{self.id}"
        self.hosts: list[SimulatedHost] = []

    @property
    def prefix(self) -> str:
        return f"voile-{self.id}-"

    def start(self) -> Fabric:
        """Idempotent."""
        self.directory.mkdir(parents=True, exist_ok=True)
        add_netns(self.namespace)
        if sh("ip", "-n", self.namespace, "link", "show", "br0", check=False).returncode != 0:
            sh("ip", "-n", self.namespace, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.namespace, "link", "set", "br0", "up")
        return self

    def host(self, index: int, name: str | None = None, datapath: str = "ovs") -> SimulatedHost:
        """A host (not yet started) with underlay address 198.18.0.<index>."""
        host = SimulatedHost(self, name or f"host-{index}", index, datapath=datapath)
        self.hosts.append(host)
        return host

    def stop(self) -> None:
        """Stop every host, then remove the fabric. Idempotent, also after a partial start."""
        errors: list[str] = []
        for host in reversed(self.hosts):
            try:
                host.stop()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")
        del_netns(self.namespace)
        shutil.rmtree(self.directory, ignore_errors=True)
        if errors:
            raise LabError("; ".join(errors))


class SimulatedHost:
    """Namespace ``<prefix>host-N`` with ``eth0`` = 198.18.0.N/24 on the fabric bridge, and its
    own Open vSwitch daemons whose sockets, database and logs live in ``directory``."""

    def __init__(self, fabric: Fabric, name: str, index: int, datapath: str = "ovs") -> None:
        if not 1 <= index <= 250:
            raise LabError(f"host index {index} is outside 1..250")
        if datapath not in DATAPATHS:
            raise LabError(f"datapath {datapath!r} is not one of {', '.join(DATAPATHS)}")
        self.datapath = datapath
        self.offload = True  # ebpf: endpoints' TX offloads (off when it shares a net with ovs)
        self.fabric = fabric
        self.name = name
        self.index = index
        self.namespace = f"{fabric.prefix}{name}"
        self.directory = fabric.directory / name
        self.underlay_interface = "eth0"
        self.address = fabric.underlay.network_address + index
        # A fixed NIC address, as real hardware has: a host removed and added back keeps it, so
        # its peers' tunnel neighbour caches (OVS keeps its own, for minutes) stay right.
        third = fabric.underlay.network_address.packed[2]
        self.underlay_mac = f"02:76:6f:{third:02x}:00:{index:02x}"
        self.extra_namespaces: list[str] = []
        # Run the OVS daemons under voile.lab.supervise (restarted when they exit), as the lab
        # does; functional tests keep plain detached daemons.
        self.supervised = False

    # -- paths ---------------------------------------------------------------------------------

    @property
    def db_sock(self) -> Path:
        return self.directory / "db.sock"

    @property
    def ovsdb(self) -> str:
        return f"unix:{self.db_sock}"

    @property
    def env(self) -> dict[str, str]:
        d = str(self.directory)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d}

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.namespace)

    @property
    def bpffs(self) -> Path:
        """ebpf: this host's own bpffs (mounted by ``start`` where every process sees it)."""
        return self.directory / "bpffs"

    @property
    def attach_socket(self) -> Path:
        """This host's agent's local attach API (each simulated host has its own)."""
        return self.directory / "agent.sock"

    @property
    def docker_plugin_socket(self) -> Path:
        """This host's agent's Docker driver, in the directory the host's dockerd reads as
        /run/docker/plugins (voile.lab.docker)."""
        return self.directory / "docker" / "plugins" / "voile.sock"

    @property
    def state_dir(self) -> Path:
        """Where this host's agent keeps what must survive its restart."""
        return self.directory / "state"

    @property
    def cni_spool_dir(self) -> Path:
        """Where this host's CNI plugin records a DEL its agent did not answer."""
        return self.directory / "cni-pending"

    @property
    def cni_bin_dir(self) -> Path:
        """This host's /opt/cni/bin: where the chart's install-cni puts the plugin."""
        return self.directory / "cni" / "bin"

    @property
    def cni_conf_dir(self) -> Path:
        """This host's /etc/cni/net.d: where install-cni writes the primary conflist."""
        return self.directory / "cni" / "net.d"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SimulatedHost:
        """Create the namespace, the underlay link and the OVS daemons. Idempotent."""
        self.fabric.start()
        self.directory.mkdir(parents=True, exist_ok=True)
        add_netns(self.namespace)
        fab_if = f"vf{self.fabric.id}h{self.index}"[:15]
        if (
            sh(
                "ip", "-n", self.namespace, "link", "show", self.underlay_interface, check=False
            ).returncode
            != 0
        ):
            sh(
                "ip",
                "link",
                "add",
                "name",
                fab_if,
                "netns",
                self.fabric.namespace,
                "type",
                "veth",
                "peer",
                "name",
                self.underlay_interface,
                "address",
                self.underlay_mac,
                "netns",
                self.namespace,
            )
            sh("ip", "-n", self.fabric.namespace, "link", "set", fab_if, "master", "br0", "up")
            prefix = self.fabric.underlay.prefixlen
            sh(
                "ip",
                "-n",
                self.namespace,
                "addr",
                "add",
                f"{self.address}/{prefix}",
                "dev",
                self.underlay_interface,
            )
        sh("ip", "-n", self.namespace, "link", "set", self.underlay_interface, "up")
        if self.datapath == "ebpf":
            self._mount_bpffs()
        elif self.datapath == "ovs":
            self._start_ovs()
        return self

    def _mount_bpffs(self) -> None:
        self.bpffs.mkdir(parents=True, exist_ok=True)
        if sh("mountpoint", "-q", str(self.bpffs), check=False).returncode != 0:
            sh("mount", "-t", "bpf", "bpf", str(self.bpffs))

    def _umount_bpffs(self) -> None:
        if (
            self.bpffs.exists()
            and sh("mountpoint", "-q", str(self.bpffs), check=False).returncode == 0
        ):
            sh("umount", "-l", str(self.bpffs), check=False)

    def _alive(self, daemon: str) -> bool:
        """The daemon of the pid file runs. A killed daemon stays a zombie until an init that
        reaps late gets to it: that is not running (else it would never be started again)."""
        try:
            pid = int((self.directory / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return False
        return alive(pid)

    def _start_ovs(self) -> None:
        d = self.directory
        conf = d / "conf.db"
        if not conf.exists():
            sh("ovsdb-tool", "create", str(conf), str(SCHEMA))
        if not self._alive("ovsdb-server"):
            self._start_daemon(
                "ovsdb-server",
                [
                    str(conf),
                    f"--remote=punix:{self.db_sock}",
                    f"--pidfile={d}/ovsdb-server.pid",
                    f"--unixctl={d}/ovsdb-server.ctl",
                    f"--log-file={d}/ovsdb-server.log",
                ],
            )
            sh("ovs-vsctl", f"--db={self.ovsdb}", "--no-wait", "init", env=self.env)
        if not self._alive("ovs-vswitchd"):
            self._start_daemon(
                "ovs-vswitchd",
                [
                    self.ovsdb,
                    f"--pidfile={d}/ovs-vswitchd.pid",
                    f"--unixctl={d}/ovs-vswitchd.ctl",
                    f"--log-file={d}/ovs-vswitchd.log",
                ],
                # As ovs-ctl restart: the restarted switch forwards nothing until the agent has
                # re-installed its flows and cleared this (docs/faults.md).
                before_restart=[
                    "ovs-vsctl",
                    f"--db={self.ovsdb}",
                    "--no-wait",
                    "--timeout=5",
                    "set",
                    "Open_vSwitch",
                    ".",
                    "other_config:flow-restore-wait=true",
                ],
            )
        self.vsctl("--timeout=20", "show")

    def _start_daemon(
        self, daemon: str, args: list[str], *, before_restart: list[str] | None = None
    ) -> None:
        """Start one OVS daemon in the host's namespace: detached, or (``supervised``) under
        ``voile.lab.supervise``, which starts it again whenever it exits (voile/lab/faults.py
        kills, pauses and restarts it)."""
        argv = ["ip", "netns", "exec", self.namespace, daemon, *args]
        if not self.supervised:
            sh(*argv, "--detach", env=self.env)
            return
        (self.directory / f"{daemon}.pid").unlink(missing_ok=True)
        with (self.directory / f"supervise-{daemon}.log").open("ab") as out:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voile.lab.supervise",
                    "--pidfile",
                    str(self.supervisor_pidfile(daemon)),
                    "--before-restart",
                    json.dumps(before_restart or []),
                    "--",
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        self.wait_daemon(daemon, timeout=30)

    def supervisor_pidfile(self, daemon: str) -> Path:
        return self.directory / f"supervise-{daemon}.pid"

    def daemon_pid(self, daemon: str) -> int | None:
        """The pid of a running OVS daemon of this host (``ovsdb-server``, ``ovs-vswitchd``)."""
        try:
            pid = int((self.directory / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def wait_daemon(self, daemon: str, *, timeout: float, other_than: int | None = None) -> int:
        """Wait until ``daemon`` runs (another process than ``other_than``) and answers on its
        control socket; its pid."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self.daemon_pid(daemon)
            if pid is not None and pid != other_than:
                ctl = str(self.directory / f"{daemon}.ctl")
                check = subprocess.run(
                    ["ovs-appctl", "-t", ctl, "--timeout=2", "version"],
                    capture_output=True,
                    env=self.env,
                    check=False,
                )
                if check.returncode == 0:
                    return pid
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: {daemon} did not start within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill this host's daemons, remove its namespaces, links and files. Idempotent."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            _kill_pidfile(self.supervisor_pidfile(daemon))  # first: it would start it again
            _kill_pidfile(self.directory / f"{daemon}.pid")
        for ns in self.extra_namespaces:
            del_netns(ns)
        del_netns(self.namespace)
        self._umount_bpffs()
        fab_if = f"vf{self.fabric.id}h{self.index}"[:15]
        sh("ip", "-n", self.fabric.namespace, "link", "del", fab_if, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def exec(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host's namespace with its OVS environment."""
        return sh(
            "ip", "netns", "exec", self.namespace, *cmd, check=check, timeout=timeout, env=self.env
        )

    def agent_command(
        self, node: str, kubeconfig: Path | str, *extra: str, mount_namespace: str | None = None
    ) -> list[str]:
        """``voile-agent run`` for this host, as it runs here: inside the host's namespace; for
        ``ovs`` on this host's Open vSwitch, with the netdev datapath taking over the underlay
        ``eth0``, for ``ebpf`` on this host's bpffs (the VTEP is read from ``eth0``). The one
        place the lab, the tests and the benchmarks take
        the agent's command line from. ``mount_namespace``: run it in that mount namespace (a
        Kubernetes node's, voile.lab.node, whose sandboxes' namespaces it must see) instead of
        the private one ``ip netns exec`` makes."""
        agent = Path(sys.executable).with_name("voile-agent")
        enter = (
            ["nsenter", f"--mount={mount_namespace}", f"--net={self.netns_path}"]
            if mount_namespace
            else ["ip", "netns", "exec", self.namespace]
        )
        return [
            *enter,
            str(agent) if agent.exists() else "voile-agent", "run",
            "--node", node,
            *self.datapath_args(),
            "--kubeconfig", str(kubeconfig),
            "--attach-socket", str(self.attach_socket),
            "--docker-plugin-socket", str(self.docker_plugin_socket),
            *self.file_args(),
            *extra,
        ]  # fmt: skip

    def file_args(self) -> list[str]:
        """The agent's file options for this host (``run`` and ``cleanup`` alike): its state and
        spool directories, and what the chart's install-cni wrote (removed by a cleanup)."""
        return [
            "--state-dir", str(self.state_dir),
            "--cni-spool-dir", str(self.cni_spool_dir),
            "--cni-bin-file", str(self.cni_bin_dir / CNI_PLUGIN),
            "--cni-conf-file", str(self.cni_conf_dir / CNI_CONF_NAME),
        ]  # fmt: skip

    def cleanup_command(self) -> list[str]:
        """``voile-agent cleanup`` for this host, inside its namespace."""
        agent = Path(sys.executable).with_name("voile-agent")
        return [
            "ip", "netns", "exec", self.namespace,
            str(agent) if agent.exists() else "voile-agent", "cleanup",
            *self.datapath_args(), *self.file_args(),
        ]  # fmt: skip

    def datapath_args(self) -> list[str]:
        """The agent's datapath options for this host (``run`` and ``cleanup`` alike)."""
        if self.datapath == "ebpf":
            return [
                "--datapath", "ebpf",
                "--vtep-interface", self.underlay_interface,
                "--bpffs", str(self.bpffs),
                "--offload", "on" if self.offload else "off",
            ]  # fmt: skip
        return [
            "--datapath", "ovs",
            "--vtep-interface", self.underlay_interface,
            "--underlay-interface", self.underlay_interface,
            "--datapath-type", "netdev",
            "--ovsdb", self.ovsdb,
            "--ovs-rundir", str(self.directory),
        ]  # fmt: skip

    def vsctl(self, *args: str, check: bool = True) -> str:
        return sh("ovs-vsctl", f"--db={self.ovsdb}", *args, check=check, env=self.env).stdout

    def mgmt(self, bridge: str) -> str:
        """The OpenFlow management socket of a bridge of this host's ovs-vswitchd."""
        return f"unix:{self.directory / (bridge + '.mgmt')}"

    def ofctl(self, command: str, bridge: str, *args: str, check: bool = True) -> str:
        return sh(
            "ovs-ofctl",
            "-O",
            "OpenFlow14",
            command,
            self.mgmt(bridge),
            *args,
            check=check,
            env=self.env,
        ).stdout

    def appctl(self, *args: str) -> str:
        return sh(
            "ovs-appctl", "-t", str(self.directory / "ovs-vswitchd.ctl"), *args, env=self.env
        ).stdout

    def endpoint_namespace(self, short: str) -> str:
        """Create (idempotently) a namespace for an endpoint of this host; removed by ``stop``.
        Returns its path under /run/netns."""
        name = f"{self.namespace}-{short}"
        add_netns(name)
        if name not in self.extra_namespaces:
            self.extra_namespaces.append(name)
        return str(NETNS_DIR / name)


class LoopbackForwarder:
    """Listen on 127.0.0.1:<port> inside a namespace and relay each connection to 127.0.0.1:<port>
    of the caller's namespace: agents in simulated hosts reach a control plane on the machine's
    loopback with the same kubeconfig, and no address is added anywhere outside our namespaces.

    Threads only (setns is per thread): the listening socket is made in the target namespace,
    then the thread returns to its own, where the outgoing connections are made.
    """

    def __init__(self, netns_path: str, port: int) -> None:
        self.netns_path = netns_path
        self.port = port
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> LoopbackForwarder:
        ready: list[BaseException | None] = []
        done = threading.Event()

        def serve() -> None:
            try:
                with inside_netns(self.netns_path):
                    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind(("127.0.0.1", self.port))
                    listener.listen(64)
                self._listener = listener
                ready.append(None)
            except BaseException as exc:
                ready.append(exc)
                done.set()
                return
            done.set()
            while not self._stopped.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True, name=f"fwd {self.netns_path}").start()
        done.wait(10)
        if not ready or ready[0] is not None:
            raise LabError(f"cannot listen in {self.netns_path}: {ready[0] if ready else '?'}")
        return self

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        t.start()
        pump(conn, upstream)
        t.join()
        conn.close()
        upstream.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
