"""`voile lab`: a multi-host Voile on one machine.

What ``up`` builds (every name carries the run id ``lab``; nothing outside 198.18.0.0/24 is used):

    root namespace                      fabric namespace voile-fabric-lab
      kube-apiserver on 198.18.0.254 --- veth vllabr0 ====== br0 (Linux bridge, the underlay)
      etcd on 127.0.0.1                                       |        |        |
      voile-operator                        voile-lab-host-1  host-2   host-3   (namespaces)
                                            eth0 198.18.0.1   .2       .3
                                            ovsdb-server + ovs-vswitchd (netdev) + voile-agent

The agents run inside their hosts' namespaces and reach the API server over the underlay, as they
would on real hosts. ``down`` removes all of it: processes, namespaces, links and files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voile import kube
from voile.api import constants as c
from voile.controlplane import ControlPlane, default_state_dir
from voile.crds import install_crds
from voile.errors import LabError
from voile.lab.host import Fabric, SimulatedHost, add_netns, del_netns, netns_exists, sh
from voile.processes import alive, terminate

RUN_ID = "lab"
ATTACH_NAMESPACE = "default"


def lab_dir() -> Path:
    """$VOILE_LAB_DIR, or next to the control plane's default state directory."""
    env = os.environ.get("VOILE_LAB_DIR")
    return Path(env) if env else default_state_dir().parent / "lab"


