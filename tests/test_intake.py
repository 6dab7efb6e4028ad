"""Intake over Azurite: the decorated blob function, called as the host would call it."""

from __future__ import annotations

import json
import threading

import pytest
from azure.core.exceptions import ResourceModifiedError

from functions.intake import intake
from shared.intake import _PinnedBlob, handle_upload
from shared.runs import RunState
from shared.services import Services
from tests.data import dataset, example, jsonl
from tests.test_split import run_split


def upload(services: Services, name: str, content: bytes, metadata: dict[str, str] | None = None):
    client = services.storage.blob(name)
    client.upload_blob(content, overwrite=True, metadata=metadata)
    return client


def read(services: Services, name: str) -> bytes:
    return services.storage.blob(name).download_blob().readall()


def records(services: Services):
    return {r.run_id: r for r in services.runs.all()}


def test_valid_upload_is_reported_split_and_submitted(services: Services, fake_platform) -> None:
    content = dataset(40)
    client = upload(services, "incoming/chat.jsonl", content)
    etag = client.get_blob_properties().etag

    intake(client)

    report = json.loads(read(services, "reports/chat.jsonl.validation.json"))
    assert report["valid"] is True
    assert report["stats"]["examples"] == 40
    assert "chat.jsonl" in read(services, "reports/chat.jsonl.validation.md").decode()

    (record,) = records(services).values()
    assert record.state is RunState.SUBMITTED
    assert record.job_name == f"ftpilot-{record.run_id}"
    assert [h["state"] for h in record.history] == ["received", "received", "queued", "submitted"]

    request = fake_platform.requests[record.job_name]
    assert request.train.path == f"prepared/{record.run_id}/train.jsonl"
    assert request.test.path == f"prepared/{record.run_id}/test.jsonl"
    assert request.tags["ftpilot-run"] == record.run_id
    assert request.dataset_label == "chat"
    train = read(services, request.train.path).splitlines()
    test = read(services, request.test.path).splitlines()
    assert len(test) == 4 and len(train) == 36  # test_fraction 0.1
    assert sorted(train + test) == sorted(content.splitlines())

    # The upload itself is untouched.
    assert client.get_blob_properties().etag == etag
    assert read(services, "incoming/chat.jsonl") == content


def test_invalid_upload_stops_with_report_and_reason(services: Services, fake_platform) -> None:
    rows = [example(i) for i in range(20)]
    rows[4]["messages"] = []
    client = upload(services, "incoming/bad.jsonl", jsonl(rows) + b"not json\n")

    outcome = handle_upload(client, services)

    assert outcome.action == "invalid"
    report = json.loads(read(services, "reports/bad.jsonl.validation.json"))
    assert report["valid"] is False
    lines = {(e["line"], e["code"]) for e in report["errors"]}
    assert any(line == 5 for line, _ in lines)
    assert any(line == 21 for line, _ in lines)
    (record,) = records(services).values()
    assert record.state is RunState.INVALID
    assert "validation failed" in record.reason
    assert fake_platform.jobs == {}
    assert not list(services.storage.container.list_blobs(name_starts_with="prepared/"))


def test_same_content_twice_submits_one_job_and_names_the_run(services: Services, fake_platform) -> None:
    content = dataset(25)
    first = handle_upload(upload(services, "incoming/a.jsonl", content), services)
    second = handle_upload(upload(services, "incoming/copy-of-a.jsonl", content), services)

    assert first.action == "submitted"
    assert second.action == "duplicate" and second.run_id == first.run_id
    assert fake_platform.creates == 1
    report = json.loads(read(services, "reports/copy-of-a.jsonl.validation.json"))
    assert report["duplicate_of"] == {"run_id": first.run_id, "dataset": "incoming/a.jsonl", "state": "submitted"}
    assert "Duplicate upload" in read(services, "reports/copy-of-a.jsonl.validation.md").decode()
    assert records(services)[first.run_id].duplicates == ["incoming/copy-of-a.jsonl"]


