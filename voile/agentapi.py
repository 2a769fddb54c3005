"""A small client of a node agent's local attach API (docs/localapi.md), over its unix socket.

For Python callers on the host: the lab, the tests, ``kubectl voile``. Plugins that must run
without Python (the CNI shim) speak the same protocol themselves.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """``request`` returns (HTTP status, decoded JSON body); connection errors raise OSError."""

    def __init__(self, socket_path: str | Path, *, timeout: float = 120.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: object = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            return resp.status, json.loads(text) if text else None
        finally:
            conn.close()

    def attach(self, **request: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/attach", request)

    def detach(self, **ref: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/detach", ref)

    def check(self, **ref: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/check", ref)

    def status(self) -> tuple[int, Any]:
        return self.request("GET", "/v1/status")