def _bin(name: str) -> str:
    """A console script of this installation (the lab runs what `make setup` installed)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class Lab:
    def __init__(
        self, directory: Path | None = None, *, run_id: str = RUN_ID, underlay_octet: int = 0
    ) -> None:
        """One lab. ``run_id`` names every namespace and link; ``underlay_octet`` picks the
        underlay 198.18.<octet>.0/24 (hosts .1-.N, the API server .254). A second lab (the e2e
        tests) uses other values, so it never touches a user's lab. Both are kept in the state
        file, so a later ``Lab()`` in the same directory finds them."""
        self.directory = (directory or lab_dir()).resolve()
        self.state_file = self.directory / "lab.json"
        saved = self._state()
        self.run_id = saved.get("run_id", run_id)
        octet = int(saved.get("underlay_octet", underlay_octet))
        self.underlay = ipaddress.IPv4Network(f"198.18.{octet}.0/24")
        self.underlay_octet = octet
        self.api_address = str(self.underlay.network_address + 254)
        self.root_leg = f"vl{self.run_id}r0"[:15]
        self.fabric_leg = f"vl{self.run_id}f0"[:15]
        self.container_prefix = f"voile-{self.run_id}-ct-"
        self.fabric = Fabric(self.directory / "fabric", self.run_id, self.underlay)
        self.plane = ControlPlane(
            self.directory / "controlplane",
            address=self.api_address,
            extra_sans=(self.api_address,),
        )
        self._hosts: dict[int, SimulatedHost] = {}

    def container_netns(self, name: str) -> str:
        """The network namespace (under /run/netns) of an attached container."""
        info = self._state()["containers"].get(name)
        return str(info["netns"]) if info else self.container_prefix + name

    # -- state ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        state.setdefault("hosts", [])
        state.setdefault("pids", {})
        state.setdefault("containers", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2, sort_keys=True))

    def host(self, index: int) -> SimulatedHost:
        """The simulated host ``host-<index>``: deterministic names, any process finds it."""
        if index not in self._hosts:
            self._hosts[index] = self.fabric.host(index)
        return self._hosts[index]

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    # -- up ------------------------------------------------------------------------------------

    def up(self, hosts: int = 3) -> Path:
        """Start (or complete) the lab with hosts host-1..host-N. Idempotent."""
        if not 1 <= hosts <= 50:
            raise LabError("--hosts must be between 1 and 50")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces and Open vSwitch)")
        state = self._state()
        state["run_id"], state["underlay_octet"] = self.run_id, self.underlay_octet
        self._save(state)
        _say(f"underlay: fabric namespace and bridge {self.underlay}")
        self.fabric.start()
        self._root_leg()
        _say("control plane: etcd + kube-apiserver on " + self.api_address)
        endpoints = self.plane.start()
        asyncio.run(self._prepare_api())
        names = sorted(
            set(state["hosts"]) | {f"host-{i}" for i in range(1, hosts + 1)},
            key=lambda n: int(n.split("-")[1]),
        )
        state["hosts"] = names
        self._save(state)
        for name in names:
            index = int(name.split("-")[1])
            _say(
                f"{name}: namespace, underlay {self.underlay.network_address + index}, OVS daemons"
            )
            self.host(index).start()
        self._ensure_process(
            state, "operator", self._operator_argv(), self.directory / "operator.log"
        )
        for name in names:
            index = int(name.split("-")[1])
            host = self.host(index)
            self._ensure_process(
                state,
                f"agent/{name}",
                self._agent_argv(host),
                host.directory / "agent.log",
            )
        self._save(state)
        _say("waiting for the agents' heartbeats")
        asyncio.run(self._wait_agents(names, timeout=120))
        _say(f"lab up: {len(names)} hosts; try `voile lab attach host-1 c1 --network <net>`")
        return endpoints.kubeconfig

    def _root_leg(self) -> None:
        """A veth from the root namespace into the fabric: the API server's underlay address."""
        if sh("ip", "link", "show", self.root_leg, check=False).returncode != 0:
            sh(
                "ip",
                "link",
                "add",
                self.root_leg,
                "type",
                "veth",
                "peer",
                "name",
                self.fabric_leg,
                "netns",
                self.fabric.namespace,
            )
            sh(
                "ip",
                "-n",
                self.fabric.namespace,
                "link",
                "set",
                self.fabric_leg,
                "master",
                "br0",
                "up",
            )
        addrs = sh("ip", "-o", "-4", "addr", "show", "dev", self.root_leg).stdout
        if f"{self.api_address}/24" not in addrs:
            sh("ip", "addr", "add", f"{self.api_address}/24", "dev", self.root_leg)
        sh("ip", "link", "set", self.root_leg, "up")
        # The hosts' underlay ports are OVS netdev (AF_PACKET) ports, which pass on partial
        # checksums as they are: the API server's TCP must leave with full checksums.
        sh("ethtool", "-K", self.root_leg, "tx", "off")

    async def _prepare_api(self) -> None:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            await install_crds(client)
            ns = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": c.DEFAULT_NAMESPACE},
            }
            with contextlib.suppress(kube.Conflict):
                await client.create(kube.path("", "v1", "namespaces"), ns)

    def _operator_argv(self) -> list[str]:
        return [
            _bin("voile-operator"),
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            c.DEFAULT_NAMESPACE,
            "--id",
            "lab-operator",
            "--metrics-port",
            "0",
            "--agent-dead-after",
            "60",
        ]

    def _agent_argv(self, host: SimulatedHost) -> list[str]:
        return host.agent_command(
            host.name,
            self.kubeconfig,
            "--namespace", c.DEFAULT_NAMESPACE,
            "--resync-period", "30",
        )  # fmt: skip

    def _ensure_process(
        self, state: dict[str, Any], key: str, argv: Sequence[str], log: Path
    ) -> int:
        pid = state["pids"].get(key)
        if pid and alive(pid):
            return int(pid)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        state["pids"][key] = proc.pid
        self._save(state)
        return proc.pid

    def restart(self, key: str, *, sig: int = signal.SIGTERM) -> int:
        """Stop one lab process (``operator`` or ``agent/host-N``) by ``sig``, start it again."""
        state = self._state()
        pid = state["pids"].get(key)
        if pid:
            terminate(pid, sig, group=True)
        if key == "operator":
            argv, log = self._operator_argv(), self.directory / "operator.log"
        else:
            host = self.host(int(key.rsplit("-", maxsplit=1)[-1]))
            argv, log = self._agent_argv(host), host.directory / "agent.log"
        state["pids"].pop(key, None)
        return self._ensure_process(state, key, argv, log)

    def stop_process(self, key: str, *, sig: int = signal.SIGTERM) -> None:
        state = self._state()
        pid = state["pids"].pop(key, None)
        if pid:
            terminate(pid, sig, group=True)
        self._save(state)

    async def _wait_agents(self, names: Sequence[str], *, timeout: float) -> None:
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:

            async def all_beating() -> bool:
                for name in names:
                    lease = await client.get(
                        kube.path(
                            "coordination.k8s.io",
                            "v1",
                            "leases",
                            namespace=c.DEFAULT_NAMESPACE,
                            name=c.AGENT_LEASE_PREFIX + name,
                        )
                    )
                    if lease is None:
                        return False
                return True

            try:
                await kube.wait_for(all_beating, timeout=timeout, what="agent heartbeats")
            except TimeoutError as exc:
                raise LabError(f"{exc}; see {self.directory}/fabric/host-*/agent.log") from exc

    # -- hosts ---------------------------------------------------------------------------------

    def remove_host(self, name: str) -> None:
        """Stop a host's agent and daemons and remove its namespace (the host 'dies')."""
        state = self._state()
        self.stop_process(f"agent/{name}", sig=signal.SIGKILL)
        self.host(int(name.split("-")[1])).stop()
        state = self._state()
        state["hosts"] = [h for h in state["hosts"] if h != name]
        self._save(state)

    # -- containers ----------------------------------------------------------------------------

    def attach(
        self, host: str, name: str, network: str, ip: str | None = None, *, timeout: float = 60
    ) -> str:
        """A container-like namespace NAME plugged into NETWORK by HOST's agent; its address."""
        state = self._state()
        if host not in state["hosts"]:
            raise LabError(f"no host {host!r} in the lab (hosts: {', '.join(state['hosts'])})")
        if ip is not None:
            ipaddress.IPv4Address(ip)
        netns = self.container_prefix + name
        add_netns(netns)
        state["containers"][name] = {"host": host, "netns": netns, "network": network}
        self._save(state)
        return asyncio.run(self._attach(host, name, network, ip, netns, timeout))

    async def _attach(
        self, host: str, name: str, network: str, ip: str | None, netns: str, timeout: float
    ) -> str:
        spec: dict[str, Any] = {
            "network": network,
            "node": host,
            "target": {"netns": {"path": f"/run/netns/{netns}", "interface": "eth0"}},
        }
        if ip:
            spec["ip"] = ip
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.ENDPOINT,
            "metadata": {
                "name": name,
                "namespace": ATTACH_NAMESPACE,
                "labels": {"voile.dev/lab": "true"},
            },
            "spec": spec,
        }
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ATTACH_NAMESPACE)
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            with contextlib.suppress(kube.Conflict):
                await client.create(url, body)
            obj_url = kube.path(
                c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ATTACH_NAMESPACE, name=name
            )
            last: dict[str, Any] = {}

            async def ready() -> str | None:
                nonlocal last
                obj = await client.get(obj_url) or {}
                last = obj
                status = obj.get("status") or {}
                conds = {x.get("type"): x for x in status.get("conditions") or []}
                if (conds.get("Ready") or {}).get("status") == "True" and status.get("ip"):
                    return str(status["ip"])
                return None

            try:
                address: str = await kube.wait_for(ready, timeout=timeout, what=f"{name} Ready")
            except TimeoutError as exc:
                conds = (last.get("status") or {}).get("conditions") or []
                detail = "; ".join(
                    f"{x.get('type')}={x.get('status')} {x.get('reason')}: {x.get('message')}"
                    for x in conds
                )
                raise LabError(f"{exc}: {detail or 'no conditions yet'}") from exc
            return address

    def detach(self, name: str) -> None:
        """Delete the Endpoint, wait until it is gone, remove the namespace. Idempotent."""
        state = self._state()
        info = state["containers"].get(name)
        asyncio.run(self._detach(name))
        if info:
            del_netns(info["netns"])
        state["containers"].pop(name, None)
        self._save(state)

    async def _detach(self, name: str, timeout: float = 60) -> None:
        url = kube.path(c.GROUP, c.VERSION, c.ENDPOINTS, namespace=ATTACH_NAMESPACE, name=name)
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            await client.delete(url)

            async def gone() -> bool:
                return await client.get(url) is None

            await kube.wait_for(gone, timeout=timeout, what=f"Endpoint {name} deleted")

    def exec(self, name: str, argv: Sequence[str]) -> int:
        state = self._state()
        info = state["containers"].get(name)
        netns = info["netns"] if info else self.container_prefix + name
        if not netns_exists(netns):
            raise LabError(f"no lab container {name!r}; attach it first")
        return subprocess.call(["ip", "netns", "exec", netns, *argv])

    # -- status --------------------------------------------------------------------------------

    def status(self) -> tuple[str, bool]:
        """The table and whether everything is Ready."""
        if self.plane.running() is None:
            return "lab: not running (control plane down)\n", False
        return asyncio.run(self._status())

    async def _status(self) -> tuple[str, bool]:
        state = self._state()
        ok = True
        lines: list[str] = []
        async with kube.KubeClient.from_config(str(self.kubeconfig)) as client:
            leases, _ = await client.list(
                kube.path("coordination.k8s.io", "v1", "leases", namespace=c.DEFAULT_NAMESPACE)
            )
            nets, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS))
            eps, _ = await client.list(kube.path(c.GROUP, c.VERSION, c.ENDPOINTS))
        by_lease = {x["metadata"]["name"]: x for x in leases}
        rows: list[tuple[str, ...]] = [("HOST", "UNDERLAY", "AGENT", "VTEP", "HEARTBEAT")]
        for name in state["hosts"]:
            index = int(name.split("-")[1])
            pid = state["pids"].get(f"agent/{name}")
            running = bool(pid and alive(pid))
            lease = by_lease.get(c.AGENT_LEASE_PREFIX + name) or {}
            vtep = ((lease.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_VTEP)
            age = _lease_age(lease)
            fresh = age is not None and age < 60
            ok &= running and fresh
            rows.append(
                (
                    name,
                    str(self.underlay.network_address + index),
                    "running" if running else "DOWN",
                    vtep or "-",
                    f"{age:.0f}s ago" if age is not None else "none",
                )
            )
        lines += [*_table(rows), ""]
        rows = [("NETWORK", "CIDR", "VNI", "MTU", "ENDPOINTS", "READY")]
        for net in sorted(nets, key=lambda n: n["metadata"]["name"]):
            st = net.get("status") or {}
            ready = _condition(st, "Ready")
            ok &= ready == "True"
            rows.append(
                (
                    net["metadata"]["name"],
                    net["spec"]["cidr"],
                    str(st.get("vni", "-")),
                    str(st.get("mtu", "-")),
                    str(st.get("endpoints", "-")),
                    ready,
                )
            )
        lines += [*_table(rows), ""]
        rows = [("ENDPOINT", "HOST", "NETWORK", "IP", "MAC", "READY")]
        for ep in sorted(eps, key=lambda e: (e["metadata"]["namespace"], e["metadata"]["name"])):
            st = ep.get("status") or {}
            ready = _condition(st, "Ready")
            ok &= ready == "True"
            rows.append(
                (
                    f"{ep['metadata']['namespace']}/{ep['metadata']['name']}",
                    ep["spec"]["node"],
                    ep["spec"]["network"],
                    st.get("ip", "-"),
                    st.get("mac", "-"),
                    ready,
                )
            )
        lines += _table(rows)
        return "\n".join(lines) + "\n", ok

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything the lab created. Idempotent; also cleans up a half-started lab."""
        state = self._state()
        pids = state["pids"]
        if pids:
            _say(f"stopping {', '.join(sorted(pids))}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda pid: terminate(pid, group=True), pids.values()))
        for info in state["containers"].values():
            del_netns(info["netns"])
        for path in Path("/run/netns").glob(self.container_prefix + "*"):
            del_netns(path.name)
        names = state["hosts"] or [p.name for p in (self.directory / "fabric").glob("host-*")]
        for name in names:
            with contextlib.suppress(ValueError, IndexError):
                self.host(int(name.split("-")[1]))
        _say("removing hosts, underlay and control plane")
        sh("ip", "link", "del", self.root_leg, check=False)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            # Each stop waits for its daemons to exit; the waits overlap.
            stops = [pool.submit(self.plane.stop)]
            stops += [pool.submit(host.stop) for host in self._hosts.values()]
            for stop in stops:
                with contextlib.suppress(Exception):  # fabric.stop below retries and reports
                    stop.result()
        self.fabric.stop()
        for path in Path("/run/netns").glob(f"voile-{self.run_id}-host-*"):
            del_netns(path.name)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory == lab_dir().resolve() and "VOILE_LAB_DIR" not in os.environ:
            with contextlib.suppress(OSError):  # /tmp/voile-<uid>, when nothing else is in it
                self.directory.parent.rmdir()


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _condition(status: dict[str, Any], kind: str) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def _lease_age(lease: dict[str, Any]) -> float | None:
    import datetime

    renew = (lease.get("spec") or {}).get("renewTime")
    if not renew:
        return None
    when = datetime.datetime.fromisoformat(renew.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - when).total_seconds()
