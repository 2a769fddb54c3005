"""Running Open vSwitch's command-line tools from asyncio, with a deadline and a clear error.

Calls to one daemon (named by ``gate``: its socket) are bounded in number: when ``GATE_LIMIT``
calls to it are in flight, the next one fails at once with ``DatapathBusy`` instead of queueing
behind a daemon that does not answer (a stopped ovsdb-server once had 28 ``ovs-ofctl`` calls of
the agent waiting on its ovs-vswitchd). Every call also has a deadline, after which its process
is killed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Collection, Mapping

from voile.errors import DatapathBusy, DatapathError

GATE_LIMIT = 3
_in_flight: collections.Counter[str] = collections.Counter()


def in_flight(gate: str) -> int:
    """How many calls to ``gate`` run now (for tests and the metrics)."""
    return _in_flight[gate]


async def run_tool(
    *argv: str,
    timeout: float,
    what: str,
    ok: Collection[int] = (0,),
    env: Mapping[str, str] | None = None,
    gate: str | None = None,
) -> str:
    """Run ``argv`` and return its stdout. An exit code outside ``ok``, or no exit within
    ``timeout`` seconds (the process is then killed), raises DatapathError naming ``what``;
    ``GATE_LIMIT`` calls already in flight to ``gate`` raise DatapathBusy without running."""
    if gate is not None:
        if _in_flight[gate] >= GATE_LIMIT:
            raise DatapathBusy(f"{what} not sent: {_in_flight[gate]} calls to {gate} in flight")
        _in_flight[gate] += 1
    try:
        return await _run(argv, timeout=timeout, what=what, ok=ok, env=env)
    finally:
        if gate is not None:
            _in_flight[gate] -= 1


async def _run(
    argv: tuple[str, ...],
    *,
    timeout: float,
    what: str,
    ok: Collection[int],
    env: Mapping[str, str] | None,
) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        # The tool may have exited meanwhile: a ProcessLookupError here would replace the
        # CancelledError, and the caller's retry loop would swallow the agent's SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise DatapathError(f"{what} timed out after {timeout:g}s") from None
    if proc.returncode not in ok:
        raise DatapathError(f"{what}: {err.decode().strip()}")
    return out.decode()
