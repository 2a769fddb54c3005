"""An aiohttp application served on a unix socket that only root may use: the one way the
agent's doors (the local attach API, the Docker plugin) listen."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from aiohttp import web


def prepare_path(path: Path) -> None:
    """The socket's directory, and no stale socket in the way; refuses to remove anything that
    is not a socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        path.unlink()


class RootSocket:
    """Serves ``app`` on ``path``: created with mode 0600 (no window where it is wider), owned
    by root. ``stop`` is idempotent and removes the socket."""

    def __init__(self, app: web.Application, path: Path) -> None:
        self.app = app
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        prepare_path(self.path)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        old = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        os.chown(self.path, 0, 0)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
