"""Intake: an uploaded dataset becomes a validated, split, submitted fine-tuning run.

Blob triggers fire at least once and uploads can repeat, so every step is idempotent:
the run id is a hash of the content, the run record is claimed with a conditional insert,
splits have fixed names and the job name is derived from the run id. Re-running the whole
function for the same upload converges on the same state instead of doing the work twice.
The uploaded blob is only ever read (pinned to the ETag seen first), never changed, and
twice at most: validation collects the split keys as it parses, so the split only writes.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import admission, gate
from shared.blobnames import Kind, Upload, classify, report_names, sidecar_name
from shared.logs import append_keys, bind
from shared.naming import run_id_for
from shared.runs import RunRecord, RunState
from shared.services import Services
from shared.storage import BlockWriter
from shared.validation import Report, ValidationOptions, iter_lines, validate_chunks

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

PARAMETER_METADATA_PREFIX = "ftpilot_"
# States from which an upload (a first one, or a re-upload of the same content) goes on to a job.
RESUMABLE = frozenset({RunState.RECEIVED, RunState.SUBMIT_FAILED, RunState.REFUSED})


def _resumable(record: RunRecord) -> bool:
    """Not yet trained: received, or stopped before submission (a run refused after training is not)."""
    return record.state in RESUMABLE and not record.job_name


@dataclass(frozen=True)
class Outcome:
    """What intake did with one upload (for logs, the CLI and tests)."""

    name: str
    # refused (a name or a limit), ignored, invalid, duplicate, queued, submitted, already, submit_failed, vanished
    action: str
    run_id: str = ""
    job_name: str = ""
    reason: str = ""


class _PinnedBlob:
    """A blob read at one ETag: if it is overwritten mid-run, reads fail instead of mixing versions."""

    def __init__(self, client: BlobClient) -> None:
        from azure.core import MatchConditions

        properties = client.get_blob_properties()
        self.client = client
        self.etag: str = properties.etag
        self.uploaded_at: str = properties.last_modified.isoformat() if properties.last_modified else ""
        self.metadata: dict[str, str] = dict(properties.metadata or {})
        self._condition = MatchConditions.IfNotModified

    def chunks(self) -> Any:
        return self.client.download_blob(etag=self.etag, match_condition=self._condition).chunks()


def dataset_parameters(metadata: dict[str, str]) -> dict[str, str]:
    """Per-dataset pipeline inputs from blob metadata ``ftpilot_<input>=<value>``; the adapter checks them.

    ``ftpilot_gate_<setting>`` is the promotion gate's, not the pipeline's (``gate.overrides``).
    """
    return {
        key[len(PARAMETER_METADATA_PREFIX) :]: value
        for key, value in metadata.items()
        if key.lower().startswith(PARAMETER_METADATA_PREFIX) and not key.lower().startswith(gate.METADATA_PREFIX)
    }


def handle_upload(client: BlobClient, services: Services) -> Outcome:
    """The blob function's one entry point: classify, validate, report, split, submit."""
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    upload = classify(client.blob_name, services.settings)
    if upload.kind is Kind.UNSAFE:
        _write_refusal(upload, services)
        log.warning("intake: refused blob name %r: %s", upload.name, upload.reason)
        return Outcome(upload.name, "refused", reason=upload.reason)
    if upload.kind is not Kind.DATASET:
        log.info("intake: ignored %r: %s", upload.name, upload.reason)
        return Outcome(upload.name, "ignored", reason=upload.reason)
    try:
        with append_keys():  # the run id is bound once the content is hashed
            return _process(upload, client, services)
    except (ResourceNotFoundError, ResourceModifiedError) as error:
        # Deleted or overwritten while we read it: the newer upload has its own event.
        log.warning("intake: %r changed while being read (%s); skipping", upload.name, type(error).__name__)
        return Outcome(upload.name, "vanished", reason="the blob was deleted or overwritten while being read")


