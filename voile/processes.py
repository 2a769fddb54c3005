"""Processes that Voile's development tools start and stop (control plane, lab daemons)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, not a zombie (reaped here when it is our child)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state field follows "(comm)"


def terminate(
    pid: int, sig: int = signal.SIGTERM, *, grace: float = 10.0, group: bool = False
) -> None:
    """Send ``sig`` (to the process group with ``group``), wait up to ``grace`` seconds, then
    SIGKILL. Idempotent: a process that is already gone is fine."""
    send = os.killpg if group else os.kill
    for s in (sig, signal.SIGKILL):
        if not alive(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, s)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    """What a process holds that a leak would grow: open file descriptors and threads."""

    fds: int
    threads: int


def resources(pid: int) -> Resources:
    """The open fds and threads of a running process (/proc); raises if it cannot be read."""
    return Resources(
        fds=len(os.listdir(f"/proc/{pid}/fd")), threads=len(os.listdir(f"/proc/{pid}/task"))
    )


def settled_resources(pid: int, *, at_most: Resources, timeout: float) -> Resources:
    """``resources(pid)`` once both are at most ``at_most`` (connections still closing, threads
    still ending), or what they are after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(pid)
        done = now.fds <= at_most.fds and now.threads <= at_most.threads
        if done or time.monotonic() > deadline:
            return now
        time.sleep(0.1)
