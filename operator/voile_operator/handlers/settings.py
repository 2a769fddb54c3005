"""kopf settings for Voile: our finalizer, annotation storage under voile.dev, events, workers.

Progress and diff-base go to annotations, not status: status is shared with the node agents by
server-side apply, and kopf's own status patches would fight over it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from voile.api import constants as c


class _QuietEvents(logging.Filter):
    """kopf logs every run of an event handler at INFO ("Handler 'endpoint-event' succeeded."):
    one line per watch event, which at 1,000 objects is most of the operator's CPU and log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Handler '") and "-event' succeeded" in message)


def operator_settings(identity: str) -> kopf.OperatorSettings:
    logging.getLogger("kopf.objects").addFilter(_QuietEvents())
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = c.KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    # Events: retries and failures (WARNING) from kopf's logs, plus our explicit Normal events
    # (Allocated, AgentGone); INFO-level chatter ("Handler succeeded") would double the API load.
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "voile-operator"
    settings.posting.reporting_instance = identity
    settings.posting.event_name_prefix = "voile-operator-"
    # One worker per object with events, gone after 2 s without any. Not limited (kopf's
    # default): with a limit, the objects beyond it wait until a worker idles out, so a start
    # with 2,500 Endpoints against a limit of 1,000 and 10 s idling took more than 10 s before
    # the last ones (and every handler, kopf calls none before all are indexed) were seen.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 2.0
    settings.queueing.error_delays = (1, 1, 2, 3, 5, 8)
    # Watches: server-side timeout with a client-side margin, reconnect quickly.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 0.5
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.peering.standalone = True  # leadership is our Lease (see voile_operator.main)
    settings.peering.clusterwide = True
    settings.execution.max_workers = 4  # only sync handlers would use threads; ours are async
    return settings


@kopf.on.login(id="voile-login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The kubeconfig named by --kubeconfig (main exports it as $KUBECONFIG), else the in-cluster
    ServiceAccount. Read at login time: kubernetes.config freezes $KUBECONFIG at import."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)
