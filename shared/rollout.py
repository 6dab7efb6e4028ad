"""Rollout: a finished fine-tuning job becomes a live, smoke-tested endpoint, or a recorded failure.

Two entry points, one per function:

* ``accept_event`` (Event Grid function) reads a run event, drops what is not ours and puts
  a message on the rollout queue. One table read and one queue write: well under a second.
* ``advance`` (queue function) moves the run's state machine as far as it can without
  waiting. Deployments take many minutes, so a step that starts a long-running operation
  schedules a re-check (a queue message with a visibility delay) and returns.

Every step reads the platform's actual state and looks before it creates, so a repeated,
late, duplicated or out-of-order message, or a worker killed between two steps, converges
on the same end: one model version, one live deployment, nothing left billing. At most one
chain of re-check messages runs per run: the record holds its token, and messages carrying
a stale token are dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared.events import EventError, ignore_reason, parse
from shared.naming import (
    DATASET_TAG,
    MANAGED_TAG,
    MANAGED_VALUE,
    RUN_TAG,
    deployment_name,
    endpoint_name,
    model_name,
)
from shared.platform.port import (
    DeploymentRequest,
    EndpointRequest,
    JobStatus,
    ModelRequest,
    PlatformConfigError,
    PlatformError,
    ProvisioningState,
)
from shared.runs import RunRecord, RunState, age_s, now
from shared.services import Services
from shared.validation import iter_lines

log = logging.getLogger(__name__)

JOB_PREFIX = "ftpilot-"
SMOKE_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
# A scheduled re-check counts as lost when it is this late; an event may then start a new chain.
POLL_GRACE_S = 300
ROLLOUT_STATES = {RunState.DEPLOYING, RunState.SMOKE_TESTING, RunState.PROMOTING}


@dataclass(frozen=True)
class Result:
    action: str  # queued | dropped | waiting | done
    run_id: str = ""
    reason: str = ""


# --- Event Grid side --------------------------------------------------------------------


def accept_event(raw: Mapping[str, Any], services: Services) -> Result:
    """Queue the run named by ``raw`` for the worker if it is one of ftpilot's jobs."""
    try:
        event = parse(raw)
    except EventError as error:
        log.warning("rollout: unreadable event dropped: %s", error)
        return Result("dropped", reason=str(error))
    reason = ignore_reason(event, services.settings.topic)
    if not reason and not event.run_id.startswith(JOB_PREFIX):
        reason = f"run {event.run_id} was not submitted by ftpilot"
    record = None if reason else services.runs.get(event.run_id.removeprefix(JOB_PREFIX))
    if not reason and (record is None or record.job_name != event.run_id):
        reason = f"no run record for job {event.run_id}"
    if reason or record is None:
        log.info("rollout: event %s dropped: %s", event.id, reason)
        return Result("dropped", reason=reason)
    _send(services, {"run_id": record.run_id, "event": event.id, "status": event.status})
    log.info("rollout: event %s (%s %s) queued for run %s", event.id, event.run_id, event.status, record.run_id)
    return Result("queued", record.run_id)


def _send(services: Services, message: Mapping[str, Any], delay_s: int = 0) -> None:
    services.storage.queue.send_message(orjson.dumps(message), visibility_timeout=delay_s or None)


# --- Queue side ---------------------------------------------------------------------------


