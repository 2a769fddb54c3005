"""The metrics port's HTTP server (voile.metrics_http), real: a server on a kernel-chosen port of
127.0.0.1 serving the process's real registry, spoken to with raw sockets. The agent's port under
fuzzing is in tests/e2e/test_faults.py; this file pins the answers request by request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests import fuzzing
from voile.metrics_http import MetricsServer

IDLE = 0.5


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(0, address="127.0.0.1", idle_timeout=IDLE).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /metrics?name[]=process_cpu_seconds_total HTTP/1.0\r\n\r\n", 200),
        (b"GET /%6detrics HTTP/1.1\r\n\r\n", 200),  # the path as decoded
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /favicon.ico HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404),
        (b"GET //metrics HTTP/1.1\r\n\r\n", 200),  # http.server collapses leading slashes
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", 405),
        (b"BREW /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /metrics HTTP/2.0\r\n\r\n", 400),  # not the base's 505
        (b"\x00\xff\xfe garbage\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_only_get_metrics_is_served_and_the_rest_is_a_4xx(
    server: MetricsServer, request_bytes: bytes, status: int
) -> None:
    outcome = fuzzing.send(fuzzing.TcpDoor(server.port), request_bytes)
    assert outcome.status == status, outcome
    assert b"Traceback" not in outcome.body
    if status == 200:
        assert outcome.body.startswith(b"# HELP")


def test_a_silent_client_is_disconnected_and_its_thread_ends(server: MetricsServer) -> None:
    before = threading.active_count()
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE * 10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, without an answer
        waited = time.monotonic() - started
    assert IDLE * 0.8 <= waited < IDLE * 8
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_fuzzed_requests_get_a_4xx_unless_they_are_get_metrics(server: MetricsServer) -> None:
    threads = threading.active_count()
    report = fuzzing.fuzz(
        fuzzing.TcpDoor(server.port), fuzzing.METRICS_PATHS, 300, fuzzing.metrics_verdict
    )
    assert report.requests == 300
    assert report.failures == [], report.failures[:5]
    assert report.statuses[200] > 0 and report.statuses[404] > 0 and report.statuses[405] > 0
    assert (
        fuzzing.send(fuzzing.TcpDoor(server.port), b"GET /metrics HTTP/1.1\r\n\r\n").status == 200
    )
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads
