"""The local workspace's state: one sqlite database in WAL mode, shared by every process.

The adapter (in the Functions host or the local host), the trainer and the routers all read and
write it at once. sqlite gives them what atomic JSON files would not: a transaction that checks
and changes several rows together (e.g. "no job is running, so start the oldest queued one") with
a lock held across processes. WAL lets readers go on while one process writes. Every call opens
its own short-lived connection, so threads and forked processes never share one.

The schema is created on first use; this is laptop state, so there are no migrations: delete
``data_dir`` after a schema change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    parameters TEXT NOT NULL,
    display_name TEXT NOT NULL,
    error TEXT,
    pid INTEGER,
    pid_started REAL,
    mlflow_run_id TEXT,
    model_uri TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    state TEXT NOT NULL,
    traffic TEXT NOT NULL,
    port INTEGER NOT NULL,
    pid INTEGER,
    pid_started REAL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    endpoint TEXT NOT NULL,
    name TEXT NOT NULL,
    model_id TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    instance_count INTEGER NOT NULL,
    tags TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    port INTEGER NOT NULL,
    pid INTEGER,
    pid_started REAL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (endpoint, name)
);
CREATE TABLE IF NOT EXISTS requests (
    endpoint TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (endpoint, minute)
);
"""


def now() -> str:
    """A row's timestamp: UTC ISO 8601, which sorts as it reads."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Store:
    """Transactions on the state database at ``path`` (created with its schema when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600)  # sqlite gives its -wal and -shm files the database's mode
        path.chmod(0o600)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (each statement sees a consistent snapshot)."""
        with closing(self._connect()) as db:
            yield db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so check-then-change is atomic."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
