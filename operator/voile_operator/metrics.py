"""Prometheus metrics of the operator (served on --metrics-port by main).

Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms, and the pool
usage as two gauges (allocated and capacity) so a ratio is one PromQL division.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ALLOCATIONS = Counter(
    "voile_operator_allocations_total",
    "Addresses claimed for Endpoints (new claims, not reuses after a restart).",
    ["network"],
)
ALLOCATION_FAILURES = Counter(
    "voile_operator_allocation_failures_total",
    "Endpoint reconciles that ended without an address, by condition reason.",
    ["reason"],
)
RELEASES = Counter("voile_operator_releases_total", "Address claims released.", ["network"])
RECONCILE_SECONDS = Histogram(
    "voile_operator_reconcile_seconds",
    "Time of one reconcile, by kind (endpoint, network, release).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POOL_ALLOCATED = Gauge(
    "voile_operator_pool_allocated", "Addresses claimed in a network.", ["network"]
)
POOL_CAPACITY = Gauge(
    "voile_operator_pool_capacity", "Addresses a network can hand out.", ["network"]
)
VNI_CONFLICTS = Counter(
    "voile_operator_vni_conflicts_total", "Reconciles that found the requested VNI taken."
)
CLAIMS_COLLECTED = Counter(
    "voile_operator_claims_collected_total", "Orphaned claims deleted by the collector.", ["kind"]
)
COLLECTOR_ROUNDS = Counter(
    "voile_operator_collector_rounds_total", "Collector rounds, by result.", ["result"]
)
LEADER = Gauge("voile_operator_leader", "1 while this replica holds the leader Lease.")
BROKEN_PAIRS = Gauge(
    "voile_operator_network_broken_pairs",
    "Node pairs of a network whose data-path probes fail (unreachable, one-way or MTU).",
    ["network"],
)
NODES_LOST = Gauge(
    "voile_operator_nodes_lost",
    "Nodes whose agent has not renewed its heartbeat Lease for its duration (their Endpoints "
    "show Ready=Unknown NodeLost and the other nodes do not forward to them).",
)
WATCH_EVENTS = Counter(
    "voile_operator_watch_events_total",
    "Watch events received by the operator's own caches, per informer (endpoints, ipclaims, "
    "networks).",
    ["informer"],
)
WATCH_RESTARTS = Counter(
    "voile_operator_watch_restarts_total",
    "Lists of the operator's watches (how=list: the first, and after a 410 Gone or a refusal) "
    "and watches resumed from their last resourceVersion after a connection failure "
    "(how=resume).",
    ["how"],
)
INVALID_OBJECTS = Counter(
    "voile_operator_invalid_objects_total",
    "Watched objects (versions) the operator's caches could not read; the last good one is kept.",
    ["informer"],
)
CACHED_OBJECTS = Gauge(
    "voile_operator_cached_objects",
    "Objects in the operator's watch caches, per informer (kept warm on standby replicas too).",
    ["informer"],
)
