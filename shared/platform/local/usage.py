"""Requests per endpoint per minute, as Azure Monitor counts them for a managed endpoint.

The router adds one to the current minute's bucket for every request it routes to a deployment
(authenticated and routed: what the endpoint served). Counts are per minute like Azure's
``RequestsPerMinute`` metric, and read back as the port's ``RequestCounts``.
"""

from __future__ import annotations

import math
import sqlite3
import time

from shared.platform.port import MINUTE_S, RequestCounts


def count_request(db: sqlite3.Connection, endpoint: str, at: float | None = None) -> None:
    minute = int((time.time() if at is None else at) // MINUTE_S)
    db.execute(
        "INSERT INTO requests (endpoint, minute, count) VALUES (?, ?, 1)"
        " ON CONFLICT (endpoint, minute) DO UPDATE SET count = count + 1",
        (endpoint, minute),
    )


def request_counts(db: sqlite3.Connection, endpoint: str, window_s: float, at: float | None = None) -> RequestCounts:
    """The endpoint's per-minute counts over every minute the last ``window_s`` seconds overlap."""
    now = time.time() if at is None else at
    first = math.floor((now - window_s) / MINUTE_S)
    rows = db.execute("SELECT minute, count FROM requests WHERE endpoint = ? AND minute >= ?", (endpoint, first))
    return RequestCounts(as_of=now, window_s=window_s, per_minute=dict(rows.fetchall()))
