"""Requests per endpoint per minute, as Azure Monitor counts them for a managed endpoint.

The router adds one to the current minute's bucket for every request it routes to a deployment
(authenticated and routed: what the endpoint served). Counts are per minute like Azure's
``RequestsPerMinute`` metric, so a window counts every bucket it overlaps: up to a minute more
than the exact window, never less.
"""

from __future__ import annotations

import math
import sqlite3
import time

BUCKET_S = 60


def count_request(db: sqlite3.Connection, endpoint: str, at: float | None = None) -> None:
    minute = int((time.time() if at is None else at) // BUCKET_S)
    db.execute(
        "INSERT INTO requests (endpoint, minute, count) VALUES (?, ?, 1)"
        " ON CONFLICT (endpoint, minute) DO UPDATE SET count = count + 1",
        (endpoint, minute),
    )


def request_count(db: sqlite3.Connection, endpoint: str, window_s: float, at: float | None = None) -> int:
    now = time.time() if at is None else at
    first = math.floor((now - window_s) / BUCKET_S)
    row = db.execute(
        "SELECT COALESCE(SUM(count), 0) FROM requests WHERE endpoint = ? AND minute >= ?", (endpoint, first)
    ).fetchone()
    return int(row[0])
