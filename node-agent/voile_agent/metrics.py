"""Prometheus metrics of the node agent (served on --metrics-port by main; 0 = off).

What an operator of a node wants to see without reading logs: how long passes take and whether
they fail, how many endpoints are plumbed or failing, how much the flow table churns, and whether
the heartbeat reaches the API server.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PASS_SECONDS = Histogram(
    "voile_agent_reconcile_seconds",
    "Time of one observe -> plan -> apply pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PASS_ERRORS = Counter("voile_agent_reconcile_errors_total", "Passes that raised and were retried.")
ENDPOINTS_PLUMBED = Gauge(
    "voile_agent_endpoints_plumbed", "Local endpoints plumbed with an OpenFlow port (last pass)."
)
ENDPOINTS_FAILED = Gauge(
    "voile_agent_endpoints_failed", "Local endpoints whose plumbing failed (last pass)."
)
FLOWS_CHANGED = Counter(
    "voile_agent_flows_changed_total",
    "OpenFlow rules added, deleted, or replaced after a change outside the agent (op=repair).",
    ["op"],
)
PORTS_DELETED = Counter("voile_agent_ports_deleted_total", "Stale endpoint ports removed.")
HEARTBEAT_FAILURES = Counter(
    "voile_agent_heartbeat_failures_total", "Heartbeat Lease renewals that failed."
)
