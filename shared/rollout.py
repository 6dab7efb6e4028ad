"""Rollout: a finished fine-tuning job becomes a live, smoke-tested endpoint, or a recorded failure.

Two entry points, one per function:

* ``accept_event`` (Event Grid function) reads a run event, drops what is not ours and puts
  a message on the rollout queue. One table read and one queue write: well under a second.
* ``advance`` (queue function) moves the run's state machine as far as it can without
  waiting. Deployments take many minutes, so a step that starts a long-running operation
  schedules a re-check (a queue message with a visibility delay) and returns.

Every step reads the platform's actual state and looks before it creates, so a repeated,
late, duplicated or out-of-order message, or a worker killed between two steps, converges
on the same end: one model version, one live deployment, nothing left billing.

At most one chain of re-check messages runs per run: the record holds its token, and a
message carrying another token is dropped. The next message is sent *before* its token is
written, so a failed send or a kill between the two leaves the current message to be
redelivered (it still matches the record) instead of a record waiting for a message that
never comes; the reconciler re-queues whatever is overdue all the same.

Only the run holding its endpoint's lease (``shared.leases``) changes that endpoint; a run
overtaken by a newer upload steps aside and ends ``superseded``. Anything a run built is
unwound from any rollout state: traffic goes back first, then deletion.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import orjson

from shared import admission, gate
from shared.blobnames import promotion_report_names
from shared.leases import Grant, order
from shared.logs import append_keys
from shared.naming import (
    DATASET_TAG,
    JOB_TAG,
    MANAGED_TAG,
    MANAGED_VALUE,
    RUN_TAG,
    VERDICT_TAG,
    deployment_name,
    endpoint_name,
    model_name,
    run_id_of_job,
)
from shared.platform.port import (
    DeploymentRequest,
    EndpointRequest,
    JobStatus,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    PlatformError,
    ProvisioningState,
    TransientError,
)
from shared.run_events import EventError, ignore_reason, parse
from shared.runs import TRAINING, RunRecord, RunState, age_s, now, utcnow
from shared.services import Services
from shared.validation import iter_lines

log = logging.getLogger(__name__)

SMOKE_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
# A scheduled re-check counts as lost when it is this late; an event may then start a new chain.
POLL_GRACE_S = 300
# A gate request's retries wait at most this long each: the gate runs inside one invocation.
GATE_RETRY_CAP_S = 10.0
# How last_error starts when the error may go away by itself (the poison handler reads it).
TRANSIENT = "transient: "
# Poisoned messages in a row (no step succeeding in between) after which a run is ended.
POISON_LIMIT = 3


@dataclass(frozen=True)
class Result:
    action: str  # queued | dropped | waiting | done
    run_id: str = ""
    reason: str = ""


# --- Event Grid side --------------------------------------------------------------------


def accept_event(raw: Mapping[str, Any], services: Services) -> Result:
    """Queue the run named by ``raw`` for the worker if it is one of ftpilot's jobs."""
    with append_keys(event_id=raw.get("id") if isinstance(raw, Mapping) else None):
        return _accept(raw, services)


def _accept(raw: Mapping[str, Any], services: Services) -> Result:
    try:
        event = parse(raw)
    except EventError as error:
        log.warning("rollout: unreadable event dropped: %s", error)
        return Result("dropped", reason=str(error))
    reason = ignore_reason(event, services.settings.topic)
    run_id = run_id_of_job(event.run_id)
    if not reason and run_id is None:  # checked before the id gets anywhere near a table key
        reason = f"run {event.run_id[:100]!r} is not one of ftpilot's job names"
    record = None if reason or run_id is None else services.runs.get(run_id)
    if not reason and (record is None or record.job_name != event.run_id):
        reason = f"no run record for job {event.run_id}"
    with append_keys(job=event.run_id, run_id=record.run_id if record else None):
        if reason or record is None:
            log.info("rollout: event %s dropped: %s", event.id, reason)
            return Result("dropped", reason=reason)
        send(services, {"run_id": record.run_id, "event": event.id, "status": event.status})
        log.info("rollout: event %s (%s %s) queued for run %s", event.id, event.run_id, event.status, record.run_id)
        return Result("queued", record.run_id)


