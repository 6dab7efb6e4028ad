"""The README's first command: the whole product on one machine, start to finish.

Starts the local host (Azurite, local workspace), uploads a dataset, and lets the user
watch ftpilot validate it, fine-tune, register, deploy, smoke-test, compare with the live model
(the promotion gate: its verdict and report are printed), answer a chat request and finally
delete the idle endpoint. The demo shortens only the waits (poll interval,
idle window, sweep schedule); every step is the real one.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shared.config import Settings
from shared.host.calling import curl, openai_snippet
from shared.host.runner import LocalHost
from shared.platform.local.layout import Layout
from shared.rollout import SMOKE_PARAMETERS, scoring_request, test_prompt
from shared.runs import RunRecord, RunState
from shared.sample_data import jsonl
from shared.storage import error_message

DEMO_SETTINGS = {
    "FTPILOT_POLL_INTERVAL_S": "2",
    "FTPILOT_IDLE_WINDOW_S": "40",
    "FTPILOT_CLEANUP_GRACE_S": "0",
    "FTPILOT_CLEANUP_SCHEDULE": "*/5 * * * * *",
    # The stand-in base model starts from random weights: at the walkthrough's 5e-6 its 3 epochs
    # teach it nothing visible. At 2e-3 they do (~10 s); after one epoch, up to 12 of 30 sampled
    # answers were empty, which the smoke test rightly refuses.
    "FTPILOT_FINETUNE_PARAMETERS": '{"learning_rate": 0.002}',
}


class DemoFailed(Exception):
    pass


def demo_settings() -> Settings:
    """The user's settings, with the demo's short waits unless they set their own."""
    for key, value in DEMO_SETTINGS.items():
        os.environ.setdefault(key, value)
    return Settings()


def _wait_for(
    host: LocalHost, run_id: str, done: Callable[[RunRecord], bool], timeout_s: float, what: str
) -> RunRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = host.services.runs.get(run_id) if host.services else None
        if record is not None and done(record):
            return record
        if record is not None and record.state.failure:
            raise DemoFailed(f"run {run_id} ended {record.state}: {record.reason}")
        time.sleep(1)
    raise DemoFailed(f"{what} did not happen within {timeout_s:.0f} s")


def _ask(host: LocalHost, record: RunRecord, out: Callable[[str], None]) -> None:
    """Call the endpoint the way a client would: its scoring URI, its key, the scoring contract.

    The question is one the model was tested on (as in the smoke test): a model this small only
    knows the shape of its training data.
    """
    import httpx

    platform = host.services.platform
    endpoint = platform.get_endpoint(record.endpoint)
    conversation = test_prompt(record, host.services)
    # The smoke test's sampling: greedy decoding lets a model this small answer with its end token at once.
    parameters = {**SMOKE_PARAMETERS, "max_new_tokens": 60}
    body = scoring_request(conversation, parameters)
    response = httpx.post(
        endpoint.scoring_uri,
        json=body,
        headers={"Authorization": f"Bearer {platform.get_endpoint_key(record.endpoint)}"},
        timeout=60,
    )
    response.raise_for_status()
    out(f"\nYou:   {conversation[-1]['content']}\nModel: {response.json()['output']!r}")
    out("(a tiny random-weight model trained for seconds: expect the sample's words, not sense)\n")


def run_demo(dataset: Path | None, out: Callable[[str], None] = print, timeout_s: float = 900) -> RunRecord:
    """Run the whole flow once; return the final run record (raises DemoFailed with the reason)."""
    from azure.core.exceptions import AzureError

    settings = demo_settings()
    host = LocalHost(settings, out)
    try:
        return _run(host, settings, dataset, out, timeout_s)
    except AzureError as error:  # what the demo's storage answered: no traceback, a way on
        raise DemoFailed(
            f"storage answered: {error_message(error)}. If an Azurite was already running on the storage "
            "ports (10000-10002 for the local emulator), the demo used it: stop it and run the demo again"
        ) from error


def _run(
    host: LocalHost, settings: Settings, dataset: Path | None, out: Callable[[str], None], timeout_s: float
) -> RunRecord:
    """The flow itself, on a host not yet started."""
    services = host.start()
    worker = threading.Thread(target=host.run, kwargs={"interval_s": 0.5}, daemon=True)
    worker.start()
    try:
        content = dataset.read_bytes() if dataset else jsonl(160, seed=time.time_ns() % 100_000)
        name = f"{settings.intake_prefix}{dataset.name if dataset else 'sample-chat.jsonl'}"
        services.storage.blob(name).upload_blob(content, overwrite=True)
        out(f"Uploaded {len(content):,} bytes to {settings.intake_container}/{name}\n")

        from shared.naming import run_id_for

        run_id = run_id_for(hashlib.sha256(content).hexdigest())  # what intake's validation hashes
        live = _wait_for(host, run_id, lambda r: r.state is RunState.LIVE, timeout_s, "going live")
        _ask(host, live, out)
        out(f"Waiting for the idle sweep ({settings.idle_window_s} s without requests)...")
        final = _wait_for(
            host, run_id, lambda r: r.state is RunState.RETIRED, settings.idle_window_s + 120, "the idle sweep"
        )
        time.sleep(1)  # let the printer show the last step
        return final
    finally:
        host.stop()
        worker.join(timeout=10)


def next_steps(settings: Settings) -> str:
    layout = Layout(Path(settings.data_dir))
    intake = f"{settings.intake_container}/{settings.intake_prefix}"
    return f"""
Where to look next:
  .venv/bin/ftpilot status                    every run: state, job, model, endpoint, reason
  .venv/bin/mlflow ui --backend-store-uri sqlite:///{layout.mlflow_db}
                                              training/eval loss by step, registered models
  .venv/bin/ftpilot up                        keep the local host running; drop .jsonl files
                                              into {intake} (Azurite) to fine-tune
  .venv/bin/ftpilot validate FILE --show 3    check a dataset before uploading it

Calling a live endpoint (while `up` runs; `up` prints these, filled in, when a run goes live; the
key is in {layout.keys}/<endpoint>.key), as a managed online endpoint on Azure is called:
  {curl("<endpoint URL>/score", f"{layout.keys}/<endpoint>.key")}
and through its OpenAI-compatible surface (the same URL, /v1 in place of /score):
  {openai_snippet("<endpoint URL>/score", f"{layout.keys}/<endpoint>.key")}
"""