def _process(upload: Upload, client: BlobClient, services: Services) -> Outcome:
    settings = services.settings
    options = ValidationOptions.from_settings(settings)
    main = _PinnedBlob(client)
    sidecar = _sidecar(upload, services)
    # With no sidecar the upload is split: its keys come out of this pass, so the split parses nothing.
    split_keys = array("Q") if sidecar is None else None
    report = validate_chunks(main.chunks(), options, source=upload.name, split_keys=split_keys)
    sidecar_report = None
    if sidecar is not None:
        sidecar_report = validate_chunks(sidecar.chunks(), options, source=sidecar.client.blob_name)
    valid = report.valid and (sidecar_report is None or sidecar_report.valid)
    run_id = run_id_for(report.sha256, sidecar_report.sha256 if sidecar_report else "")
    bind(run_id=run_id)
    json_name, _ = report_names(upload, settings)

    fresh = RunRecord(
        run_id=run_id,
        dataset=upload.name,
        sha256=report.sha256,
        sidecar=sidecar.client.blob_name if sidecar else "",
        sidecar_sha256=sidecar_report.sha256 if sidecar_report else "",
        source_etag=main.etag,
        report=json_name,
        base_model=settings.base_model,
    )
    fresh = (
        fresh.moved(RunState.RECEIVED)
        if valid
        else fresh.moved(RunState.INVALID, reason=_invalid_reason(report, sidecar_report))
    )
    record, created = services.runs.claim(fresh)
    limit = admission.token_limit(report.stats.get("billed_tokens", 0), services) if valid else None

    if not created and record.dataset != upload.name:
        record = services.runs.update(
            run_id,
            lambda r: (
                r
                if upload.name in r.duplicates
                else r.moved(r.state, f"duplicate upload {upload.name}", duplicates=[*r.duplicates, upload.name])
            ),
        )
        _write_report(
            upload,
            services=services,
            report=report,
            sidecar_report=sidecar_report,
            run_id=run_id,
            duplicate_of=record,
            limit=limit,
        )
        log.info("intake: %r duplicates run %s (%s)", upload.name, run_id, record.state)
        if not _resumable(record):
            return Outcome(upload.name, "duplicate", run_id, record.job_name, f"same content as {record.dataset}")
    elif created or _resumable(record):
        _write_report(
            upload, services=services, report=report, sidecar_report=sidecar_report, run_id=run_id, limit=limit
        )

    if record.state is RunState.INVALID:
        log.info("intake: %r is invalid: %s", upload.name, record.reason)
        return Outcome(upload.name, "invalid", run_id, reason=record.reason)
    if not _resumable(record):
        log.info("intake: %r already handled as run %s (%s)", upload.name, run_id, record.state)
        return Outcome(upload.name, "already", run_id, record.job_name)
    return _submit(upload, record, main, sidecar, services=services, report=report, split_keys=split_keys)


