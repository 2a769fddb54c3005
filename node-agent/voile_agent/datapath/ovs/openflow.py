"""OpenFlow through ``ovs-ofctl`` on the bridge's management socket, changes in atomic bundles.

Why ovs-ofctl and not an OpenFlow library: it is the reference implementation of the flow syntax
the plan is written in, it ships with every OVS, and ``--bundle`` gives an all-or-nothing update.
The flow set is read back by cookie only (``dump-flows cookie=0x5601.../0xffff...``); see
``voile_agent.planning.flows`` for why the cookie identifies a flow.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from voile_agent.datapath.ovs.flows import COOKIE_MATCH, Flow, FlowDiff
from voile_agent.host.tools import run_tool

log = logging.getLogger(__name__)

_COOKIE = re.compile(r"\bcookie=(0x[0-9a-f]+|\d+)")
_DURATION = re.compile(r"\bduration=([0-9.]+)s")
PROTOCOL = "OpenFlow14"


def diff_cookies(text: str) -> set[int]:
    """The cookies on the ``-`` and ``+`` lines of ``ovs-ofctl diff-flows`` output."""
    cookies = set()
    for line in text.splitlines():
        if line[:1] in ("-", "+"):
            match = _COOKIE.search(line)
            if match:
                cookies.add(int(match.group(1), 0))
    return cookies


class OpenFlow:
    """Flows of one bridge of one ovs-vswitchd (whose run directory holds ``<bridge>.mgmt``)."""

    def __init__(self, bridge: str, rundir: str, *, timeout: float = 20.0) -> None:
        self.bridge = bridge
        self.target = f"unix:{Path(rundir) / (bridge + '.mgmt')}"
        self.timeout = timeout

    async def _ofctl(
        self, *args: str, ok: tuple[int, ...] = (0,), timeout: float | None = None
    ) -> str:
        return await run_tool(
            "ovs-ofctl",
            "-O",
            PROTOCOL,
            *args,
            timeout=self.timeout if timeout is None else timeout,
            what=f"ovs-ofctl {args[0]} {self.bridge}",
            ok=ok,
            gate=self.target,
        )

    async def has_flow(self, flow: Flow, *, timeout: float) -> bool:
        """Whether the bridge holds ``flow`` (looked up by its cookie and table). Read-only;
        raises DatapathError when ovs-vswitchd does not answer within ``timeout``."""
        match = f"cookie={flow.cookie:#x}/-1,table={flow.table}"
        out = await self._ofctl("dump-flows", self.target, match, timeout=timeout)
        return any("cookie=" in line for line in out.splitlines())

    async def dump(self) -> list[str]:
        """Voile's flows on the bridge, as ovs-ofctl prints them."""
        out = await self._ofctl("dump-flows", self.target, COOKIE_MATCH)
        return [line.strip() for line in out.splitlines() if "cookie=" in line]

    async def cookies(self) -> list[int]:
        cookies = []
        for line in await self.dump():
            match = _COOKIE.search(line)
            if match:
                cookies.append(int(match.group(1), 0))
        return cookies

    async def drifted(self, desired: Iterable[Flow]) -> set[int]:
        """Cookies of the desired flows that the bridge holds in another form (other match,
        actions or timeouts under the same cookie), or lacks. ``ovs-ofctl diff-flows`` parses
        both sides into OpenFlow structures, so formatting differences are no drift. Read-only.
        """
        fd, name = tempfile.mkstemp(prefix="voile-desired-", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(f"cookie={flow.cookie:#x},{flow.text}\n" for flow in desired))
            # Exit code 0: no difference; 2: differences printed.
            out = await self._ofctl("diff-flows", name, self.target, ok=(0, 2))
        finally:
            os.unlink(name)
        return diff_cookies(out)

    async def apply(self, diff: FlowDiff) -> None:
        """Apply a diff in one atomic bundle. Idempotent: an empty diff sends nothing, and a
        re-applied diff deletes nothing that is absent and re-adds identical flows only."""
        if diff.empty:
            return
        fd, name = tempfile.mkstemp(prefix="voile-flows-", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(diff.bundle_lines()) + "\n")
            await self._ofctl("--bundle", "add-flows", self.target, name)
        finally:
            os.unlink(name)
        log.info(
            "flows applied bridge=%s added=%d deleted=%d",
            self.bridge,
            len(diff.add),
            len(diff.delete),
        )

    async def delete_all(self) -> None:
        """Delete every Voile flow of the bridge (cleanup). Idempotent."""
        await self._ofctl("del-flows", self.target, COOKIE_MATCH)