class _Wait(Exception):
    """Raised inside a step: a long-running operation is under way; look again later."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def advance(body: bytes | str, services: Services) -> Result:
    """Handle one rollout queue message."""
    message = orjson.loads(body)
    run_id, token = message["run_id"], message.get("token", "")
    record = services.runs.get(run_id)
    if record is None:
        return Result("dropped", run_id, "no run record")
    if token and token != record.poll_token:
        return Result("dropped", run_id, "superseded by a newer check")
    if not token and record.poll_token and age_s(record.poll_due_at) < POLL_GRACE_S:
        return Result("dropped", run_id, "a check is already scheduled")
    try:
        return _run_steps(record, services)
    except _Wait as wait:
        return _schedule(services, run_id, record.poll_token, wait.note)
    except PlatformConfigError as error:  # retrying cannot help: a setting must change
        return _stop(services.runs.get(run_id) or record, services, f"cannot deploy: {error}")
    except Exception as error:
        # Remember why, for the poison handler, then let the queue redeliver.
        reason = f"{type(error).__name__}: {error}"
        services.runs.update(run_id, lambda r: replace(r, last_error=reason[:2000]))
        raise


def _schedule(services: Services, run_id: str, expected: str, note: str) -> Result:
    """Start (or continue) this run's one re-check chain."""
    delay = services.settings.poll_interval_s
    new = uuid.uuid4().hex
    due = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="seconds")

    def take(current: RunRecord) -> RunRecord | None:
        if current.poll_token != expected:
            return None
        return replace(current, poll_token=new, poll_due_at=due)

    if services.runs.update(run_id, take).poll_token != new:
        return Result("dropped", run_id, "another worker scheduled the next check")
    _send(services, {"run_id": run_id, "token": new}, delay)
    log.info("rollout: run %s waiting (%s); next check in %s s", run_id, note, delay)
    return Result("waiting", run_id, note)


def _run_steps(record: RunRecord, services: Services) -> Result:
    steps: dict[RunState, Callable[[RunRecord, Services], None]] = {
        RunState.SUBMITTED: _check_job,
        RunState.TRAINING: _check_job,
        RunState.SUCCEEDED: _register,
        RunState.REGISTERED: _deploy,
        RunState.DEPLOYING: _deploy,
        RunState.SMOKE_TESTING: _smoke_test,
        RunState.PROMOTING: _promote,
    }
    while (step := steps.get(record.state)) is not None:
        before = record.state
        step(record, services)
        record = services.runs.get(record.run_id) or record
        if record.state is before:  # nothing more to do until the platform moves (next event)
            break
    services.runs.update(record.run_id, lambda r: replace(r, poll_token="", poll_due_at="") if r.poll_token else None)
    return Result("done", record.run_id, str(record.state))


def _move(services: Services, record: RunRecord, to: RunState, note: str = "", **changes: Any) -> None:
    """Transition if the run is still where this worker found it; otherwise another worker moved it."""
    services.runs.update(record.run_id, lambda r: r.moved(to, note, **changes) if r.state is record.state else None)


def _check_job(record: RunRecord, services: Services) -> None:
    job = services.platform.get_job(record.job_name)
    if job is None:
        _move(services, record, RunState.FAILED, reason=f"job {record.job_name} does not exist in the workspace")
    elif job.status is JobStatus.COMPLETED:
        metrics = services.platform.get_job_metrics(job.name)
        _move(services, record, RunState.SUCCEEDED, f"job {job.name} completed", metrics=metrics)
    elif job.status is JobStatus.FAILED:
        _move(services, record, RunState.FAILED, reason=f"job {job.name} failed: {job.error or 'no error reported'}")
    elif job.status is JobStatus.CANCELED:
        _move(services, record, RunState.CANCELED, reason=f"job {job.name} was canceled")
    elif record.state is RunState.SUBMITTED:
        _move(services, record, RunState.TRAINING, f"job {job.name} {job.status}")


def _register(record: RunRecord, services: Services) -> None:
    request = ModelRequest(
        name=model_name(record.base_model or services.settings.base_model, record.dataset),
        run_id=record.run_id,
        job_name=record.job_name,
        description=f"{record.base_model} fine-tuned by ftpilot on {record.dataset} (job {record.job_name})",
        tags={RUN_TAG: record.run_id, DATASET_TAG: record.dataset[:256], "ftpilot-job": record.job_name},
    )
    model = services.platform.register_model(request)
    _move(
        services,
        record,
        RunState.REGISTERED,
        f"model {model.name}:{model.version}",
        model_name=model.name,
        model_version=model.version,
    )


