"""How the agent's informer goes on after a watch failed (``informer.restart_after``): resume from
the last resourceVersion unless the API server said it is gone or something else changed. Pure."""

from __future__ import annotations

import pytest

from voile import kube
from voile_agent.controller.informer import Restart, restart_after


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (kube.Unreachable("connection reset"), Restart.RESUME),
        (ConnectionRefusedError(111, "refused"), Restart.RESUME),
        (TimeoutError(), Restart.RESUME),
        (kube.ApiError(429, "TooManyRequests", "later"), Restart.RESUME),
        (kube.ApiError(500, "InternalError", "etcdserver: request timed out"), Restart.RESUME),
        (kube.ApiError(503, "ServiceUnavailable", "starting"), Restart.RESUME),
        (kube.Gone(410, "Expired", "too old resource version"), Restart.RELIST),
        (kube.ApiError(403, "Forbidden", "RBAC changed"), Restart.RELIST),
        (kube.NotFound(404, "NotFound", "the CRD was re-installed"), Restart.RELIST),
        (kube.ApiError(400, "BadRequest", "bad selector"), Restart.RELIST),
        (ValueError("a line that is not JSON"), Restart.RELIST),
    ],
)
def test_restart_after(exc: BaseException, expected: Restart) -> None:
    assert restart_after(exc) is expected
