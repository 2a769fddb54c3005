"""An OVSDB ``echo`` (JSON-RPC, RFC 7047 section 4.1.11) on a connection of its own, with a
deadline: whether ovsdb-server answers now. ovsdbapp's replica cannot tell (it serves reads
from memory while the server is stopped), and its one connection thread must not be the one
that waits."""

from __future__ import annotations

import asyncio
import json

from voile.errors import DatapathError

_REQUEST = json.dumps({"id": "voile-echo", "method": "echo", "params": []}).encode()


async def _open(connection: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, _, where = connection.partition(":")
    if kind == "unix":
        return await asyncio.open_unix_connection(where)
    if kind == "tcp":
        host, _, port = where.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port))
    raise DatapathError(f"cannot echo OVSDB at {connection}: only unix: and tcp: are supported")


async def echo(connection: str, *, timeout: float) -> None:
    """Send one echo and wait at most ``timeout`` s for its reply. Raises DatapathError."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(connection)
            try:
                writer.write(_REQUEST)
                await writer.drain()
                await _reply(reader)
            finally:
                writer.close()
    except TimeoutError:
        raise DatapathError(
            f"OVSDB at {connection} did not answer an echo within {timeout:g}s"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatapathError(f"OVSDB at {connection} did not answer an echo: {exc}") from exc


async def _reply(reader: asyncio.StreamReader) -> None:
    buffer = ""
    decoder = json.JSONDecoder()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            raise DatapathError("the connection closed before the echo reply")
        buffer += chunk.decode()
        try:
            message, _ = decoder.raw_decode(buffer.lstrip())
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("id") == "voile-echo":
            return
        buffer = ""