def _deploy(record: RunRecord, services: Services) -> None:
    """Endpoint, then a new deployment at 0% traffic; wait on each until it has provisioned."""
    platform, settings = services.platform, services.settings
    endpoint = record.endpoint or endpoint_name(record.dataset)
    deployment = record.deployment or deployment_name(record.run_id)
    if record.state is RunState.REGISTERED:
        _move(
            services,
            record,
            RunState.DEPLOYING,
            f"endpoint {endpoint}, deployment {deployment}",
            endpoint=endpoint,
            deployment=deployment,
            phase_started_at=now(),
        )
        return
    if age_s(record.phase_started_at) > settings.deploy_timeout_s:
        _roll_back(record, services, f"deployment did not finish within {settings.deploy_timeout_s} s")
        return

    current = platform.get_endpoint(endpoint)
    if current is None:
        platform.begin_create_endpoint(
            EndpointRequest(
                name=endpoint,
                description=f"ftpilot endpoint for {record.dataset}",
                tags={MANAGED_TAG: MANAGED_VALUE, DATASET_TAG: record.dataset[:256]},
            )
        )
        raise _Wait(f"creating endpoint {endpoint}")
    if current.state is ProvisioningState.FAILED:
        _roll_back(record, services, f"endpoint {endpoint} failed to provision")
        return
    if not current.state.terminal:
        raise _Wait(f"endpoint {endpoint} is {current.state}")

    state = platform.get_deployment(endpoint, deployment)
    if state is None:
        model_id = _model_id(record, services)
        platform.begin_create_deployment(
            DeploymentRequest(
                endpoint_name=endpoint,
                name=deployment,
                model_id=model_id,
                instance_type=settings.inference_instance_type,
                instance_count=settings.inference_instance_count,
                tags={MANAGED_TAG: MANAGED_VALUE, RUN_TAG: record.run_id},
                base_model=record.base_model or settings.base_model,
            )
        )
        raise _Wait(f"creating deployment {deployment}")
    if state.state is ProvisioningState.SUCCEEDED:
        _move(services, record, RunState.SMOKE_TESTING, f"deployment {deployment} provisioned")
    elif state.state.terminal:
        _roll_back(record, services, f"deployment {deployment} {state.state}: {state.error or 'no error reported'}")
    else:
        raise _Wait(f"deployment {deployment} is {state.state}")


def _model_id(record: RunRecord, services: Services) -> str:
    model = services.platform.get_model(record.model_name, record.model_version)
    if model is None:
        raise PlatformError(f"model {record.model_name}:{record.model_version} is not registered")
    return model.id


def _smoke_test(record: RunRecord, services: Services) -> None:
    """Ask the new deployment (directly, at 0% traffic) one question from the run's test split."""
    payload = scoring_request(test_prompt(record, services), SMOKE_PARAMETERS)
    try:
        answer = services.platform.invoke(
            record.endpoint, record.deployment, payload, timeout_s=services.settings.smoke_timeout_s
        )
    except PlatformError as error:
        _roll_back(record, services, f"smoke test failed: {error}")
        return
    problem = _output_problem(answer)
    if problem:
        _roll_back(record, services, f"smoke test failed: {problem}")
        return
    services.platform.begin_set_traffic(record.endpoint, {record.deployment: 100})
    _move(services, record, RunState.PROMOTING, "smoke test passed; moving traffic", phase_started_at=now())