def send(services: Services, message: Mapping[str, Any], delay_s: int = 0) -> None:
    """Put a message for the rollout worker on its queue, visible after ``delay_s``."""
    services.storage.queue.send_message(orjson.dumps(message), visibility_timeout=delay_s or None)


# --- Queue side ---------------------------------------------------------------------------


class _Wait(Exception):
    """Raised inside a step: the platform has to move first.

    ``recheck`` schedules the run's next check after ``delay_s`` (default: the poll interval);
    without it the run waits for an event (the reconciler looks if none comes).
    """

    def __init__(self, note: str, *, recheck: bool = True, delay_s: float | None = None) -> None:
        super().__init__(note)
        self.note = note
        self.recheck = recheck
        self.delay_s = delay_s


def advance(body: bytes | str, services: Services) -> Result:
    """Handle one rollout queue message."""
    message = orjson.loads(body)
    with append_keys(run_id=message["run_id"], event_id=message.get("event")):
        return _advance(message["run_id"], message.get("token", ""), services)


def _advance(run_id: str, token: str, services: Services) -> Result:
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
        return _wait(services, record, wait)
    except TransientError as error:
        return _retry_later(services, record, error)
    except PlatformConfigError as error:  # retrying cannot help: a setting must change
        return stop(services.runs.get(run_id) or record, services, f"cannot deploy: {error}")
    except Exception as error:
        # Remember why, for the poison handler, then let the queue redeliver.
        reason = f"{TRANSIENT if storage_trouble(error) else ''}{type(error).__name__}: {error}"
        services.runs.update(run_id, lambda r: replace(r, last_error=reason[:2000]))
        raise


def storage_trouble(error: Exception) -> bool:
    """A storage call that may succeed later: no answer, a timeout, throttling or a 5xx."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return True
    status = getattr(error, "status_code", None) if isinstance(error, HttpResponseError) else None
    return status is not None and (status in (408, 429) or status >= 500)


def _wait(services: Services, record: RunRecord, wait: _Wait) -> Result:
    """Note what the run waits for; schedule its next check when the wait is on a long-running operation."""
    current = services.runs.get(record.run_id) or record
    if not wait.recheck:
        services.runs.update(record.run_id, lambda r: _waiting(r, wait.note, token="", due=""))
        return Result("waiting", record.run_id, wait.note)
    delay = services.settings.poll_interval_s if wait.delay_s is None else wait.delay_s
    return schedule(services, current, record.poll_token, wait.note, delay)


def _waiting(record: RunRecord, note: str, *, token: str, due: str) -> RunRecord:
    stamp = now()
    since = record.waiting_since if record.waiting_for == note else stamp
    return replace(record, poll_token=token, poll_due_at=due, waiting_for=note, waiting_since=since, checked_at=stamp)


def schedule(services: Services, record: RunRecord, expected: str, note: str, delay_s: float) -> Result:
    """Continue this run's one re-check chain: send the next message, then record its token.

    ``expected`` is the token the chain had when this worker read it: if another worker has
    moved the chain on meanwhile, nothing is sent. A kill after the send leaves an extra
    message whose token never gets written: it is dropped when it arrives.
    """
    if record.poll_token != expected:
        return Result("dropped", record.run_id, "another worker scheduled the next check")
    delay = max(0, round(delay_s))
    new = uuid.uuid4().hex
    due = (utcnow() + timedelta(seconds=delay)).isoformat(timespec="seconds")
    send(services, {"run_id": record.run_id, "token": new}, delay)

    def take(current: RunRecord) -> RunRecord | None:
        return _waiting(current, note, token=new, due=due) if current.poll_token == expected else None

    if services.runs.update(record.run_id, take).poll_token != new:
        return Result("dropped", record.run_id, "another worker scheduled the next check")
    log.info("rollout: run %s waiting (%s); next check in %s s", record.run_id, note, delay)
    return Result("waiting", record.run_id, note)


def backoff_s(services: Services, run_id: str, errors: int, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter (deterministic per run and try), at least ``Retry-After``."""
    settings = services.settings
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * 2 ** max(0, errors - 1))
    jittered = ceiling * random.Random(f"{run_id}:{errors}").uniform(0.5, 1.0)
    return max(jittered, retry_after_s or 0.0)


