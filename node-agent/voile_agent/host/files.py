"""The agent's files on the host, and their removal on uninstall: the CNI plugin binary and
conflist the chart's init container installed, the agent's state and its CNI spool. Every verb is
idempotent (a missing file is a no-op) and removes only what is Voile's: a conflist whose plugins
are not ``type: voile`` stays, and an unreadable one is an error, never a removal.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from voile.errors import VoileError

log = logging.getLogger(__name__)

PLUGIN_TYPE = "voile"


def remove_file(path: Path) -> bool:
    """Remove one file. Idempotent: False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.info("removed %s", path)
    return True


def remove_matching(directory: Path, patterns: Iterable[str]) -> int:
    """Remove the files of ``directory`` (not below) matching any glob of ``patterns``.
    Idempotent: 0 when the directory or the files are not there."""
    if not directory.is_dir():
        return 0
    removed = 0
    for pattern in patterns:
        for path in directory.glob(pattern):
            if path.is_file() and remove_file(path):
                removed += 1
    return removed


def remove_empty_dir(directory: Path) -> bool:
    """Remove a directory if it is empty. Idempotent: False when it is missing, not empty, or a
    mount point (a hostPath the kubelet made, seen from inside the agent's container)."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            return False
        raise VoileError(f"cannot remove {directory}: {exc}") from exc
    log.info("removed %s", directory)
    return True


def is_voile_conflist(text: str) -> bool:
    """A CNI configuration (a conflist, or a single plugin's conf) whose plugins are all Voile's."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    plugins = doc.get("plugins", [doc])
    return (
        isinstance(plugins, list)
        and bool(plugins)
        and all(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)
    )


def remove_conflist(path: Path) -> bool:
    """Remove the chart's conflist, only if it is Voile's. Idempotent: False when missing or
    not Voile's (it is then left, with a warning). Raises if it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise VoileError(f"cannot read {path}: {exc}") from exc
    if not is_voile_conflist(text):
        log.warning("left %s: not a Voile conflist", path)
        return False
    return remove_file(path)
