"""voile.lab.supervise: the lab's systemd-like supervisor of one daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from voile.processes import alive


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _wait(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_daemon_that_exits_is_started_again_and_stopped_with_its_supervisor(
    tmp_path: Path,
) -> None:
    started, hooks = tmp_path / "started", tmp_path / "hooks"
    pidfile = tmp_path / "supervise.pid"
    daemon = f"echo $$ >> {started}; exec sleep 60"
    hook = ["sh", "-c", f"echo hook >> {hooks}"]
    sup = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voile.lab.supervise",
            "--pidfile",
            str(pidfile),
            "--before-restart",
            json.dumps(hook),
            "--",
            "sh",
            "-c",
            daemon,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: len(_pids(started)) == 1)
        assert not hooks.exists()  # not before the first start
        first = _pids(started)[0]
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(_pids(started)) == 2)
        second = _pids(started)[1]
        assert second != first and alive(second)
        assert hooks.read_text() == "hook\n"
        os.kill(second, signal.SIGSTOP)  # a paused daemon is still stopped with it
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0
        _wait(lambda: not alive(second))
        assert not pidfile.exists()
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