def _retry_later(services: Services, record: RunRecord, error: TransientError) -> Result:
    """A transient platform error: count it and look again after a backoff; the phase's deadline bounds it."""
    reason = f"{TRANSIENT}{error}"[:2000]
    counted = services.runs.update(
        record.run_id, lambda r: replace(r, last_error=reason, transient_errors=r.transient_errors + 1)
    )
    delay = backoff_s(services, record.run_id, counted.transient_errors, error.retry_after_s)
    log.warning("rollout: run %s: %s; retrying in %.0f s", record.run_id, error, delay)
    return schedule(services, counted, record.poll_token, f"retrying after a transient error ({error})", delay)


def _run_steps(record: RunRecord, services: Services) -> Result:
    steps: dict[RunState, Callable[[RunRecord, Services], None]] = {
        RunState.SUBMITTED: _check_job,
        RunState.TRAINING: _check_job,
        RunState.SUCCEEDED: _register,
        RunState.REGISTERED: _start_rollout,
        RunState.DEPLOYING: _deploy,
        RunState.SMOKE_TESTING: _smoke_test,
        RunState.GATING: _gate,
        RunState.PROMOTING: _promote,
        RunState.ROLLING_BACK: _unwind,
    }
    token = record.poll_token
    training = record.state in TRAINING
    while (step := steps.get(record.state)) is not None:
        before = record.state
        with append_keys(run_id=record.run_id, job=record.job_name, endpoint=record.endpoint):
            step(record, services)
        record = services.runs.get(record.run_id) or record
        if training and record.state not in TRAINING:
            _admit_next(services)
            training = False
        if record.state is before:  # another worker holds this step; its chain goes on
            break
    if token:  # this message's chain ends here, unless another worker has moved it on
        services.runs.update(
            record.run_id, lambda r: replace(r, poll_token="", poll_due_at="") if r.poll_token == token else None
        )
    return Result("done", record.run_id, str(record.state))


def _admit_next(services: Services) -> None:
    """A training slot has freed: submit the next queued upload (the reconciler does, if this fails)."""
    try:
        admission.admit(services)
    except Exception:
        log.exception("rollout: admitting the next queued run failed; the reconciler will")


def _move(services: Services, record: RunRecord, to: RunState, note: str = "", **changes: Any) -> RunRecord:
    """Transition if the run is still where this worker found it; otherwise another worker moved it."""
    return services.runs.update(
        record.run_id, lambda r: r.moved(to, note, **changes) if r.state is record.state else None
    )


def _champion_newer(record: RunRecord, services: Services) -> str:
    """The id of a newer run that went live on this run's endpoint, or ''."""
    lease = services.leases.get(endpoint_name(record.dataset))
    return lease.champion_newer_than(record) if lease else ""


def supersede(record: RunRecord, services: Services, by: str) -> None:
    """End a run that has not started rolling out because a newer one won; cancel its job if it trains."""
    reason = f"superseded by the newer run {by}"
    if record.state in TRAINING and record.job_name:
        services.platform.begin_cancel_job(record.job_name)
        reason += f"; job {record.job_name} canceled"
    _move(services, record, RunState.SUPERSEDED, reason=reason)
    services.leases.release(endpoint_name(record.dataset), record.run_id)
    log.info("rollout: run %s %s", record.run_id, reason)


