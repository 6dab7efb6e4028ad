"""Online endpoints and deployments on this machine: a router process per endpoint, a server per deployment.

A managed online endpoint is a scoring URI with a key in front of deployments that each serve a
model. Locally, ``router`` is the endpoint (key check, traffic split, the
``azureml-model-deployment`` header, request counts) and ``scoring_server`` is a deployment (the
registered model behind the managed endpoint's scoring contract); both listen on 127.0.0.1 only.

``begin_*`` starts or stops processes and returns at once. ``get_*`` observe: a new process is
``creating`` until it answers its health check (``succeeded``), or ``failed`` with the end of its
log if it died first (a model that does not load). A server that was ``succeeded`` and has since
died reads ``failed`` without that being stored, because ``recover`` brings it back; one that
``shutdown`` stopped on purpose (no pid recorded) keeps its state until ``recover`` restarts it,
then reads ``updating`` until it answers again.

Ports, pids, traffic and states live in the state database, keys in owner-only files (``keys``),
so a new ``LocalPlatform`` in another process sees everything, and ``recover`` restarts each
process on its recorded port when that port is still free (else on a new one, which changes the
scoring URI, as it would on Azure after a re-creation). Traffic routing is a smooth weighted
round-robin, not random: 90/10 over ten requests is exactly nine and one, so tests can count.
Deleting a deployment that still has traffic drops it from the split (the rest keep their weights);
whether Azure refuses instead was not checked here, so rollout code should set traffic first anyway.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from sqlite3 import Connection, Row
from typing import Any

from shared.config import Settings
from shared.platform.local import keys, usage
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HOST, answers, free_port, port_free
from shared.platform.local.processes import Proc, alive, log_tail, spawn, stop
from shared.platform.local.store import Store, now
from shared.platform.port import (
    ConflictError,
    DeploymentInfo,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    NotFoundError,
    PlatformConfigError,
    ProvisioningState,
    RequestCounts,
)

ROUTER_MODULE = "shared.platform.local.router"
SERVER_MODULE = "shared.platform.local.scoring_server"
DEPLOYMENT_HEADER = "azureml-model-deployment"
SECRET_HEADER = "x-ftpilot-deployment-secret"  # what a deployment demands of every request (``keys``)
# After its deadline a request's handler waits this much longer for the generation worker to notice.
DEADLINE_GRACE_S = 5.0
# Azure ML's rule for endpoint and deployment names (they also name files here).
NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")
ERROR_LINES = 3  # of a dead server's log, as the deployment's error
_PENDING = (ProvisioningState.CREATING, ProvisioningState.UPDATING)
_RUNNABLE = (*_PENDING, ProvisioningState.SUCCEEDED)


def _check_name(kind: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise PlatformConfigError(
            f"{kind} name {name!r}: 3-32 letters, digits and '-', starting with a letter, not ending with '-'"
        )


@dataclass(frozen=True)
class _Server:
    """What endpoints and deployments share: a process serving on a port, with a log."""

    state: ProvisioningState
    port: int
    proc: Proc | None
    log: Path
    ready: Callable[[int], bool]

    def observe(self) -> tuple[ProvisioningState, str | None, bool]:
        """(state now, error, whether that is news to store) from the stored state and the process."""
        if self.proc is None:  # stopped by shutdown(); recover() restarts it
            return self.state, None, False
        if self.state in _PENDING:
            if not alive(self.proc):
                error = f"the server exited before answering:\n{log_tail(self.log, ERROR_LINES)}"
                return ProvisioningState.FAILED, error, True
            if self.ready(self.port):
                return ProvisioningState.SUCCEEDED, None, True
        elif self.state is ProvisioningState.SUCCEEDED and not alive(self.proc):
            error = f"the server (pid {self.proc.pid}) is not running; LocalPlatform.recover() restarts it"
            return ProvisioningState.FAILED, error, False
        return self.state, None, False


class Endpoints:
    """The endpoints and deployments of one local workspace."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)
        self.store = store

    # --- Endpoints -------------------------------------------------------------------------

    def _router_log(self, endpoint: str) -> Path:
        return self.layout.endpoint_dir(endpoint) / "router.log"

    def _endpoint_row(self, db: Connection, name: str) -> Row | None:
        return db.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()

    def _endpoint_info(self, row: Row) -> EndpointInfo:
        server = _Server(
            ProvisioningState(row["state"]), row["port"], _proc(row), self._router_log(row["name"]), _router_ready
        )
        state, _, news = server.observe()
        if news:
            with self.store.write() as db:  # unless another observer or a restart changed the row meanwhile
                db.execute(
                    "UPDATE endpoints SET state = ? WHERE name = ? AND state = ? AND pid IS ?",
                    (state, row["name"], row["state"], row["pid"]),
                )
        return EndpointInfo(
            name=row["name"],
            state=state,
            scoring_uri=scoring_uri(row["port"]),
            traffic=json.loads(row["traffic"]),
            tags=json.loads(row["tags"]),
            created_at=row["created_at"],
        )

    def get_endpoint(self, name: str) -> EndpointInfo | None:
        with self.store.read() as db:
            row = self._endpoint_row(db, name)
        return None if row is None else self._endpoint_info(row)

    def list_endpoints(self) -> list[EndpointInfo]:
        with self.store.read() as db:
            rows = db.execute("SELECT * FROM endpoints ORDER BY created_at").fetchall()
        return [self._endpoint_info(row) for row in rows]

    def begin_create_endpoint(self, request: EndpointRequest) -> None:
        """Start the endpoint's router; an existing endpoint is left as it is."""
        _check_name("endpoint", request.name)
        keys.create_key(self.layout.keys, request.name)
        with self.store.write() as db:
            if self._endpoint_row(db, request.name) is not None:
                return
            port = free_port()
            proc = spawn(ROUTER_MODULE, [request.name, str(port)], self._router_log(request.name), self.settings)
            db.execute(
                "INSERT INTO endpoints (name, description, tags, state, traffic, port, pid, pid_started, created_at)"
                " VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?)",
                (
                    request.name,
                    request.description,
                    json.dumps(dict(request.tags)),
                    ProvisioningState.CREATING,
                    port,
                    proc.pid,
                    proc.started,
                    now(),
                ),
            )

    def begin_set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> None:
        """Replace the endpoint's traffic split (Azure's rule: whole percentages adding up to 100, or all 0)."""
        with self.store.write() as db:
            if self._endpoint_row(db, endpoint) is None:
                raise NotFoundError(f"endpoint {endpoint} does not exist")
            names = {row["name"] for row in db.execute("SELECT name FROM deployments WHERE endpoint = ?", (endpoint,))}
            unknown = sorted(set(traffic) - names)
            if unknown:
                raise NotFoundError(f"endpoint {endpoint} has no deployment {', '.join(unknown)}")
            if any(not isinstance(weight, int) or not 0 <= weight <= 100 for weight in traffic.values()):
                raise PlatformConfigError(f"traffic {dict(traffic)}: each weight is a whole percentage 0-100")
            if sum(traffic.values()) not in (0, 100):
                raise PlatformConfigError(f"traffic {dict(traffic)} adds up to {sum(traffic.values())}, not 100")
            db.execute("UPDATE endpoints SET traffic = ? WHERE name = ?", (json.dumps(dict(traffic)), endpoint))

    def begin_delete_endpoint(self, name: str) -> None:
        """Stop the router and every deployment, then forget the endpoint, its key, counts and logs."""
        with self.store.write() as db:
            row = self._endpoint_row(db, name)
            deployments = db.execute("SELECT * FROM deployments WHERE endpoint = ?", (name,)).fetchall()
            db.execute("DELETE FROM deployments WHERE endpoint = ?", (name,))
            db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            db.execute("DELETE FROM requests WHERE endpoint = ?", (name,))
        for process_row in [*deployments, *([row] if row is not None else [])]:
            stop(_proc(process_row))
        keys.delete_key(self.layout.keys, name)
        shutil.rmtree(self.layout.endpoint_dir(name), ignore_errors=True)

    def key(self, name: str) -> str:
        if self.get_endpoint(name) is None:
            raise NotFoundError(f"endpoint {name} does not exist")
        return keys.read_key(self.layout.keys, name)

    def requests(self, name: str, window_s: float) -> RequestCounts:
        with self.store.read() as db:
            if self._endpoint_row(db, name) is None:
                raise NotFoundError(f"endpoint {name} does not exist")
            return usage.request_counts(db, name, window_s)

    def open_scoring(self, endpoint: str) -> Callable[[str, Mapping[str, Any], float], Any]:
        """A caller of the endpoint's scoring URI with its key, pinned per call to a deployment."""
        from shared.platform.http import scorer  # the adapters' scrubbing JSON client

        info = self.get_endpoint(endpoint)
        if info is None or info.scoring_uri is None:
            raise NotFoundError(f"endpoint {endpoint} does not exist")
        return scorer(info.scoring_uri, keys.read_key(self.layout.keys, endpoint), endpoint)

    # --- Deployments -----------------------------------------------------------------------

    def _server_log(self, endpoint: str, deployment: str) -> Path:
        return self.layout.endpoint_dir(endpoint) / f"{deployment}.log"

    def _deployment_info(self, row: Row) -> DeploymentInfo:
        log = self._server_log(row["endpoint"], row["name"])
        ready = _deployment_ready(self.layout.keys, row["endpoint"], row["name"])
        server = _Server(ProvisioningState(row["state"]), row["port"], _proc(row), log, ready)
        state, error, news = server.observe()
        if news:
            with self.store.write() as db:  # unless another observer or a restart changed the row meanwhile
                db.execute(
                    "UPDATE deployments SET state = ?, error = ?"
                    " WHERE endpoint = ? AND name = ? AND state = ? AND pid IS ?",
                    (state, error, row["endpoint"], row["name"], row["state"], row["pid"]),
                )
        return DeploymentInfo(
            endpoint_name=row["endpoint"],
            name=row["name"],
            state=state,
            model_id=row["model_id"],
            error=error or row["error"],
            created_at=row["created_at"],
        )

    def _deployment_row(self, db: Connection, endpoint: str, name: str) -> Row | None:
        return db.execute("SELECT * FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name)).fetchone()

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo | None:
        with self.store.read() as db:
            row = self._deployment_row(db, endpoint, name)
        return None if row is None else self._deployment_info(row)

    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        with self.store.read() as db:
            rows = db.execute(
                "SELECT * FROM deployments WHERE endpoint = ? ORDER BY created_at", (endpoint,)
            ).fetchall()
        return [self._deployment_info(row) for row in rows]

    def begin_create_deployment(self, request: DeploymentRequest) -> None:
        """Start a server for ``request.model_id`` at 0% traffic; an existing deployment is left as it is."""
        _check_name("deployment", request.name)
        with self.store.write() as db:
            if self._endpoint_row(db, request.endpoint_name) is None:
                raise NotFoundError(f"endpoint {request.endpoint_name} does not exist")
            existing = self._deployment_row(db, request.endpoint_name, request.name)
            if existing is not None:
                if existing["model_id"] != request.model_id:
                    raise ConflictError(
                        f"deployment {request.endpoint_name}/{request.name} already serves model "
                        f"{existing['model_id']}, not {request.model_id}"
                    )
                return
            port = free_port()
            keys.create_deployment_secret(self.layout.keys, request.endpoint_name, request.name)
            proc = self._spawn_server(request.endpoint_name, request.name, port, request.model_id)
            db.execute(
                "INSERT INTO deployments (endpoint, name, model_id, instance_type, instance_count, tags, state,"
                " port, pid, pid_started, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.endpoint_name,
                    request.name,
                    request.model_id,
                    request.instance_type,
                    request.instance_count,
                    json.dumps(dict(request.tags)),
                    ProvisioningState.CREATING,
                    port,
                    proc.pid,
                    proc.started,
                    now(),
                ),
            )

    def begin_delete_deployment(self, endpoint: str, name: str) -> None:
        """Stop the deployment's server and drop it from the traffic split; refused while it takes traffic."""
        with self.store.write() as db:
            row = self._deployment_row(db, endpoint, name)
            if row is None:
                return
            endpoint_row = self._endpoint_row(db, endpoint)
            traffic = json.loads(endpoint_row["traffic"]) if endpoint_row is not None else {}
            if traffic.get(name):
                raise ConflictError(
                    f"deployment {endpoint}/{name} still takes {traffic[name]}% of the traffic; move it first"
                )
            db.execute("DELETE FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name))
            if endpoint_row is not None:
                traffic.pop(name, None)
                db.execute("UPDATE endpoints SET traffic = ? WHERE name = ?", (json.dumps(traffic), endpoint))
        stop(_proc(row))
        keys.delete_deployment_secret(self.layout.keys, endpoint, name)
        self._server_log(endpoint, name).unlink(missing_ok=True)

    def _spawn_server(self, endpoint: str, name: str, port: int, model_id: str) -> Proc:
        log = self._server_log(endpoint, name)
        return spawn(SERVER_MODULE, [endpoint, name, str(port), model_id], log, self.settings)

    # --- Whole workspace ---------------------------------------------------------------------

    def recover(self) -> None:
        """Restart every router and server that should run and does not, on its recorded port if free."""
        with self.store.read() as db:
            endpoints = [row["name"] for row in db.execute("SELECT name FROM endpoints")]
            deployments = [
                (row["endpoint"], row["name"]) for row in db.execute("SELECT endpoint, name FROM deployments")
            ]
        for name in endpoints:
            with self.store.write() as db:
                row = self._endpoint_row(db, name)
                revival = None if row is None else _revival(row)
                if revival is not None:
                    port, state = revival
                    proc = spawn(ROUTER_MODULE, [name, str(port)], self._router_log(name), self.settings)
                    db.execute(
                        "UPDATE endpoints SET state = ?, port = ?, pid = ?, pid_started = ? WHERE name = ?",
                        (state, port, proc.pid, proc.started, name),
                    )
        for endpoint, name in deployments:
            with self.store.write() as db:
                row = self._deployment_row(db, endpoint, name)
                revival = None if row is None else _revival(row)
                if revival is not None:
                    port, state = revival
                    proc = self._spawn_server(endpoint, name, port, row["model_id"])
                    db.execute(
                        "UPDATE deployments SET state = ?, port = ?, pid = ?, pid_started = ?"
                        " WHERE endpoint = ? AND name = ?",
                        (state, port, proc.pid, proc.started, endpoint, name),
                    )

    def stop_all(self) -> None:
        """Stop every router and server, recording that they were stopped on purpose (for ``shutdown``)."""
        with self.store.write() as db:
            rows = [
                *db.execute("SELECT pid, pid_started FROM endpoints WHERE pid IS NOT NULL"),
                *db.execute("SELECT pid, pid_started FROM deployments WHERE pid IS NOT NULL"),
            ]
            db.execute("UPDATE endpoints SET pid = NULL, pid_started = NULL")
            db.execute("UPDATE deployments SET pid = NULL, pid_started = NULL")
        for row in rows:
            stop(_proc(row))


def scoring_uri(port: int) -> str:
    return f"http://{HOST}:{port}/score"


def _router_ready(port: int) -> bool:
    """A router is up once it answers its health check at all (503 says a deployment is not)."""
    return answers(port, "/health") is not None


def _deployment_ready(keys_dir: Path, endpoint: str, deployment: str) -> Callable[[int], bool]:
    def ready(port: int) -> bool:
        secret = keys.read_deployment_secret(keys_dir, endpoint, deployment)
        return answers(port, "/health", {SECRET_HEADER: secret}) == 200

    return ready


def _proc(row: Row) -> Proc | None:
    return Proc.from_row(row["pid"], row["pid_started"])


def _revival(row: Row) -> tuple[int, ProvisioningState] | None:
    """The port and state to restart ``row``'s process with, or None if it should not run or runs already."""
    if ProvisioningState(row["state"]) not in _RUNNABLE or alive(_proc(row)):
        return None
    port = row["port"] if port_free(row["port"]) else free_port()
    pending = ProvisioningState.CREATING if row["state"] == ProvisioningState.CREATING else ProvisioningState.UPDATING
    return port, pending
