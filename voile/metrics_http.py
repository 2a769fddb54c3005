"""The Prometheus metrics port of the agent and the operator: ``GET /metrics`` and nothing else.

prometheus_client's own ``start_http_server`` answers any path with the metrics (its docs: "the
URI path for GET is not constrained to the documented /metrics"), waits forever on a client that
sends nothing, holding a thread, and writes nothing useful for a malformed request. This server
keeps its exposition (``make_wsgi_app``: content negotiation, gzip, ``name[]`` filters) behind a
strict door: ``GET /metrics`` (any query) is 200; another method is 405, another path 404, a
request the HTTP parser refuses is 400 (or 414/431); never a traceback. Each connection gets
``IDLE_TIMEOUT`` seconds to send its request, then it is closed and its thread ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PATH = "/metrics"
IDLE_TIMEOUT = 10.0  # seconds a connection may take to send its request

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def strict_app(metrics: WsgiApp) -> WsgiApp:
    """``metrics`` for ``GET /metrics`` only; 405 / 404 with a one-line text body otherwise."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if environ.get("PATH_INFO", "") != PATH:
            return _plain(start_response, "404 Not Found", f"only {PATH} is served")
        if method != "GET":
            return _plain(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET")])
        return metrics(environ, start_response)

    return app


def _plain(
    start_response: StartResponse,
    status: str,
    text: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = f"{status}: {text}\n".encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(extra or []),
        ],
    )
    return [body]


class _Handler(WSGIRequestHandler):
    """One request per connection (wsgiref's), a read deadline, and no access log on stderr."""

    timeout = IDLE_TIMEOUT
    # Error replies to a request line the parser cannot read carry a status line (the base's
    # HTTP/0.9 default would send a bare HTML page).
    default_request_version = "HTTP/1.0"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # An HTTP version other than 1.x is the client's error: 400, not the base's 505.
        super().send_error(400 if code == 505 else code, message, explain)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.requestline.split()) == 2:  # HTTP/0.9: no headers to answer with
            self.send_error(400, "HTTP/0.9 is not served")
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s", format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # Handler threads are not kept for a join at close (ThreadingMixIn would keep every one of
    # them in a list until server_close: a leak on a long-running server).
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or stalls is its problem; never a traceback on our stderr.
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """The metrics port, served by a daemon thread; ``close`` stops it."""

    def __init__(
        self,
        port: int,
        *,
        address: str = "0.0.0.0",
        registry: Collector = REGISTRY,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        handler = type("MetricsHandler", (_Handler,), {"timeout": idle_timeout})
        self._httpd = make_server(
            address,
            port,
            strict_app(make_wsgi_app(registry)),
            server_class=_Server,
            handler_class=handler,
        )
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and close the listening socket. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