def _check_job(record: RunRecord, services: Services) -> None:
    newer = _champion_newer(record, services)
    if newer:
        supersede(record, services, newer)
        return
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
    elif age_s(record.phase_started_at or record.created_at) > services.settings.max_training_s:
        services.platform.begin_cancel_job(job.name)
        limit = services.settings.max_training_s
        _move(services, record, RunState.FAILED, reason=f"job {job.name} ran past {limit} s; canceled")
    elif record.state is RunState.SUBMITTED:
        _move(services, record, RunState.TRAINING, f"job {job.name} {job.status}")
    else:
        raise _Wait(f"job {job.name} to finish (it is {job.status})", recheck=False)


def _register(record: RunRecord, services: Services) -> None:
    newer = _champion_newer(record, services)
    if newer:
        supersede(record, services, newer)
        return
    request = ModelRequest(
        name=model_name(record.base_model or services.settings.base_model, record.dataset),
        run_id=record.run_id,
        job_name=record.job_name,
        description=f"{record.base_model} fine-tuned by ftpilot on {record.dataset} (job {record.job_name})",
        tags={RUN_TAG: record.run_id, DATASET_TAG: record.dataset[:256], JOB_TAG: record.job_name},
    )
    model = services.platform.register_model(request)
    _move(
        services,
        record,
        RunState.REGISTERED,
        f"model {model.name}:{model.version}",
        model_name=model.name,
        model_version=model.version,
        model_id=model.id,
    )


def _start_rollout(record: RunRecord, services: Services) -> None:
    """Take the endpoint's lease, then start deploying; or wait behind an older run; or step aside."""
    endpoint = endpoint_name(record.dataset)
    grant, lease = services.leases.claim(endpoint, record)
    if grant is Grant.OVERTAKEN:
        supersede(record, services, lease.newer_than(record) or "a newer run")
        return
    if grant is Grant.WAIT:
        raise _Wait(f"run {lease.holder} to finish its rollout on {endpoint}")
    if services.settings.max_endpoints is not None:
        exists = services.platform.get_endpoint(endpoint) is not None
        limit = admission.endpoint_limit(endpoint, exists, services)
        if limit is not None:
            admission.refuse(record, limit, services, before=frozenset({RunState.REGISTERED}))
            services.leases.release(endpoint, record.run_id)
            return
    _move(
        services,
        record,
        RunState.DEPLOYING,
        f"endpoint {endpoint}, deployment {deployment_name(record.run_id)}",
        endpoint=endpoint,
        deployment=deployment_name(record.run_id),
        instance_type=services.settings.inference_instance_type,
        instance_count=services.settings.inference_instance_count,
        phase_started_at=now(),
    )


def _hold_lease(record: RunRecord, services: Services) -> bool:
    """Whether this rolling-out run may go on changing its endpoint; steps it aside when overtaken.

    A run that finds its lease released under it (by a reconciler that judged it ended) takes
    it back, or waits while someone else (the idle sweep) holds it for a moment.
    """
    lease = services.leases.get(record.endpoint)
    newer = lease.newer_than(record) if lease else ""
    if not newer:
        if lease is not None and lease.holder == record.run_id:
            return True
        grant, lease = services.leases.claim(record.endpoint, record)
        if grant is Grant.HELD:
            return True
        if grant is Grant.WAIT:
            raise _Wait(f"the lease on {record.endpoint}, held by {lease.holder}")
        newer = lease.newer_than(record) or "a newer run"
    roll_back(record, services, f"superseded by the newer run {newer}", RunState.SUPERSEDED)
    return False