def _sidecar(upload: Upload, services: Services) -> _PinnedBlob | None:
    """The upload's test-split sidecar, pinned, if there is one."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return _PinnedBlob(services.storage.blob(sidecar_name(upload.name)))
    except ResourceNotFoundError:
        return None


def _invalid_reason(report: Report, sidecar_report: Report | None) -> str:
    parts = []
    for which in (report, sidecar_report):
        if which is None or which.valid:
            continue
        counts = which.to_dict()["counts"]
        errors = [e["code"] for e in which.to_dict()["errors"]]
        summary = ", ".join(f"{code} x{counts.get(code, 1)}" for code in dict.fromkeys(errors))
        parts.append(f"{which.source}: {summary}")
    return "validation failed: " + "; ".join(parts)


def _submit(
    upload: Upload,
    record: RunRecord,
    main: _PinnedBlob,
    sidecar: _PinnedBlob | None,
    *,
    services: Services,
    report: Report,
    split_keys: array | None,
) -> Outcome:
    """Check what can be checked before any GPU time, split, queue; then let admission submit it."""
    settings = services.settings
    run_id = record.run_id
    overrides = gate.overrides(main.metadata)
    try:
        gate.GateRule.of(settings, overrides)
    except gate.GateConfigError as error:  # checked now: the gate runs hours later, after the GPU time is spent
        reason = str(error)
        if _failed(services, run_id, reason).state is not RunState.SUBMIT_FAILED:
            return Outcome(upload.name, "already", run_id, reason="a duplicate upload submitted it")
        return Outcome(upload.name, "submit_failed", run_id, reason=reason)
    limit = admission.token_limit(report.stats.get("billed_tokens", 0), services)
    if limit is not None:
        refused = admission.refuse(record, limit, services, before=RESUMABLE)
        if refused.state is not RunState.REFUSED:
            return Outcome(upload.name, "already", run_id, reason="a duplicate upload submitted it")
        return Outcome(upload.name, "refused", run_id, reason=limit.reason)
    _prepare(record, main, sidecar, services, split_keys)

    # The wall clock, not the run clock: an order among one second's uploads, not a deadline.
    place = {"uploaded_at": main.uploaded_at, "queued_at": datetime.now(UTC).isoformat()}
    admission.enqueue(replace(record, **place), services)

    def queued(current: RunRecord) -> RunRecord | None:
        if not _resumable(current):
            return None  # another worker got there first; its record stands
        return current.moved(
            RunState.QUEUED,
            f"waiting for one of {settings.max_training_runs} training slots",
            inputs=dataset_parameters(main.metadata),
            gate=overrides,
            reason="",
            **place,
        )

    if services.runs.update(run_id, queued).state is not RunState.QUEUED:
        return Outcome(upload.name, "already", run_id, reason="a duplicate upload submitted it")
    admission.admit(services, raise_for=run_id)
    stored = services.runs.get(run_id) or record
    if stored.state is RunState.SUBMITTED:
        bind(job=stored.job_name)
        log.info("intake: run %s submitted as job %s", run_id, stored.job_name)
        return Outcome(upload.name, "submitted", run_id, stored.job_name)
    if stored.state is RunState.SUBMIT_FAILED:
        return Outcome(upload.name, "submit_failed", run_id, reason=stored.reason)
    if stored.state is RunState.QUEUED:
        log.info("intake: run %s queued for a training slot", run_id)
        return Outcome(upload.name, "queued", run_id)
    return Outcome(upload.name, "already", run_id, stored.job_name)


def _failed(services: Services, run_id: str, reason: str) -> RunRecord:
    """Record a failed submit, unless another worker (a duplicate upload) has submitted the run meanwhile."""
    return services.runs.update(
        run_id, lambda r: r.moved(RunState.SUBMIT_FAILED, reason=reason) if _resumable(r) else None
    )


def _prepare(
    record: RunRecord,
    main: _PinnedBlob,
    sidecar: _PinnedBlob | None,
    services: Services,
    split_keys: array | None,
) -> tuple[str, str]:
    """Write the train/test files once; a rerun finds them and moves on.

    ``split_keys``: the main upload's, from its validation (same ETag, same bytes), when it is split.
    """
    from shared.split import split

    settings = services.settings
    base = f"{settings.prepared_prefix}{record.run_id}"
    train_name, test_name = f"{base}/train.jsonl", f"{base}/test.jsonl"
    if record.train_path and services.storage.blob(train_name).exists() and services.storage.blob(test_name).exists():
        return train_name, test_name
    train, test = BlockWriter(services.storage.blob(train_name)), BlockWriter(services.storage.blob(test_name))
    if sidecar is None:
        counts = split(main.chunks, settings.test_fraction, train.write, test.write, keys=split_keys)
        note = f"split {counts.train} train / {counts.test} test"
    else:
        # Used as uploaded, not re-split; only the line framing is normalised (BOM, CRLF, blank lines).
        for source, writer in ((main, train), (sidecar, test)):
            for _, line in iter_lines(source.chunks()):
                if line.strip():
                    writer.write(line + b"\n")
        note = f"train as uploaded, test from {sidecar.client.blob_name}"
    train.commit()
    test.commit()
    services.runs.update(
        record.run_id,
        lambda r: (
            r if r.train_path == train_name else r.moved(r.state, note, train_path=train_name, test_path=test_name)
        ),
    )
    return train_name, test_name


def _write_report(
    upload: Upload,
    *,
    services: Services,
    report: Report,
    sidecar_report: Report | None,
    run_id: str,
    duplicate_of: RunRecord | None = None,
    limit: admission.Limit | None = None,
) -> None:
    json_name, md_name = report_names(upload, services.settings)
    document = report.to_dict()
    document["run_id"] = run_id
    document["upload"] = upload.name
    if sidecar_report is not None:
        document["sidecar"] = sidecar_report.to_dict()
        document["valid"] = report.valid and sidecar_report.valid
    markdown = report.to_markdown()
    if sidecar_report is not None:
        markdown += "\n\n## Test split (sidecar)\n\n" + sidecar_report.to_markdown()
    if duplicate_of is not None:
        document["duplicate_of"] = {"run_id": run_id, "dataset": duplicate_of.dataset, "state": str(duplicate_of.state)}
        markdown = (
            f"> **Duplicate upload**: same content as `{duplicate_of.dataset}`, run `{run_id}` "
            f"({duplicate_of.state}). No new job was submitted.\n\n" + markdown
        )
    if limit is not None:
        document["refused"] = {**limit.data(), "reason": limit.reason}
        markdown = (
            f"> **Refused before training**: {limit.reason}. Raise `{limit.setting}` or upload a smaller "
            "dataset; uploading this one again after raising it resumes the run.\n\n" + markdown
        )
    services.storage.put_report((json_name, md_name), document, markdown)


def _write_refusal(upload: Upload, services: Services) -> None:
    """A refused name still gets a report, under a name derived from its hash, never from itself."""
    json_name, md_name = report_names(upload, services.settings)
    shown = ascii(upload.name)
    document = {
        "valid": False,
        "upload": shown,
        "errors": [{"line": None, "code": "name.unsafe", "message": f"blob name refused: {upload.reason}"}],
        "stats": {},
    }
    markdown = f"# Upload refused\n\nThe blob {shown} was not processed: {upload.reason}. Rename it and upload again.\n"
    services.storage.put_report((json_name, md_name), document, markdown)
