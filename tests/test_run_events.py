"""Run events: every documented sample parses in both schemas; the filter drops what it must."""

from __future__ import annotations

from dataclasses import replace

import pytest

from functions.rollout import event_payload, run_events
from shared.run_events import RUN_COMPLETED, RUN_STATUS_CHANGED, EventError, ignore_reason, parse, workspace_topic
from shared.services import Services
from tests.events import delivered, run_event, sample
from tests.paths import EVENTS

TOPIC = workspace_topic("{subscription-id}", "{resource-group-name}", "{workspace-name}")
FIXTURES = sorted(p.name for p in EVENTS.glob("*.json"))


def test_there_are_fixtures_in_both_schemas() -> None:
    assert {name.split(".")[0] for name in FIXTURES} == {"eventgrid", "cloudevents"}


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_parses_raw_and_as_delivered(name: str) -> None:
    raw = sample(name)
    event = parse(raw)
    assert event.id == raw["id"] and event.subject == raw["subject"]
    assert event.schema == ("cloudevents" if name.startswith("cloudevents") else "eventgrid")
    # Through the Python worker's own converter and back, it reads the same (time is re-formatted).
    assert replace(parse(event_payload(delivered(raw))), time="") == replace(event, time="")


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_ml_samples_read_their_fields(schema: str) -> None:
    completed = parse(sample(f"{schema}.RunCompleted.json"))
    assert completed.run_id == "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"
    assert completed.status == "Completed"
    assert completed.experiment_name == "automl-local-regression"
    changed = parse(sample(f"{schema}.RunStatusChanged.json"))
    assert changed.status == "failed"  # the docs sample's lower case is kept as sent
    assert ignore_reason(completed, TOPIC) == ""


def test_keys_in_either_casing() -> None:
    raw = sample("eventgrid.RunStatusChanged.json")
    raw["data"] = {k[0].upper() + k[1:]: v for k, v in raw["data"].items()}
    event = parse(raw)
    assert event.run_id.startswith("AutoML_") and event.status == "failed"


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (
            lambda e: e.update(
                topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.MachineLearningServices/workspaces/other"
            ),
            "foreign topic",
        ),
        (lambda e: e["data"].update(runType="azureml.StepRun"), "child step"),
        (lambda e: e.update(eventType="Microsoft.MachineLearningServices.ModelRegistered"), "not a run event"),
        (lambda e: e["data"].update(runId=""), "no run id"),
    ],
)
def test_filters(mutate, why: str) -> None:
    raw = sample("eventgrid.RunCompleted.json")
    mutate(raw)
    assert why in ignore_reason(parse(raw), TOPIC)


def test_topic_comparison_ignores_case() -> None:
    assert ignore_reason(parse(sample("eventgrid.RunCompleted.json")), TOPIC.upper()) == ""


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"id": "x"},
        {"id": "x", "topic": "t", "eventType": "e", "data": "str"},
        {"specversion": "1.0", "id": "x", "type": "t"},  # a CloudEvent without its source
    ],
)
def test_broken_events_raise_a_clear_error(raw) -> None:
    with pytest.raises(EventError):
        parse(raw)


@pytest.mark.parametrize("name", [n for n in FIXTURES if "Run" not in n])
def test_non_run_fixtures_are_dropped_by_the_function(services: Services, name: str) -> None:
    raw = sample(name)
    run_events(delivered(raw))
    assert services.storage.queue.get_queue_properties().approximate_message_count == 0


def test_function_drops_foreign_and_unknown_jobs(services: Services) -> None:
    topic = services.settings.topic
    for event in (
        run_event(topic, "AutoML_123"),  # not ours
        run_event(topic, "ftpilot-0123456789abcdef0123"),  # our prefix, no record
        run_event(
            "/subscriptions/other/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w",
            "ftpilot-x",
        ),
        run_event(topic, "ftpilot-x", schema="cloudevents", run_type="azureml.StepRun"),
    ):
        run_events(delivered(event))
    assert services.storage.queue.get_queue_properties().approximate_message_count == 0


def test_event_grid_bindings(app_functions: dict) -> None:
    assert set(app_functions) == {
        "intake",
        "run_events",
        "rollout",
        "rollout_poison",
        "lifecycle_events",
        "cleanup",
        "reconcile",
    }
    functions = {name: f.get_bindings_dict()["bindings"][0] for name, f in app_functions.items()}
    assert functions["run_events"]["type"] == "eventGridTrigger"
    rollout = functions["rollout"]
    assert (rollout["type"], rollout["queueName"], rollout["connection"]) == (
        "queueTrigger",
        "%FTPILOT_ROLLOUT_QUEUE%",
        "FTPILOT_STORAGE",
    )
    assert functions["rollout_poison"]["queueName"] == "%FTPILOT_ROLLOUT_QUEUE%-poison"
    events = functions["lifecycle_events"]
    assert (events["type"], events["queueName"], events["connection"]) == (
        "queueTrigger",
        "%FTPILOT_EVENTS_QUEUE%",
        "FTPILOT_STORAGE",
    )


def test_run_event_types_are_the_sdks_system_event_names() -> None:
    from azure.eventgrid import SystemEventNames

    assert SystemEventNames.MachineLearningServicesRunCompletedEventName == RUN_COMPLETED
    assert SystemEventNames.MachineLearningServicesRunStatusChangedEventName == RUN_STATUS_CHANGED