def _deploy(record: RunRecord, services: Services) -> None:
    """The endpoint, then a new deployment at 0% traffic; wait on each until it has provisioned."""
    platform, settings = services.platform, services.settings
    if not _hold_lease(record, services):
        return
    endpoint, deployment = record.endpoint, record.deployment
    if age_s(record.phase_started_at) > settings.deploy_timeout_s:
        roll_back(record, services, f"deployment did not finish within {settings.deploy_timeout_s} s")
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
        raise _Wait(f"endpoint {endpoint} to be created")
    if current.state is ProvisioningState.FAILED:
        roll_back(record, services, f"endpoint {endpoint} failed to provision")
        return
    if not current.state.terminal:
        raise _Wait(f"endpoint {endpoint} to provision (it is {current.state})")

    state = platform.get_deployment(endpoint, deployment)
    if state is None:
        model_id = _model_id(record, services)
        platform.begin_create_deployment(
            DeploymentRequest(
                endpoint_name=endpoint,
                name=deployment,
                model_id=model_id,
                instance_type=record.instance_type or settings.inference_instance_type,
                instance_count=record.instance_count or settings.inference_instance_count,
                tags={MANAGED_TAG: MANAGED_VALUE, RUN_TAG: record.run_id},
                base_model=record.base_model or settings.base_model,
            )
        )
        raise _Wait(f"deployment {deployment} to be created")
    if state.state is ProvisioningState.SUCCEEDED:
        _move(services, record, RunState.SMOKE_TESTING, f"deployment {deployment} provisioned")
    elif state.state.terminal:
        roll_back(record, services, f"deployment {deployment} {state.state}: {state.error or 'no error reported'}")
    else:
        raise _Wait(f"deployment {deployment} to provision (it is {state.state})")


def _model_id(record: RunRecord, services: Services) -> str:
    model = services.platform.get_model(record.model_name, record.model_version)
    if model is None:
        raise PlatformError(f"model {record.model_name}:{record.model_version} is not registered")
    return model.id


def _smoke_test(record: RunRecord, services: Services) -> None:
    """Ask the new deployment (directly, at 0% traffic) one question from the run's test split.

    A transient failure (a 503 while the deployment warms up, a timeout) or an empty answer (the
    smoke test samples, so one can be empty by chance) is retried after a backoff,
    ``smoke_attempts`` tries in all, before it counts as a failed smoke test.
    """
    if not _hold_lease(record, services):
        return
    platform, settings = services.platform, services.settings
    payload = scoring_request(test_prompt(record, services), SMOKE_PARAMETERS)
    try:
        answer = platform.invoke(record.endpoint, record.deployment, payload, timeout_s=settings.smoke_timeout_s)
    except TransientError as error:
        if record.transient_errors + 1 < settings.smoke_attempts:
            raise
        roll_back(record, services, f"smoke test failed {settings.smoke_attempts} times: {error}")
        return
    except PlatformError as error:
        roll_back(record, services, f"smoke test failed: {error}")
        return
    problem = _output_problem(answer)
    if problem and record.transient_errors + 1 < settings.smoke_attempts:
        # A sampled answer can be empty by chance; the same emptiness every time is the model's.
        raise TransientError(f"smoke test: {problem}; asking again")
    if problem:
        roll_back(record, services, f"smoke test failed {settings.smoke_attempts} times: {problem}")
        return
    endpoint = platform.get_endpoint(record.endpoint)
    traffic = dict(endpoint.traffic) if endpoint else {}
    serving = [
        name for name, share in sorted(traffic.items(), key=lambda kv: -kv[1]) if share and name != record.deployment
    ]
    _move(
        services,
        record,
        RunState.GATING,
        "smoke test passed; comparing with the live model",
        phase_started_at=now(),
        replaces=serving[0] if serving else "",
        probe_requests=record.probe_requests + 1,
        probed_at=now(),
    )


def _gate(record: RunRecord, services: Services) -> None:
    """The promotion gate (``shared.gate``): promote, or end ``not_promoted`` with the champion untouched.

    Both models are asked the same held-out conversations, each directly at its deployment; the
    verdict and its evidence go to the report beside the validation report and onto the run.
    A rejected model stays registered, tagged with the verdict, for someone to deploy by hand.
    """
    if not _hold_lease(record, services):
        return
    verdict, document, markdown, answered = _judge(record, services)
    names = promotion_report_names(record.report)
    services.storage.put_report(names, document, markdown)
    probes = {"probe_requests": record.probe_requests + answered, "probed_at": now()}
    headline = {**verdict.headline(), "samples": len(document["samples"]), "report": names[0]}
    if verdict.promote:
        note = f"gate: {verdict.why}; moving traffic"
        _move(services, record, RunState.PROMOTING, note, promotion=headline, **probes)
        return
    services.platform.tag_model(
        record.model_name, record.model_version, {VERDICT_TAG: f"not_promoted: {verdict.why}"[:256]}
    )
    roll_back(
        record, services, f"not promoted: {verdict.why}", ending=RunState.NOT_PROMOTED, promotion=headline, **probes
    )


