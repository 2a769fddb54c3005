"""Processes that Voile's development tools start and stop (control plane, lab daemons)."""

from __future__ import annotations

import contextlib
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
