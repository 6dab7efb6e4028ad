"""The local workspace's parts that need no training or servers: fast, real files and processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.config import Settings
from shared.platform.finetune import WALKTHROUGH_DEFAULTS
from shared.platform.local import LocalPlatform, keys, usage
from shared.platform.local.base_model import family
from shared.platform.local.loopback import free_port, port_free
from shared.platform.local.outbox import drain_events, emit_job_events
from shared.platform.local.processes import Proc, alive, spawn, stop
from shared.platform.local.router import WeightedRoundRobin
from shared.platform.local.store import Store
from shared.platform.local.training_plan import plan
from shared.platform.port import DataRef, FineTuneRequest, JobStatus, MLPlatform, PlatformConfigError
from shared.run_events import RUN_COMPLETED, RUN_STATUS_CHANGED, ignore_reason, parse
from tests.paths import EVENTS, REPO

HEAVY = ("torch", "transformers", "trl", "peft", "mlflow", "fastapi", "uvicorn", "httpx", "azure.ai.ml")


def test_importing_the_adapter_stays_light() -> None:
    """Functions handlers import the adapter: none of the ML or server stacks may come with it."""
    code = f"import sys, shared.platform.local; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_local_platform_is_an_ml_platform(tmp_path: Path) -> None:
    assert isinstance(LocalPlatform(Settings(data_dir=tmp_path)), MLPlatform)


def test_plan_reads_the_walkthrough_with_the_components_defaults() -> None:
    planned = plan({**WALKTHROUGH_DEFAULTS, "max_seq_length": 512, "precision": "16"})
    assert planned.sft["num_train_epochs"] == 3
    assert planned.sft["learning_rate"] == 5e-6
    assert planned.sft["lr_scheduler_type"] == "cosine"
    assert planned.sft["logging_steps"] == 10  # the component's default, not Hugging Face's 500
    assert planned.lora == {"r": 8, "lora_alpha": 128, "lora_dropout": 0.0}  # the component's, not peft's
    assert planned.max_seq_length == 512
    assert planned.ignored == ["apply_deepspeed", "deepspeed_stage", "precision"]
    assert plan({"apply_lora": "false"}).lora is None
    assert plan({}).max_seq_length is None  # -1: the model's own maximum


def test_plan_rejects_what_azure_would_reject() -> None:
    with pytest.raises(PlatformConfigError) as caught:
        plan({"apply_lora": "yes", "num_train_epochs": "three", "lr_scheduler_type": "cosin"})
    message = str(caught.value)
    assert "apply_lora='yes'" in message and "num_train_epochs='three'" in message and "'cosine'" in message


def test_submit_rejects_bad_parameters_before_queueing(tmp_path: Path) -> None:
    platform = LocalPlatform(Settings(data_dir=tmp_path, finetune_parameters={"lora_r": "eight"}))
    request = FineTuneRequest("ftpilot-x", "llama", DataRef("c", "t"), DataRef("c", "v"), "data")
    with pytest.raises(PlatformConfigError, match="lora_r"):
        platform.submit_finetune(request)
    assert platform.get_job("ftpilot-x") is None


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("Phi-3-mini-4k-instruct", "phi3"),
        ("Mistral-7B-Instruct", "mistral"),
        ("Qwen2.5-7B", "qwen2"),
        ("gpt-x", "llama"),
    ],
)
def test_family_of_a_registry_model(requested: str, expected: str) -> None:
    assert family(requested) == expected


def test_events_are_azures_run_events_in_an_outbox(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, subscription_id="sub", resource_group="rg", workspace_name="ws")
    tags = {"ftpilot-run": "r1"}
    emit_job_events(settings, job_name="ftpilot-r1", status=JobStatus.RUNNING, tags=tags, properties={})
    emit_job_events(settings, job_name="ftpilot-r1", status=JobStatus.COMPLETED, tags=tags, properties={})

    deliveries = list(drain_events(tmp_path))
    assert [d.events[0]["eventType"] for d in deliveries] == [RUN_STATUS_CHANGED, RUN_STATUS_CHANGED, RUN_COMPLETED]
    (sample,) = json.loads((EVENTS / "eventgrid.RunCompleted.json").read_text())
    for delivery in deliveries:
        (event,) = delivery.events
        assert set(event) == set(sample)
        assert set(event["data"]) == {*sample["data"], "runStatus"}
        assert (
            event["topic"]
            == "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
        )
        assert event["subject"] == f"experiments/{event['data']['experimentId']}/runs/ftpilot-r1"
        parsed = parse(event)
        assert ignore_reason(parsed, settings.topic) == ""
        assert (parsed.run_id, parsed.tags, parsed.run_type) == ("ftpilot-r1", tags, "azureml.PipelineRun")
    assert [parse(d.events[0]).status for d in deliveries] == ["Running", "Completed", "Completed"]

    deliveries[0].ack()
    assert len(list(drain_events(tmp_path))) == 2  # only acknowledged deliveries go


def test_request_counts_by_minute(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    with store.write() as db:
        for at in (600.0, 610.0, 659.0, 660.0, 900.0):  # minutes 10, 10, 10, 11, 15
            usage.count_request(db, "ep", at=at)
        usage.count_request(db, "other", at=900.0)
    with store.read() as db:
        counts = usage.request_counts(db, "ep", 300, at=910.0)
        nobody = usage.request_counts(db, "nobody", 300, at=910.0)
    assert counts.per_minute == {10: 3, 11: 1, 15: 1}
    assert counts.within(30) == 1
    assert counts.within(250) == 2  # from 660: minutes 11 and 15
    assert counts.within(300) == 5  # from 610: the whole minute 10 counts
    assert nobody.within(300) == 0
    with pytest.raises(ValueError, match="cover 300"):
        counts.within(301)  # more than was read: never judged idler than it was


def test_weighted_round_robin_is_exact() -> None:
    balancer = WeightedRoundRobin()
    assert Counter(balancer.pick({"blue": 70, "green": 30}) for _ in range(10)) == {"blue": 7, "green": 3}
    assert {balancer.pick({"blue": 0, "green": 100}) for _ in range(5)} == {"green"}
    assert balancer.pick({"blue": 0}) is None


def test_keys_are_owner_only_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.create_key(folder, "ep-one")
    first = keys.read_key(folder, "ep-one")
    keys.create_key(folder, "ep-one")
    assert keys.read_key(folder, "ep-one") == first and len(first) >= 40
    assert stat.S_IMODE(keys.key_path(folder, "ep-one").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_processes_are_known_by_pid_and_start_time(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn(
        "http.server", [str(port), "--bind", "127.0.0.1"], tmp_path / "server.log", Settings(data_dir=tmp_path)
    )
    try:
        deadline = time.monotonic() + 10
        while port_free(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(proc) and not port_free(port)
        assert not alive(Proc(proc.pid, proc.started - 5))  # same pid, another process's start time
        assert not alive(Proc(os.getpid(), 0.0))
    finally:
        stop(proc)
    assert not alive(proc)
    assert port_free(port)