def _judge(record: RunRecord, services: Services) -> tuple[gate.Verdict, dict[str, Any], str, int]:
    """The verdict, its report (JSON and Markdown) and how many of the gate's requests were answered."""
    platform, settings = services.platform, services.settings
    rule = gate.GateRule.of(settings, record.gate)
    context = {"run_id": record.run_id, "dataset": record.dataset, "endpoint": record.endpoint}
    context["challenger"] = record.deployment
    if not rule.enabled:
        verdict = gate.gate_off(rule)
        return verdict, *gate.report(verdict, [], {}, {}, context), 0
    download = services.storage.blob(record.test_path).download_blob()
    samples = gate.pick((line for _, line in iter_lines(download.chunks())), rule.samples)
    if not samples:
        raise PlatformError(f"the test split {record.test_path} has no answered user turn to compare on")
    # The deployment serving when the smoke test passed: under the run's lease, nothing else moves traffic.
    champion = record.replaces
    parameters = rule.parameters()
    score = platform.open_scoring(record.endpoint)  # one key fetch for the 2K calls

    def asker(deployment: str) -> Callable[[gate.Sample], str]:
        def ask(sample: gate.Sample) -> str:
            payload = scoring_request(sample.prompt, parameters)
            return _answer_text(
                _with_retries(
                    lambda: score(deployment, payload, settings.smoke_timeout_s),
                    services,
                    f"{record.run_id}:gate:{deployment}:{sample.key}",
                )
            )

        return ask

    answers = {"challenger": gate.ask_all(samples, asker(record.deployment))}
    notes = []
    if champion:
        answers["champion"] = gate.ask_all(samples, asker(champion))
        if champion not in {d.name for d in platform.list_deployments(record.endpoint)}:
            notes.append(f"the champion {champion} disappeared during the gate: judged as the first model")
            del answers["champion"]
            champion = ""
    flaky = sum(answer.transient for got in answers.values() for answer in got)
    if flaky and record.transient_errors + 1 < settings.smoke_attempts:
        # Platform trouble, not the model's answers: judge on a later try; the last try judges as it is.
        raise TransientError(f"promotion gate: {flaky} requests failed after retries; asking again")
    values = {role: gate.scores(got, samples) for role, got in answers.items()}
    seed = record.run_id
    challenger = gate.Aggregate.of(record.deployment, answers["challenger"], values["challenger"], seed)
    held = gate.Aggregate.of(champion, answers["champion"], values["champion"], seed) if champion else None
    difference = None
    if champion:
        paired = [c - h for c, h in zip(values["challenger"], values["champion"], strict=True)]
        difference = gate.bootstrap(paired, f"{seed}:difference")
    verdict = gate.decide(
        rule,
        challenger,
        champion=held,
        difference=difference,
        eval_loss=record.metrics.get("eval_loss"),
        notes=notes,
    )
    answered = sum(not answer.error for got in answers.values() for answer in got)
    return verdict, *gate.report(verdict, samples, answers, values, {**context, "champion": champion}), answered


def _with_retries(call: Callable[[], Any], services: Services, key: str) -> Any:
    """``call``, tried ``smoke_attempts`` times on transient errors, as the smoke test is, with short backoffs."""
    attempts = services.settings.smoke_attempts
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TransientError as error:
            if attempt == attempts:
                raise
            time.sleep(min(backoff_s(services, key, attempt, error.retry_after_s), GATE_RETRY_CAP_S))
    raise AssertionError("unreachable")


