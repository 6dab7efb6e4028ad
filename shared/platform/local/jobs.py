"""Fine-tuning jobs on this machine: a queue of one-at-a-time training processes.

A job is a row in the state database and, while it runs, a detached trainer process
(``python -m shared.platform.local.trainer <job dir>``). One machine trains one model at a time, so
``tick`` starts the oldest queued job only when none is running, checking and claiming in one
transaction so two processes can never both start one. ``tick`` runs on every submit and
``get_job``, in ``recover``, from the local host's periodic loop, and in the trainer itself once its
job has ended, so the queue moves on even when nobody is polling.

Whoever moves a job writes the run event Azure would send (see ``events``), exactly once: every
transition is a conditional update, and only the caller whose update changed the row emits.

A running job whose process is gone without having reported (killed, out of memory, laptop
restarted) is marked failed, not requeued: the cause is unknown and a job that takes the machine
down would otherwise do it again on every restart. ``requeue_running`` (used by ``shutdown``) is
the exception: there the workspace stopped the job itself, so the job goes back to the queue and
starts over on ``recover``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from sqlite3 import Row

from shared.config import Settings
from shared.platform.finetune import display_name, merge_layers, parameter_layers
from shared.platform.local.layout import Layout
from shared.platform.local.outbox import RUN_TYPE, emit_job_events
from shared.platform.local.processes import Proc, alive, log_tail, spawn, stop
from shared.platform.local.store import Store, now
from shared.platform.local.training_plan import plan
from shared.platform.port import (
    DataRef,
    FineTuneRequest,
    JobInfo,
    JobStatus,
    NotFoundError,
    ParamValue,
    PlatformConfigError,
)

TRAINER_MODULE = "shared.platform.local.trainer"
LOG_NAME = "job.log"
# Azure ML job names; they also name the job's folder, so nothing else may get in.
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")


def resolve_parameters(settings: Settings, request: FineTuneRequest) -> dict[str, ParamValue]:
    """The Azure adapter's layers; a local base model carries no ``model_specific_defaults`` tag."""
    layers = parameter_layers({}, settings.finetune_parameters, request.parameters)
    return {name: chosen.value for name, chosen in merge_layers(layers).items()}


def request_to_json(request: FineTuneRequest) -> str:
    return json.dumps(asdict(request))


def request_from_json(text: str) -> FineTuneRequest:
    raw = json.loads(text)
    return FineTuneRequest(**{**raw, "train": DataRef(**raw["train"]), "test": DataRef(**raw["test"])})


@dataclass(frozen=True)
class JobRecord:
    """A job as the state database holds it."""

    name: str
    status: JobStatus
    request: FineTuneRequest
    parameters: dict[str, ParamValue]
    display_name: str
    error: str | None
    proc: Proc | None
    mlflow_run_id: str | None
    model_uri: str | None

    @classmethod
    def from_row(cls, row: Row) -> JobRecord:
        return cls(
            name=row["name"],
            status=JobStatus(row["status"]),
            request=request_from_json(row["request"]),
            parameters=json.loads(row["parameters"]),
            display_name=row["display_name"],
            error=row["error"],
            proc=Proc.from_row(row["pid"], row["pid_started"]),
            mlflow_run_id=row["mlflow_run_id"],
            model_uri=row["model_uri"],
        )