def test_redelivered_trigger_does_nothing_twice(services: Services, fake_platform) -> None:
    client = upload(services, "incoming/a.jsonl", dataset(25))
    assert handle_upload(client, services).action == "submitted"
    assert handle_upload(client, services).action == "already"
    assert fake_platform.creates == 1
    (record,) = records(services).values()
    assert record.duplicates == []


def test_concurrent_triggers_submit_one_job(services: Services, fake_platform) -> None:
    content = dataset(30)
    clients = [upload(services, "incoming/a.jsonl", content), upload(services, "incoming/b.jsonl", content)]
    outcomes = []
    threads = [threading.Thread(target=lambda c=c: outcomes.append(handle_upload(c, services))) for c in clients * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert fake_platform.creates == 1
    assert len({o.run_id for o in outcomes}) == 1
    (record,) = records(services).values()
    assert record.state is RunState.SUBMITTED


def test_new_content_under_the_same_name_is_a_new_run(services: Services, fake_platform) -> None:
    first = handle_upload(upload(services, "incoming/a.jsonl", dataset(20)), services)
    second = handle_upload(upload(services, "incoming/a.jsonl", dataset(20, start=100)), services)
    assert first.run_id != second.run_id
    assert second.action == "submitted"
    assert fake_platform.creates == 2


def test_split_is_stable_across_uploads(services: Services, fake_platform) -> None:
    content = dataset(50)
    first = handle_upload(upload(services, "incoming/a.jsonl", content), services)
    request = fake_platform.requests[first.job_name]
    train, test = read(services, request.train.path), read(services, request.test.path)
    # Forget everything about the run, then upload the same content under another name.
    services.storage.container.delete_blobs(request.train.path, request.test.path)
    services.storage.table.delete_entity("run", first.run_id)
    fake_platform.jobs.clear()

    again = handle_upload(upload(services, "incoming/again.jsonl", content), services)

    assert again.run_id == first.run_id
    assert read(services, request.train.path) == train
    assert read(services, request.test.path) == test
    assert len(test.splitlines()) == 5


def test_an_upload_is_read_twice_and_parsed_once(
    services: Services, fake_platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation collects the split keys as it parses: the split only reads the upload again, to write it."""
    downloads: list[str] = []
    chunks = _PinnedBlob.chunks

    def counted(pinned: _PinnedBlob):
        downloads.append(pinned.client.blob_name)
        return chunks(pinned)

    monkeypatch.setattr(_PinnedBlob, "chunks", counted)
    content = dataset(60).replace(b"\n", b"\r\n\n")  # blank lines and CRLF: lines and examples differ
    outcome = handle_upload(upload(services, "incoming/chat.jsonl", content), services)

    assert outcome.action == "submitted"
    assert downloads == ["incoming/chat.jsonl", "incoming/chat.jsonl"]
    expected_train, expected_test = run_split(content, services.settings.test_fraction)
    request = fake_platform.requests[outcome.job_name]
    assert read(services, request.train.path) == b"".join(expected_train)
    assert read(services, request.test.path) == b"".join(expected_test)


def test_sidecar_test_split_is_used_as_is(services: Services, fake_platform) -> None:
    sidecar = dataset(12, start=500)
    sidecar_outcome = handle_upload(upload(services, "incoming/chat.test.jsonl", sidecar), services)
    assert sidecar_outcome.action == "ignored"
    main = dataset(30)
    outcome = handle_upload(upload(services, "incoming/chat.jsonl", main), services)

    request = fake_platform.requests[outcome.job_name]
    assert read(services, request.train.path) == main
    assert read(services, request.test.path) == sidecar
    (record,) = records(services).values()
    assert record.sidecar == "incoming/chat.test.jsonl"
    report = json.loads(read(services, "reports/chat.jsonl.validation.json"))
    assert report["sidecar"]["valid"] is True


def test_invalid_sidecar_makes_the_run_invalid(services: Services, fake_platform) -> None:
    upload(services, "incoming/chat.test.jsonl", b'{"messages": "nope"}\n' * 12)
    outcome = handle_upload(upload(services, "incoming/chat.jsonl", dataset(30)), services)
    assert outcome.action == "invalid"
    assert "chat.test.jsonl" in outcome.reason
    assert fake_platform.jobs == {}


@pytest.mark.parametrize(
    "name",
    [
        "incoming/../../etc/passwd.jsonl",
        "incoming/./x.jsonl",
        "/incoming/x.jsonl",
        "incoming//x.jsonl",
        "incoming\\..\\x.jsonl",
        "incoming/a\x00b.jsonl",
        "incoming/a\x1bb.jsonl",
        "incoming/evil\u202egpj.jsonl",
        "incoming/zero\u200bwidth.jsonl",
        "incoming/" + "a" * 600 + ".jsonl",
        "incoming/ spaced /x.jsonl",
    ],
)
def test_path_tricks_are_refused_without_touching_the_blob(services: Services, fake_platform, name: str) -> None:
    # The blob does not even need to exist: the name is judged before any read.
    client = services.storage.container.get_blob_client(name)
    outcome = handle_upload(client, services)

    assert outcome.action == "refused"
    refused = list(services.storage.container.list_blobs())
    assert len(refused) == 2
    assert all(b.name.startswith("reports/_refused/") for b in refused)
    report = json.loads(read(services, next(b.name for b in refused if b.name.endswith(".json"))))
    assert report["errors"][0]["code"] == "name.unsafe"
    assert fake_platform.jobs == {} and list(services.runs.all()) == []


def test_refused_name_that_exists_in_storage(services: Services) -> None:
    client = upload(services, "incoming/evil\u202egpj.jsonl", dataset(20))
    assert handle_upload(client, services).action == "refused"
    assert read(services, "incoming/evil\u202egpj.jsonl") == dataset(20)


@pytest.mark.parametrize("name", ["reports/chat.jsonl.validation.json", "prepared/x/train.jsonl", "elsewhere/x.jsonl"])
def test_outside_the_intake_prefix_is_ignored(services: Services, fake_platform, name: str) -> None:
    outcome = handle_upload(upload(services, name, dataset(20)), services)
    assert outcome.action == "ignored"
    assert list(services.runs.all()) == []


def test_compute_error_is_recorded_and_a_reupload_retries(services: Services, fake_platform) -> None:
    fake_platform.compute_error = "compute 'gpu' is Standard_NC6: not in the model's finetune_compute_allow_list"
    content = dataset(20)
    outcome = handle_upload(upload(services, "incoming/a.jsonl", content), services)
    assert outcome.action == "submit_failed"
    (record,) = records(services).values()
    assert record.state is RunState.SUBMIT_FAILED
    assert "finetune_compute_allow_list" in record.reason

    fake_platform.compute_error = None
    retried = handle_upload(upload(services, "incoming/a-again.jsonl", content), services)
    assert retried.action == "submitted" and retried.run_id == outcome.run_id
    assert records(services)[outcome.run_id].reason == ""


def test_dataset_parameters_come_from_blob_metadata(services: Services, fake_platform) -> None:
    client = upload(services, "incoming/a.jsonl", dataset(20), metadata={"ftpilot_num_train_epochs": "1", "owner": "x"})
    outcome = handle_upload(client, services)
    assert fake_platform.requests[outcome.job_name].parameters == {"num_train_epochs": "1"}


def test_overwritten_blob_is_never_read_as_a_mix(services: Services) -> None:
    client = upload(services, "incoming/a.jsonl", dataset(20))
    pinned = _PinnedBlob(client)
    upload(services, "incoming/a.jsonl", dataset(20, start=40))
    with pytest.raises(ResourceModifiedError):
        b"".join(pinned.chunks())


def test_binding_is_event_based_and_streams_an_sdk_client(app_functions: dict) -> None:
    from azurefunctions.extensions.bindings import blob

    function = app_functions["intake"]
    (binding,) = function.get_bindings_dict()["bindings"]
    assert binding["type"] == "blobTrigger"
    assert binding["source"] == "EventGrid"
    assert binding["connection"] == "FTPILOT_STORAGE"
    assert binding["path"] == "%FTPILOT_INTAKE_CONTAINER%/{name}"
    assert function.get_user_function().__annotations__["client"] is blob.BlobClient