def _answer_text(answer: Any) -> str:
    """The generated text of a one-conversation scoring answer."""
    output = answer.get("output") if isinstance(answer, Mapping) else None
    if isinstance(output, list):
        output = output[0] if output else ""
    if not isinstance(output, str):
        raise PlatformError(f"the scoring answer has no output text: {str(answer)[:200]}")
    return output


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
    """All traffic to the new deployment; then retire the deployments and runs it replaced; then live.

    The runs it replaced are retired before this one is recorded live, so a kill in between
    resumes here and never leaves two live runs on one endpoint.
    """
    platform, settings = services.platform, services.settings
    endpoint = platform.get_endpoint(record.endpoint)
    if endpoint is None:
        roll_back(record, services, f"endpoint {record.endpoint} disappeared while moving traffic")
        return
    if not endpoint.state.terminal:
        raise _Wait(f"endpoint {record.endpoint} to finish updating (it is {endpoint.state})")
    if dict(endpoint.traffic).get(record.deployment) != 100:
        if age_s(record.phase_started_at) > settings.deploy_timeout_s:
            roll_back(record, services, "traffic did not move to the new deployment in time")
            return
        try:
            platform.begin_set_traffic(record.endpoint, {record.deployment: 100})
        except NotFoundError:
            roll_back(record, services, f"deployment {record.deployment} no longer exists on {record.endpoint}")
            return
        raise _Wait(f"traffic to move to {record.deployment}")
    others = [d for d in platform.list_deployments(record.endpoint) if d.name != record.deployment]
    sharing = services.runs.where("endpoint", record.endpoint)
    rolling = {r.deployment for r in sharing if r.state.rolling_out}
    retiring = [d for d in others if d.name not in rolling]
    for deployment in retiring:
        if deployment.state is not ProvisioningState.DELETING:
            platform.begin_delete_deployment(record.endpoint, deployment.name)
    if retiring:
        raise _Wait(f"the replaced deployments {', '.join(d.name for d in retiring)} to be deleted")
    _retire_previous_runs(record, services, sharing)
    live = _move(services, record, RunState.LIVE, f"live on {record.endpoint}", scoring_uri=endpoint.scoring_uri or "")
    services.leases.release(record.endpoint, record.run_id, champion=live)
    _supersede_older(live, services)


def _retire_previous_runs(record: RunRecord, services: Services, sharing: list[RunRecord]) -> None:
    """Retire the live runs among ``sharing`` (the runs on this endpoint), other than ``record``."""
    why = f"replaced by run {record.run_id}"
    for other in sharing:
        if other.run_id != record.run_id and other.state is RunState.LIVE:
            services.runs.update(
                other.run_id,
                lambda r: r.moved(RunState.RETIRED, why, reason=why) if r.state is RunState.LIVE else None,
            )


def _supersede_older(live: RunRecord, services: Services) -> None:
    """Older uploads of this dataset that have not started rolling out will never serve: end them now."""
    mine = order(live)
    for other in services.runs.where("dataset", live.dataset):  # the endpoint is named after the dataset
        if (
            other.run_id != live.run_id
            and not other.state.terminal
            and not other.state.rolling_out
            and other.state is not RunState.RECEIVED
            and order(other) < mine
        ):
            supersede(other, services, live.run_id)


def roll_back(
    record: RunRecord, services: Services, reason: str, ending: RunState = RunState.ROLLED_BACK, **changes: Any
) -> None:
    """Start unwinding what this run built; it ends in ``ending`` once traffic is back and its deployment gone."""
    log.warning("rollout: run %s unwinding (%s): %s", record.run_id, ending, reason)
    moved = _move(services, record, RunState.ROLLING_BACK, reason=reason, ending=str(ending), **changes)
    if moved.state is RunState.ROLLING_BACK:
        _unwind(moved, services)


