"""Logging for every Voile process: one text format and one JSON schema.

JSON lines carry ``time`` (RFC 3339, UTC, milliseconds), ``level`` (lower case), ``logger``,
``message``, and ``exc`` when an exception was logged: the same keys for the operator and the
agent, so one log pipeline reads both.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("ovsdbapp", "pyroute2", "asyncio", "aiohttp")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(level: str, fmt: str, *, quiet: Iterable[str] = QUIET) -> None:
    """Log to stderr at ``level`` in ``fmt`` (text or json); chatty libraries at INFO at most."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    floor = max(logging.INFO, logging.getLogger().level)
    for name in quiet:
        logging.getLogger(name).setLevel(floor)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
