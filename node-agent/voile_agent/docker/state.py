"""The driver's one piece of state: which OverlayNetwork each Docker network of this host is.

Docker tells the driver a network's name and options only once, in CreateNetwork; every later
call carries the NetworkID alone, and Docker replays nothing to a local-scope driver after the
driver (the agent) or the daemon restarts. So the mapping is kept in a file under
``--state-dir``, beside what the host's dockerd keeps in its own local store: per host, like the
NetworkIDs themselves, and lost only with the host. Written atomically (a temporary file in the
same directory, fsync, rename, fsync of the directory), so a crash leaves the old or the new
mapping, never half of one. A file that cannot be read is an error, never "no networks".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voile.api.model import DNS_LABEL, parse_cidr
from voile.errors import ValidationError, VoileError

FILE_NAME = "docker-networks.json"
VERSION = 1


class StateError(VoileError):
    """The state file exists but cannot be read or written."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Binding:
    """A Docker network of this host and the OverlayNetwork it is."""

    network_id: str
    network: str
    cidr: ipaddress.IPv4Network


def parse(raw: object) -> dict[str, Binding]:
    """The file's content. Pure; raises StateError naming what is wrong."""
    if not isinstance(raw, Mapping) or raw.get("version") != VERSION:
        raise StateError(f"not a version {VERSION} Voile Docker state file")
    networks = raw.get("networks")
    if not isinstance(networks, Mapping):
        raise StateError("'networks' is not an object")
    result = {}
    for network_id, item in networks.items():
        if not isinstance(item, Mapping):
            raise StateError(f"network {network_id} is not an object")
        name = item.get("network")
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            raise StateError(f"network {network_id} names no OverlayNetwork")
        try:
            cidr = parse_cidr(item.get("cidr"), f"networks.{network_id}.cidr")
        except ValidationError as exc:
            raise StateError(str(exc)) from None
        result[str(network_id)] = Binding(network_id=str(network_id), network=name, cidr=cidr)
    return result


def render(bindings: Mapping[str, Binding]) -> dict[str, Any]:
    return {
        "version": VERSION,
        "networks": {
            b.network_id: {"network": b.network, "cidr": str(b.cidr)}
            for b in sorted(bindings.values(), key=lambda b: b.network_id)
        },
    }


class NetworkStore:
    """The bindings of this host, in memory and in ``<directory>/docker-networks.json``."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self._bindings: dict[str, Binding] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file; a missing file is no networks, an unreadable one raises StateError."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self._bindings = {}
            return
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{self.path} is not JSON: {exc}") from exc
        try:
            self._bindings = parse(raw)
        except StateError as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    def get(self, network_id: str) -> Binding | None:
        return self._bindings.get(network_id)

    def all(self) -> list[Binding]:
        return list(self._bindings.values())

    async def put(self, binding: Binding) -> None:
        """Remember a network. Idempotent."""
        async with self._lock:
            if self._bindings.get(binding.network_id) == binding:
                return
            bindings = {**self._bindings, binding.network_id: binding}
            await asyncio.to_thread(self._write, bindings)
            self._bindings = bindings

    async def remove(self, network_id: str) -> bool:
        """Forget a network. Idempotent: False when it was not known."""
        async with self._lock:
            if network_id not in self._bindings:
                return False
            bindings = {k: v for k, v in self._bindings.items() if k != network_id}
            await asyncio.to_thread(self._write, bindings)
            self._bindings = bindings
            return True

    def _write(self, bindings: Mapping[str, Binding]) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(render(bindings), f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateError(f"cannot write {self.path}: {exc}") from exc