def scoring_request(conversation: list[dict[str, str]], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """One conversation in the managed online endpoint's chat scoring contract."""
    return {"input_data": {"input_string": [conversation], "parameters": dict(parameters)}}


def test_prompt(record: RunRecord, services: Services) -> list[dict[str, str]]:
    """The first test conversation, cut after its last user turn so the model has to answer."""
    download = services.storage.blob(record.test_path).download_blob()
    for _, line in iter_lines(download.chunks()):
        if line.strip():
            messages = orjson.loads(line)["messages"]
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            return messages[: last_user + 1]
    raise PlatformError(f"the test split {record.test_path} is empty")


def _output_problem(answer: Any) -> str:
    """'' when the scoring answer carries generated text, else what is wrong with it."""
    output = answer.get("output") if isinstance(answer, Mapping) else None
    if isinstance(output, str):
        return "" if output.strip() else "the output is empty"
    if isinstance(output, list):
        return "" if output and all(isinstance(o, str) and o.strip() for o in output) else "the output list is empty"
    return f"no 'output' in the answer: {str(answer)[:200]}"


def _promote(record: RunRecord, services: Services) -> None:
    """Once all traffic is on the new deployment, retire the ones it replaced."""
    platform, settings = services.platform, services.settings
    endpoint = platform.get_endpoint(record.endpoint)
    if endpoint is None:
        _roll_back(record, services, f"endpoint {record.endpoint} disappeared while moving traffic")
        return
    if not endpoint.state.terminal:
        raise _Wait(f"endpoint {record.endpoint} is {endpoint.state}")
    if dict(endpoint.traffic).get(record.deployment) != 100:
        if age_s(record.phase_started_at) > settings.deploy_timeout_s:
            _roll_back(record, services, "traffic did not move to the new deployment in time")
            return
        platform.begin_set_traffic(record.endpoint, {record.deployment: 100})
        raise _Wait("moving traffic")
    retired = [d.name for d in platform.list_deployments(record.endpoint) if d.name != record.deployment]
    for name in retired:
        platform.begin_delete_deployment(record.endpoint, name)
    _move(
        services,
        record,
        RunState.LIVE,
        f"live on {record.endpoint}" + (f"; retired {', '.join(retired)}" if retired else ""),
    )
    _retire_previous_runs(record, services, retired)


def _retire_previous_runs(record: RunRecord, services: Services, retired: list[str]) -> None:
    for other in services.runs.all():
        if other.run_id != record.run_id and other.endpoint == record.endpoint and other.deployment in retired:
            services.runs.update(
                other.run_id,
                lambda r: (
                    r.moved(RunState.RETIRED, f"replaced by run {record.run_id}") if r.state is RunState.LIVE else None
                ),
            )


def _roll_back(record: RunRecord, services: Services, reason: str) -> None:
    """Remove what this run created and leave the traffic as it was."""
    platform = services.platform
    if record.deployment:
        platform.begin_delete_deployment(record.endpoint, record.deployment)
    endpoint = platform.get_endpoint(record.endpoint) if record.endpoint else None
    if endpoint is not None:
        others = [d for d in platform.list_deployments(record.endpoint) if d.name != record.deployment]
        if not others:  # created for this run and serves nothing else: do not leave it behind
            platform.begin_delete_endpoint(record.endpoint)
    log.warning("rollout: run %s rolled back: %s", record.run_id, reason)
    _move(services, record, RunState.ROLLED_BACK, reason=reason)


def give_up(body: bytes | str, services: Services) -> Result:
    """Poison message: the worker failed repeatedly. Record why and clean up what bills."""
    run_id = orjson.loads(body)["run_id"]
    record = services.runs.get(run_id)
    if record is None:
        return Result("dropped", run_id, "no run record")
    return _stop(record, services, f"rollout gave up after repeated failures: {record.last_error or 'unknown error'}")


def _stop(record: RunRecord, services: Services, reason: str) -> Result:
    """End the run with ``reason``: roll back what a rollout built, or record the failure before it."""
    if record.state in ROLLOUT_STATES:
        _roll_back(record, services, reason)
    elif record.state not in (RunState.LIVE, RunState.ROLLED_BACK, RunState.FAILED, RunState.CANCELED):
        _move(services, record, RunState.FAILED, reason=reason)
    return Result("done", record.run_id, reason)
