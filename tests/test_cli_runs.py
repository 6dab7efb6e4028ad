"""`status` and `cleanup --dry-run` from the command line, over Azurite, as a user runs them."""

from __future__ import annotations

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import cli
from shared.azurite import ACCOUNT, KEY
from shared.config import Settings
from shared.host.demo import DEMO_SETTINGS
from shared.runs import RunState
from shared.services import Services
from shared.storage import Storage
from tests.test_cleanup import MANAGED, ago, run


@pytest.fixture
def env(cli_env: Settings, services: Services, monkeypatch: pytest.MonkeyPatch, fake_platform) -> Services:
    """The CLI over the test's storage, with the fake where Azure ML would be."""
    monkeypatch.setattr("shared.services.build_platform", lambda _: fake_platform)
    return services


def test_status_lists_every_run_with_the_reason_for_a_failure(env: Services, capsys) -> None:
    run(env, "r-live", "ft-live", RunState.LIVE)
    env.runs.update("r-live", lambda r: r.moved(RunState.LIVE, metrics={"train_loss": 1.5, "eval_loss": 1.7}))
    run(env, "r-bad", "", RunState.INVALID)
    env.runs.update("r-bad", lambda r: r.moved(RunState.INVALID, reason="line 3: messages is missing"))

    assert cli.main(["status", "--json"]) == cli.EXIT_OK
    rows = {row["run_id"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"r-live", "r-bad"}
    assert (rows["r-live"]["state"], rows["r-live"]["endpoint"], rows["r-live"]["reason"]) == ("live", "ft-live", "")
    assert rows["r-live"]["metrics"] == {"train_loss": 1.5, "eval_loss": 1.7}
    assert (rows["r-bad"]["state"], rows["r-bad"]["reason"]) == ("invalid", "line 3: messages is missing")

    assert cli.main(["status"]) == cli.EXIT_OK
    table = capsys.readouterr().out
    assert "r-live"[:8] in table
    assert "messages is missing" in table


def test_status_without_runs_says_how_to_start(env: Services, capsys) -> None:
    assert cli.main(["status"]) == cli.EXIT_OK
    assert "No runs yet" in capsys.readouterr().out


def test_cleanup_dry_run_reports_and_touches_nothing(env: Services, fake_platform, capsys) -> None:
    fake_platform.add_endpoint("ft-idle", tags=MANAGED, created_at=ago(48))
    fake_platform.add_endpoint("ft-busy", tags=MANAGED, created_at=ago(48), requests=3)
    fake_platform.add_endpoint("team-prod", tags={"owner": "team"}, created_at=ago(500))
    run(env, "r-idle", "ft-idle", RunState.LIVE)
    before = env.runs.get("r-idle")

    assert cli.main(["cleanup", "--dry-run", "--json"]) == cli.EXIT_OK
    decisions = {d["endpoint"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(decisions) == {"ft-idle", "ft-busy"}  # the unmanaged one is not even considered
    assert decisions["ft-idle"]["action"] == "would_delete"
    assert decisions["ft-idle"]["run_id"] == "r-idle"
    assert decisions["ft-busy"]["action"] == "kept"
    assert set(fake_platform.endpoints) == {"ft-idle", "ft-busy", "team-prod"}
    assert env.runs.get("r-idle") == before  # a dry run records nothing

    assert cli.main(["cleanup", "--dry-run"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "dry run: nothing deleted" in out
    assert "would_delete" in out


def test_cleanup_without_dry_run_is_one_real_tick(env: Services, fake_platform, capsys) -> None:
    fake_platform.add_endpoint("ft-idle", tags=MANAGED, created_at=ago(48))
    run(env, "r-idle", "ft-idle", RunState.LIVE)
    assert cli.main(["cleanup", "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["action"] == "deleted"
    assert "ft-idle" in fake_platform.deleting()
    assert env.runs.get("r-idle").state is RunState.RETIRED
    assert cli.main(["status", "--json"]) == cli.EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)
    assert row["state"] == "retired" and row["reason"].startswith("endpoint ft-idle deleted: no requests in the last")


def test_bad_settings_exit_2_naming_the_setting(env: Services, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("FTPILOT_TEST_FRACTION", "2")
    assert cli.main(["status"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "FTPILOT_TEST_FRACTION" in err
    assert "Traceback" not in err


class _Failing(BaseHTTPRequestHandler):
    """Storage that answers every request with a 500, as a broken emulator on the storage ports did."""

    def _fail(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _fail

    def log_message(self, *args) -> None:
        pass


def test_a_demo_whose_storage_fails_says_so_without_a_traceback(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{ACCOUNT}"
    monkeypatch.setenv(
        "FTPILOT_STORAGE",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={url};QueueEndpoint={url};TableEndpoint={url};",
    )
    # The demo sets its short waits in the environment and quiets loggers, process-wide: not for the next tests.
    for key, value in DEMO_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "_quiet_logs", lambda: None)
    # The SDK's retries would only make the same answer slower.
    monkeypatch.setattr("shared.host.runner.Storage", functools.partial(Storage, retry_total=0))
    try:
        assert cli.main(["demo", "--timeout", "5"]) == cli.EXIT_NO
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "The demo stopped: storage answered:" in err and "stop it and run the demo again" in err
    assert "Traceback" not in err
