"""Faults on purpose, for tests and users: kill, restart, pause and resume one component of a
simulated host (its ovsdb-server, ovs-vswitchd or agent) or of the control plane (kube-apiserver,
etcd). ``voile lab restart|pause|resume`` (voile/cli.py) and tests/e2e/test_faults.py use it.

The lab's OVS daemons run under ``voile.lab.supervise`` (restarted 0.1 s after they exit, as
systemd does on a node), so restarting one is killing it and waiting for the new one; the agent
and the control plane are started again by the lab itself. docs/faults.md.
"""

from __future__ import annotations

import os
import signal

from voile.errors import LabError
from voile.lab.lab import Lab
from voile.processes import alive

HOST_COMPONENTS = ("ovsdb", "vswitchd", "agent")
CONTROLPLANE_COMPONENTS = ("apiserver", "etcd")
_DAEMONS = {"ovsdb": "ovsdb-server", "vswitchd": "ovs-vswitchd"}


def _host_index(lab: Lab, host: str) -> int:
    if host not in lab._state()["hosts"]:
        raise LabError(f"no host {host} in this lab")
    return int(host.split("-")[1])


def pid(lab: Lab, target: str, component: str) -> int:
    """The running process of ``component`` of ``target`` (a host name or ``controlplane``)."""
    if target == "controlplane":
        _check(component, CONTROLPLANE_COMPONENTS)
        return lab.plane.pid(component)
    _check(component, HOST_COMPONENTS)
    index = _host_index(lab, target)
    if component == "agent":
        found = int(lab._state()["pids"].get(f"agent/{target}") or 0)
    else:
        found = lab.host(index).daemon_pid(_DAEMONS[component]) or 0
    if not alive(found):
        raise LabError(f"{component} of {target} is not running")
    return found


def _check(component: str, allowed: tuple[str, ...]) -> None:
    if component not in allowed:
        raise LabError(f"component {component!r}: one of {', '.join(allowed)}")


def restart(
    lab: Lab, target: str, component: str, *, sig: int = signal.SIGKILL, timeout: float = 60
) -> int:
    """Kill ``component`` of ``target`` with ``sig`` and wait until it runs again (answering,
    for the OVS daemons and the control plane). The new pid."""
    if target == "controlplane":
        _check(component, CONTROLPLANE_COMPONENTS)
        return lab.plane.restart(component, sig)
    _check(component, HOST_COMPONENTS)
    index = _host_index(lab, target)
    if component == "agent":
        return lab.restart(f"agent/{target}", sig=sig)
    host = lab.host(index)
    daemon = _DAEMONS[component]
    if not host.supervisor_pidfile(daemon).exists():
        raise LabError(f"{target}'s {daemon} is not supervised (a lab from an older Voile)")
    old = pid(lab, target, component)
    os.kill(old, signal.SIGCONT)  # a paused daemon must be able to die
    os.kill(old, sig)
    return host.wait_daemon(daemon, timeout=timeout, other_than=old)


def pause(lab: Lab, target: str, component: str) -> int:
    """SIGSTOP: the process holds its sockets and answers nothing until ``resume``."""
    found = pid(lab, target, component)
    os.kill(found, signal.SIGSTOP)
    return found


def resume(lab: Lab, target: str, component: str) -> int:
    found = pid(lab, target, component)
    os.kill(found, signal.SIGCONT)
    return found