class Jobs:
    """The job queue of one local workspace."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)
        self.store = store

    def log_path(self, name: str) -> Path:
        return self.layout.job_dir(name) / LOG_NAME

    def info(self, job: JobRecord) -> JobInfo:
        """The port's view; the "studio" of a local job is its log file."""
        return JobInfo(
            name=job.name,
            status=job.status,
            display_name=job.display_name,
            error=job.error,
            tags=dict(job.request.tags),
            parameters=dict(job.parameters),
            studio_url=self.log_path(job.name).as_uri(),
        )

    def record(self, name: str) -> JobRecord | None:
        with self.store.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def _require(self, name: str) -> JobRecord:
        job = self.record(name)
        if job is None:
            raise NotFoundError(f"job {name} does not exist")
        return job

    def submit(self, request: FineTuneRequest) -> JobInfo:
        """Queue ``request`` (or find the job already named so) and start it if the machine is free."""
        if not JOB_NAME.fullmatch(request.job_name):
            raise PlatformConfigError(f"job name {request.job_name!r}: use letters, digits, '-' and '_' (max 255)")
        if self.record(request.job_name) is None:
            parameters = resolve_parameters(self.settings, request)
            plan(parameters)  # reject what the trainer cannot use now, not minutes later in the job
            with self.store.write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO jobs (name, status, request, parameters, display_name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        request.job_name,
                        JobStatus.QUEUED,
                        request_to_json(request),
                        json.dumps(parameters),
                        display_name(request.base_model, request.dataset_label, parameters, gpus_per_node=1),
                        now(),
                    ),
                )
        self.tick()
        return self.info(self._require(request.job_name))

    def get(self, name: str) -> JobInfo | None:
        self.tick()
        job = self.record(name)
        return None if job is None else self.info(job)

    def tick(self) -> None:
        """Fail running jobs whose process died, then start the next queued job if none runs."""
        with self.store.read() as db:
            running = [JobRecord.from_row(row) for row in db.execute("SELECT * FROM jobs WHERE status = 'running'")]
        for job in running:
            if job.proc is not None and not alive(job.proc):
                log = self.log_path(job.name)
                self.finish(
                    job.name,
                    JobStatus.FAILED,
                    pid=job.proc.pid,
                    error=f"the training process (pid {job.proc.pid}) ended without reporting a result "
                    f"(killed, out of memory, or the machine restarted); the end of {log}:\n{log_tail(log)}",
                )
        self._start_next()

    def _start_next(self) -> None:
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM jobs WHERE status = 'running'").fetchone():
                return
            row = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1").fetchone()
            if row is None:
                return
            name = row["name"]
            job_dir = self.layout.job_dir(name)
            try:
                proc = spawn(TRAINER_MODULE, [str(job_dir)], job_dir / LOG_NAME, self.settings)
            except OSError as error:
                db.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, ended_at = ? WHERE name = ?",
                    (f"could not start the trainer: {error}", now(), name),
                )
                status = JobStatus.FAILED
            else:
                db.execute(
                    "UPDATE jobs SET status = 'running', pid = ?, pid_started = ?, started_at = ?, error = NULL"
                    " WHERE name = ?",
                    (proc.pid, proc.started, now(), name),
                )
                status = JobStatus.RUNNING
        self._emit(JobRecord.from_row(row), status)

    def finish(
        self,
        name: str,
        status: JobStatus,
        *,
        pid: int | None = None,
        error: str | None = None,
        model_uri: str | None = None,
        allowed: tuple[JobStatus, ...] = (JobStatus.RUNNING,),
    ) -> JobRecord | None:
        """Move ``name`` from one of ``allowed`` (and process ``pid``, if given) to terminal ``status``.

        Returns the job as it was before, or None when it was not in a state to move (someone else
        moved it first); only a caller that moved it emits the event.
        """
        with self.store.write() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
            if row is None or row["status"] not in allowed or (pid is not None and row["pid"] != pid):
                return None
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, ended_at = ?, model_uri = COALESCE(?, model_uri)"
                " WHERE name = ?",
                (status, error, now(), model_uri, name),
            )
        before = JobRecord.from_row(row)
        self._emit(before, status)
        return before

    def set_mlflow_run(self, name: str, run_id: str) -> None:
        with self.store.write() as db:
            db.execute("UPDATE jobs SET mlflow_run_id = ? WHERE name = ?", (run_id, name))

    def cancel(self, name: str) -> JobInfo:
        """Cancel a queued or running job (a finished one is returned as it is).

        The row is marked first and the process stopped after, so a trainer finishing at that very
        moment finds its job no longer running and reports nothing.
        """
        self._require(name)
        before = self.finish(name, JobStatus.CANCELED, allowed=(JobStatus.QUEUED, JobStatus.RUNNING))
        if before is not None and before.proc is not None:
            stop(before.proc)
        self._start_next()
        return self.info(self._require(name))

    def requeue_running(self) -> None:
        """Stop the running job and put it back at the head of the queue (for ``shutdown``)."""
        with self.store.write() as db:
            rows = db.execute("SELECT pid, pid_started FROM jobs WHERE status = 'running'").fetchall()
            db.execute(
                "UPDATE jobs SET status = 'queued', pid = NULL, pid_started = NULL, started_at = NULL"
                " WHERE status = 'running'"
            )
        for row in rows:
            stop(Proc.from_row(row["pid"], row["pid_started"]))

    def _emit(self, job: JobRecord, status: JobStatus) -> None:
        """The run event(s) for ``job`` entering ``status``, with a pipeline run's properties."""
        properties = {
            "azureml.runsource": RUN_TYPE,
            "azureml.parameters": json.dumps(job.parameters, sort_keys=True),
        }
        emit_job_events(self.settings, job_name=job.name, status=status, tags=job.request.tags, properties=properties)
