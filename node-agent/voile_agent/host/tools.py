"""Running Open vSwitch's command-line tools from asyncio, with a deadline and a clear error."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from voile.errors import DatapathError


async def run_tool(
    *argv: str,
    timeout: float,
    what: str,
    ok: Collection[int] = (0,),
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv`` and return its stdout. An exit code outside ``ok``, or no exit within
    ``timeout`` seconds (the process is then killed), raises DatapathError naming ``what``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DatapathError(f"{what} timed out") from None
    if proc.returncode not in ok:
        raise DatapathError(f"{what}: {err.decode().strip()}")
    return out.decode()
