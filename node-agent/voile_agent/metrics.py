"""Prometheus metrics of the node agent (served on --metrics-port by main; 0 = off).

What an operator of a node wants to see without reading logs: how long passes take and whether
they fail, how many endpoints are plumbed or failing, how much the datapath's forwarding entries
churn (OpenFlow rules for the OVS backend), and whether the heartbeat reaches the API server.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PASS_SECONDS = Histogram(
    "voile_agent_reconcile_seconds",
    "Time of one observe -> plan -> apply pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PASS_ERRORS = Counter(
    "voile_agent_reconcile_errors_total",
    "Passes aborted (the datapath did not answer, or an error) and retried.",
)
ENDPOINTS_PLUMBED = Gauge(
    "voile_agent_endpoints_plumbed", "Local endpoints the datapath forwards to (last pass)."
)
ENDPOINTS_FAILED = Gauge(
    "voile_agent_endpoints_failed", "Local endpoints whose plumbing failed (last pass)."
)
FLOWS_CHANGED = Counter(
    "voile_agent_flows_changed_total",
    "Forwarding entries (OpenFlow rules for ovs) added, deleted, or replaced after a change "
    "outside the agent (op=repair).",
    ["op"],
)
PORTS_DELETED = Counter("voile_agent_ports_deleted_total", "Stale endpoint ports removed.")
HEARTBEAT_FAILURES = Counter(
    "voile_agent_heartbeat_failures_total", "Heartbeat Lease renewals that failed."
)
PROBE_RTT = Histogram(
    "voile_agent_probe_rtt_seconds",
    "Round-trip time of data-path probes, per network, peer VTEP and size (small or full MTU).",
    ["network", "peer", "size"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
PROBES_SENT = Counter(
    "voile_agent_probes_sent_total", "Data-path probes sent.", ["network", "peer", "size"]
)
PROBES_LOST = Counter(
    "voile_agent_probes_lost_total",
    "Data-path probes without a reply.",
    ["network", "peer", "size"],
)
BROKEN_PATHS = Gauge(
    "voile_agent_broken_paths",
    "Paths (network, peer VTEP) whose probes say unreachable or MTU-broken.",
)
DATAPATH_HEALTHY = Gauge(
    "voile_agent_datapath_healthy",
    "1 while the datapath's daemons answer and hold their flows (the watchdog's last check).",
)
DATAPATH_FAULTS = Counter(
    "voile_agent_datapath_faults_total",
    "Datapath faults the watchdog saw begin (DatapathUnavailable, DatapathRestarted, ...).",
    ["reason"],
)
WATCH_RESTARTS = Counter(
    "voile_agent_watch_restarts_total",
    "Lists of the agent's watches (how=list: the first, and after a 410 Gone or a refusal) and "
    "watches resumed from their last resourceVersion after a connection failure (how=resume).",
    ["how"],
)
WATCH_EVENTS = Counter(
    "voile_agent_watch_events_total",
    "Watch events received, per informer (local-endpoints, remote-endpoints, networks, traces).",
    ["informer"],
)
WATCH_WAKES = Counter(
    "voile_agent_watch_wakes_total",
    "Watch events (and re-lists) that woke the agent: for remote Endpoints and networks only "
    "those that changed what the datapath plan uses.",
    ["informer"],
)
INVALID_OBJECTS = Counter(
    "voile_agent_invalid_objects_total",
    "Watched objects (versions) that failed to parse; their last valid version is kept.",
    ["informer"],
)
