"""`python -m shared.cli validate`, run as a real subprocess: exit codes, output, settings."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.validation.validator import PARALLEL_FROM_BYTES
from tests.cli_process import cli_environment
from tests.cli_process import run_cli as run
from tests.test_validation import BASE, row, rows_with, write


def assert_usage_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert result.stderr.startswith("ftpilot: error: ")
    assert needle in result.stderr


def test_a_valid_file_exits_0_with_a_summary(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({}))
    result = run(tmp_path, "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"## `{path}`: valid")
    assert f"{BASE} examples" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_the_ftpilot_command_is_the_same_cli(tmp_path: Path) -> None:
    """``pip install -e .`` gives ``ftpilot``; it runs the same code as ``python -m shared.cli``."""
    path = write(tmp_path, rows_with({}))
    installed = run(tmp_path, "validate", str(path), "--json", console=True)
    module = run(tmp_path, "validate", str(path), "--json")
    assert installed.returncode == module.returncode == 0, installed.stderr
    assert json.loads(installed.stdout) == json.loads(module.stdout)
    assert run(tmp_path, "--help", console=True).stdout.startswith("usage: ftpilot")


def test_an_invalid_file_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({3: b"{broken"}))
    result = run(tmp_path, "validate", str(path))
    assert result.returncode == 1
    assert "**INVALID**" in result.stdout
    assert "line 3 `json.invalid`" in result.stdout


def test_json_output(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({5: row(5, messages=[{"role": "user", "content": "hi"}])}))
    result = run(tmp_path, "validate", str(path), "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert document["errors"] == [
        {"line": 5, "code": "conversation.no_assistant", "message": document["errors"][0]["message"]}
    ]
    assert document["counts"] == {"conversation.no_assistant": 1}
    assert document["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert document["bytes"] == path.stat().st_size
    assert (document["lines"], document["source"]) == (BASE, str(path))
    assert document["stats"]["tokens"]["counted"] == BASE
    assert document["warnings"] == document["notes"] == []


def test_show_prints_the_first_valid_examples(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({1: row(1, messages=[{"role": "user", "content": "hi"}])}))
    result = run(tmp_path, "validate", str(path), "--show", "2")
    assert "--- line 2 ---" in result.stdout
    assert "--- line 3 ---" in result.stdout
    assert "--- line 1 ---" not in result.stdout
    assert "[assistant]\n    Answer 0 of conversation 2" in result.stdout


def test_settings_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({}))
    assert "tokens.too_long" not in run(tmp_path, "validate", str(path)).stdout
    assert "tokens.too_long" in run(tmp_path, "validate", str(path), FTPILOT_MAX_SEQ_LENGTH="20").stdout
    assert "tokens.too_long" in run(tmp_path, "validate", str(path), "--max-seq-length", "20").stdout
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"FTPILOT_MIN_EXAMPLES_WARNING": "100"}}))
    assert "dataset.few_examples" in run(tmp_path, "validate", str(path)).stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["validate", "missing.jsonl"], "missing.jsonl: no such file"),
        (["validate", "."], ".: not a file"),
        (["validate"], "the following arguments are required: path"),
        (["validate", "data.jsonl", "--show", "-1"], "must be 0 or more"),
        (["validate", "data.jsonl", "--max-seq-length", "many"], "invalid _positive value"),
        (["validate", "data.jsonl", "--tokenizer", "nowhere"], "tokenizer not found"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    write(tmp_path, rows_with({}))
    assert_usage_error(run(tmp_path, *args), needle)


@pytest.mark.parametrize("big", [False, True], ids=["one core", "many cores"])
def test_bad_settings_exit_2(tmp_path: Path, big: bool) -> None:
    """On a big file the settings are read once the workers run and hashing has begun: the same one line."""
    path = write(tmp_path, rows_with({}))
    if big:
        with path.open("ab") as file:
            file.write(b"\n" * PARALLEL_FROM_BYTES)
    result = run(tmp_path, "validate", str(path), FTPILOT_MAX_SEQ_LENGTH="lots")
    assert_usage_error(result, "bad settings: FTPILOT_MAX_SEQ_LENGTH")


# The CLI on a small file, on every core, with the hashing and every range slowed down so that
# Ctrl-C lands while all the processes run; the marker says a worker has its first range.
_SLOW_PARALLEL_RUN = """
import signal, sys, time
from pathlib import Path
from shared.validation import parallel, validator

# Ctrl-C as a terminal's foreground command gets it: a test run in the background (nohup, `make test &`)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

validator.PARALLEL_FROM_BYTES = 1
parallel.HEAD_BYTES = parallel.BLOCK_BYTES = 1_000  # ranges for the workers, not just the head
marker = Path(sys.argv[2])
real_scan, real_hash = parallel._scan_range, parallel._hash_range

def slow_scan(task):
    marker.touch()
    time.sleep(60)
    return real_scan(task)

def slow_hash(path, size):
    time.sleep(60)
    return real_hash(path, size)

parallel._scan_range, parallel._hash_range = slow_scan, slow_hash
from shared.cli import main
sys.exit(main(["validate", sys.argv[1]]))
"""


def test_ctrl_c_during_a_parallel_validation_is_one_line(tmp_path: Path) -> None:
    """The terminal sends SIGINT to every process of the group: only the calling one may answer it."""
    path = write(tmp_path, rows_with({}))
    marker = tmp_path / "scanning"
    with subprocess.Popen(
        [sys.executable, "-c", _SLOW_PARALLEL_RUN, str(path), str(marker)],
        cwd=tmp_path,
        env=cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    ) as process:
        try:
            deadline = time.monotonic() + 30
            while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert marker.exists(), process.communicate()[1]
            os.killpg(process.pid, signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:  # a failure here must not hang the suite on the workers' sleeps
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert err == "ftpilot: interrupted\n"  # no worker's traceback beside it
    assert out == ""


def test_the_command_exits_with_the_code_of_main_without_the_last_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ftpilot`` and ``python -m shared.cli`` run :func:`cli.run`: main's exit code, no last cycle collection."""
    from shared import cli

    frozen: list[bool] = []
    monkeypatch.setattr(cli, "main", lambda: cli.EXIT_NO)
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == cli.EXIT_NO
    assert frozen == [True]
