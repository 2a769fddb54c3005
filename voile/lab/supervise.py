"""Keep one daemon running, as systemd's ``Restart=always`` does on a node: start it in the
foreground, start it again 0.1 s after it exits (2 s when it keeps exiting: more than 5 exits
in 10 s), until this supervisor is told to stop (SIGTERM/SIGINT: the daemon is stopped too).

    python -m voile.lab.supervise --pidfile SUP.pid [--before-restart ARGV_JSON] -- DAEMON...

``--before-restart`` runs a command before each restart (not before the first start): for
ovs-vswitchd the lab sets ``other_config:flow-restore-wait=true`` there, as ``ovs-ctl
restart`` does, so the restarted switch forwards nothing until the agent has put its flows
back (docs/faults.md). The lab starts one supervisor per OVS daemon of each simulated host.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

RESTART_DELAY = 0.1
BURST_DELAY = 2.0
BURST = 5
BURST_WINDOW = 10.0


class Supervisor:
    def __init__(self, argv: Sequence[str], *, before_restart: Sequence[str] = ()) -> None:
        self.argv = list(argv)
        self.before_restart = list(before_restart)
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.exits: collections.deque[float] = collections.deque(maxlen=BURST)

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGCONT)  # a paused daemon must be able to exit
            self.child.terminate()

    def run(self) -> int:
        first = True
        while not self.stopping:
            if not first:
                self._before_restart()
            first = False
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            _say(f"started pid={self.child.pid}: {' '.join(self.argv[:6])}")
            code = self._wait()
            if self.stopping:
                break
            now = time.monotonic()
            self.exits.append(now)
            _say(f"exited code={code}; restarting")
            burst = len(self.exits) == BURST and now - self.exits[0] < BURST_WINDOW
            time.sleep(BURST_DELAY if burst else RESTART_DELAY)
        return 0

    def _wait(self) -> int:
        assert self.child is not None
        deadline: float | None = None
        while True:
            try:
                return self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                deadline = deadline or time.monotonic() + 5.0
                if time.monotonic() > deadline:
                    self.child.kill()

    def _before_restart(self) -> None:
        if not self.before_restart:
            return
        try:
            subprocess.run(self.before_restart, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _say(f"before-restart command failed: {exc}")


def _say(message: str) -> None:
    print(f"supervise: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voile.lab.supervise")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--before-restart", default="[]", help="a JSON list: argv")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the daemon's command after --")
    sup = Supervisor(command, before_restart=json.loads(args.before_restart))
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    args.pidfile.write_text(f"{os.getpid()}\n")
    try:
        return sup.run()
    finally:
        args.pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