def _unwind(record: RunRecord, services: Services) -> None:
    """Traffic back to the deployment this run replaced (if it still exists), then delete what it built."""
    platform = services.platform
    endpoint = platform.get_endpoint(record.endpoint) if record.endpoint else None
    if endpoint is not None:
        if not endpoint.state.terminal:
            raise _Wait(f"endpoint {record.endpoint} to finish {endpoint.state} before unwinding")
        deployments = {d.name: d for d in platform.list_deployments(record.endpoint)}
        others = [name for name in deployments if name != record.deployment]
        if not others:  # created for this run and serves nothing else: do not leave it behind
            platform.begin_delete_endpoint(record.endpoint)
            raise _Wait(f"endpoint {record.endpoint} to be deleted")
        if dict(endpoint.traffic).get(record.deployment):
            back = _previous(record, services, others)
            platform.begin_set_traffic(record.endpoint, {back: 100} if back else {record.deployment: 0})
            raise _Wait(f"traffic to go back to {back}" if back else "traffic to stop")
        mine = deployments.get(record.deployment)
        if mine is not None:
            if mine.state is not ProvisioningState.DELETING:
                platform.begin_delete_deployment(record.endpoint, record.deployment)
            raise _Wait(f"deployment {record.deployment} to be deleted")
    ending = RunState(record.ending or RunState.ROLLED_BACK)
    _move(services, record, ending, reason=record.reason)
    services.leases.release(record.endpoint, record.run_id)
    log.warning("rollout: run %s %s: %s", record.run_id, ending, record.reason)


def _previous(record: RunRecord, services: Services, deployments: list[str]) -> str:
    """The deployment that served before this run took the traffic: the one it replaced, or the live run's."""
    if record.replaces in deployments:
        return record.replaces
    live = [r.deployment for r in services.runs.where("endpoint", record.endpoint) if r.state is RunState.LIVE]
    return next((name for name in live if name in deployments), "")


def give_up(body: bytes | str, services: Services) -> Result:
    """Poison message: the worker failed on it repeatedly.

    Storage or platform trouble, or workers dying, can outlast five quick redeliveries without
    anything being wrong with the run, so a poisoning after transient trouble (or with no error
    on record: the worker died) only notes it and leaves the run to the reconciler, which tries
    again on its cadence (the phase deadlines still bound a rollout). Other errors get
    ``POISON_LIMIT`` poisonings in a row (no step succeeding in between) before the run is
    ended and what bills cleaned up.
    """
    run_id = orjson.loads(body)["run_id"]
    with append_keys(run_id=run_id):
        return _give_up(run_id, services)


def _give_up(run_id: str, services: Services) -> Result:
    record = services.runs.get(run_id)
    if record is None:
        return Result("dropped", run_id, "no run record")
    if record.state.settled:
        return Result("done", run_id, f"already {record.state}")
    # No error on record: the worker died (killed, out of memory) rather than the run failing.
    transient = not record.last_error or record.last_error.startswith(TRANSIENT)
    if transient or record.poisoned + 1 < POISON_LIMIT:
        counted = 0 if transient else 1
        noted = services.runs.update(run_id, lambda r: replace(r, poisoned=r.poisoned + counted, poll_token=""))
        log.warning("rollout: run %s poisoned (%s); left to the reconciler", run_id, noted.last_error)
        return Result("waiting", run_id, "left to the reconciler")
    return stop(record, services, f"rollout gave up after repeated failures: {record.last_error or 'unknown error'}")


def stop(record: RunRecord, services: Services, reason: str) -> Result:
    """End the run with ``reason``: unwind what a rollout built, or record the failure before it.

    An unwinding that has to wait is handed to a re-check chain (and the reconciler); a run
    already ended is left as it is.
    """
    if record.state.terminal or record.state is RunState.LIVE:
        return Result("done", record.run_id, f"already {record.state}")
    try:
        if record.state is RunState.ROLLING_BACK:
            _unwind(record, services)
        elif record.state.rolling_out:
            roll_back(record, services, reason)
        else:
            if record.state in TRAINING and record.job_name:
                services.platform.begin_cancel_job(record.job_name)
            _move(services, record, RunState.FAILED, reason=reason)
            services.leases.release(endpoint_name(record.dataset), record.run_id)
    except _Wait as wait:
        return _wait(services, services.runs.get(record.run_id) or record, _Wait(wait.note))
    return Result("done", record.run_id, reason)
