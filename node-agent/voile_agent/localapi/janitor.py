"""Finishing what CNI runtimes could not: at start and then periodically, the agent

- detaches every pending DEL the CNI plugin recorded in the spool directory while the agent did
  not answer (``--cni-spool-dir``; one JSON file per container and interface), and removes a
  record only after its detach succeeded;
- detaches every CNI-made Endpoint of this host whose network namespace is gone (``stat`` says
  ENOENT inside a directory that is there: a real observation, never a failed read). That covers
  an agent killed while ADD was in flight and a runtime that never calls DEL.

Both go through the local API's own detach, so they wait until the port, the veth and the
address claim are gone, exactly as a DEL does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from voile import attach as lib
from voile.api import attach as plan
from voile.api.attach import AttachmentRef
from voile.errors import ValidationError
from voile_agent.localapi.service import AttachService

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
PARALLEL = 8
STALE_TEMP_SECONDS = 60.0
INVALID_SUFFIX = ".invalid"


def netns_gone(path: str) -> bool:
    """True only when the namespace file is observed missing (ENOENT) in a directory that exists;
    any other outcome, including a failed read, is "not gone"."""
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("netns not observable path=%s error=%s", path, exc)
        return False
    else:
        return False
    try:
        return stat.S_ISDIR(os.stat(os.path.dirname(path)).st_mode)
    except OSError:
        return False  # the directory itself is not visible here: no conclusion


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SweepResult:
    drained: tuple[str, ...] = ()  # spool records detached and removed
    reaped: tuple[str, ...] = ()  # Endpoints detached because their netns is gone
    failed: int = 0


class Janitor:
    def __init__(
        self,
        service: AttachService,
        spool_dir: str | None,
        *,
        interval: float = DEFAULT_INTERVAL,
        gone: Callable[[str], bool] = netns_gone,
    ) -> None:
        self.service = service
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.interval = interval
        self.gone = gone

    async def run(self) -> None:
        """Sweep once the agent has listed its Endpoints, then every ``interval`` seconds."""
        await self.service.agent.view.wait_synced()
        while True:
            try:
                result = await self.sweep()
            except Exception:
                log.exception("CNI janitor sweep failed; retrying")
            else:
                if result.drained or result.reaped or result.failed:
                    log.info(
                        "CNI janitor drained=%d reaped=%d failed=%d",
                        len(result.drained),
                        len(result.reaped),
                        result.failed,
                    )
            await asyncio.sleep(self.interval)

    async def sweep(self) -> SweepResult:
        """One pass over the spool and the CNI attachments. Idempotent."""
        drained, failed_spool = await self.drain_spool()
        reaped, failed_reap = await self.reap_orphans()
        return SweepResult(
            drained=tuple(drained), reaped=tuple(reaped), failed=failed_spool + failed_reap
        )

    # -- the spool -----------------------------------------------------------------------------

    def _records(self) -> list[Path]:
        if self.spool_dir is None:
            return []
        try:
            entries = sorted(self.spool_dir.iterdir())
        except FileNotFoundError:
            return []
        records = []
        for path in entries:
            if path.name.startswith(".pending-"):
                self._drop_stale_temp(path)
            elif path.suffix == plan.PENDING_SUFFIX and path.is_file():
                records.append(path)
        return records

    @staticmethod
    def _drop_stale_temp(path: Path) -> None:
        """A temporary file of a plugin that died before its rename: never a record."""
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                path.unlink()

    def _parse(self, path: Path) -> AttachmentRef | None:
        try:
            raw = json.loads(path.read_text())
            return plan.parse_pending(raw, default_namespace=self.service.namespace)
        except FileNotFoundError:
            return None  # taken by another sweep
        except (ValueError, ValidationError) as exc:
            # Kept for a human to read, out of the way of the next sweeps.
            aside = path.with_name(path.name + INVALID_SUFFIX)
            log.error("pending CNI record is invalid, moved aside path=%s error=%s", aside, exc)
            with contextlib.suppress(OSError):
                path.rename(aside)
            return None

    def _pending(self) -> list[tuple[Path, AttachmentRef]]:
        jobs = []
        for path in self._records():
            ref = self._parse(path)
            if ref is not None:
                jobs.append((path, ref))
        return jobs

    async def drain_spool(self) -> tuple[list[str], int]:
        """Detach each pending record; remove a record only after its detach succeeded."""
        jobs = await asyncio.to_thread(self._pending)

        async def finish(path: Path, ref: AttachmentRef) -> str:
            await self.service.detach(ref)
            await asyncio.to_thread(path.unlink, missing_ok=True)
            log.info("pending CNI DEL finished record=%s endpoint=%s", path.name, ref.name)
            return path.name

        return await self._bounded([finish(p, r) for p, r in jobs])

    # -- attachments whose namespace is gone ---------------------------------------------------

    async def reap_orphans(self) -> tuple[list[str], int]:
        endpoints = self.service.agent.endpoints()
        orphans = await asyncio.to_thread(plan.cni_netns_orphans, endpoints, self.gone)

        async def reap(ref: AttachmentRef) -> str:
            log.info(
                "CNI attachment's netns is gone, detaching endpoint=%s/%s owner=%s",
                ref.namespace,
                ref.name,
                ref.owner.id,
            )
            await self.service.detach(ref)
            return f"{ref.namespace}/{ref.name}"

        return await self._bounded([reap(r) for r in orphans])

    @staticmethod
    async def _bounded(jobs: Sequence[Awaitable[str]]) -> tuple[list[str], int]:
        """Run at most ``PARALLEL`` detaches at a time; the names done and the failures."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(job: Awaitable[str]) -> str | None:
            async with gate:
                try:
                    return await job
                except lib.AttachError as exc:
                    level = logging.INFO if exc.temporary else logging.WARNING
                    log.log(level, "CNI janitor detach not done yet error=%s", exc)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.warning("CNI janitor cannot remove a record error=%s", exc)
                return None

        done = await asyncio.gather(*(one(job) for job in jobs))
        names = [name for name in done if name is not None]
        return names, len(done) - len(names)
