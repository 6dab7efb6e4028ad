"""What the local host prints as runs move: new steps only, headline metrics, the endpoint, the reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from shared.host.runner import RunPrinter, storage_ports
from shared.runs import RunRecord, RunState


def record() -> RunRecord:
    return RunRecord(run_id="0123456789abcdef0123", dataset="incoming/chat.jsonl", sha256="s").moved(RunState.RECEIVED)


def test_only_new_steps_are_printed_with_metrics_endpoint_and_reason() -> None:
    printed: list[str] = []
    printer = RunPrinter(printed.append)
    earlier = record().moved(RunState.SUBMITTED, "job ftpilot-0123")
    printer.skip([earlier])
    printer.update([earlier], lambda _: None)
    assert printed == []  # a restarted host does not replay what was already shown

    metrics = {"train_loss": 1.25, "eval_loss": 1.5, "grad_norm": 3.0, "epoch": 1.0}
    done = earlier.moved(RunState.SUCCEEDED, "job completed", metrics=metrics)
    uri = "http://127.0.0.1:5000/score"
    live = replace(done.moved(RunState.LIVE, "live on ft-chat", scoring_uri=uri), endpoint="ft-chat")
    printer.update([live], lambda name: Path(f"/data/keys/{name}.key"))
    lines = [line.split("] ", 1)[-1].strip() for line in printed]
    assert lines[:4] == [
        "run 01234567 incoming/chat.jsonl: succeeded - job completed",
        "metrics: train_loss=1.25, eval_loss=1.5, epoch=1",
        "run 01234567 incoming/chat.jsonl: live - live on ft-chat",
        f"endpoint ft-chat: {uri}",
    ]
    curl, python = lines[4:]
    assert curl.startswith(f"curl:   curl -sS --fail-with-body {uri} ") and "$(cat /data/keys/ft-chat.key)" in curl
    assert python.startswith("openai: python -c ") and "http://127.0.0.1:5000/v1" in python

    printed.clear()
    failed = live.moved(RunState.ROLLED_BACK, reason="smoke test failed: empty output")
    printer.update([failed], lambda _: None)
    assert printed[-1].strip() == "reason: smoke test failed: empty output"


def test_storage_ports_say_when_azurite_is_meant() -> None:
    assert storage_ports("UseDevelopmentStorage=true") == (10000, 10001, 10002)
    local = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;"
        "BlobEndpoint=http://127.0.0.1:1;QueueEndpoint=http://127.0.0.1:2;TableEndpoint=http://localhost:3;"
    )
    assert storage_ports(local) == (1, 2, 3)
    assert (
        storage_ports("DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=k;EndpointSuffix=core.windows.net")
        is None
    )


def test_the_gates_verdict_and_evidence_are_printed() -> None:
    printed: list[str] = []
    printer = RunPrinter(printed.append)
    gating = record().moved(RunState.GATING, "smoke test passed; comparing with the live model")
    printer.skip([gating])
    promotion = {"decision": "not_promoted", "report": "reports/chat.jsonl.promotion.json"}
    ended = gating.moved(RunState.ROLLING_BACK, reason="not promoted: ROUGE-L F 0.1 is 0.3 below", promotion=promotion)
    ended = ended.moved(RunState.NOT_PROMOTED, reason=ended.reason)
    printer.update([ended], lambda _: None)
    lines = [line.split("] ", 1)[-1].strip() for line in printed]
    assert lines == [
        "run 01234567 incoming/chat.jsonl: rolling_back",
        "reason: not promoted: ROUGE-L F 0.1 is 0.3 below",
        "run 01234567 incoming/chat.jsonl: not_promoted",
        "reason: not promoted: ROUGE-L F 0.1 is 0.3 below",
        "promotion gate: not_promoted; evidence in reports/chat.jsonl.promotion.md",
    ]
