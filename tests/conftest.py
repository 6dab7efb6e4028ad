"""Shared test fixtures: one real Azurite per session, fresh storage names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared import azurite as azurite_mod
from shared.config import Settings
from shared.services import Services, use_services
from shared.storage import Storage
from tests.paths import FIXTURES


def pytest_configure(config: pytest.Config) -> None:
    """Stop at once, in one line, when the read-only fixtures the suite reads are not where it looks."""
    if not FIXTURES.is_dir():
        raise pytest.UsageError(
            f"the read-only test fixtures are not at {FIXTURES}: clone ftpilot beside ../shared, "
            "or set FTPILOT_FIXTURES to the folder that holds them"
        )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[azurite_mod.Azurite]:
    """Azurite from npm over its real protocol, on free loopback ports, stopped at the end."""
    server = azurite_mod.start(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop(grace_s=0.5)  # its data is thrown away


@pytest.fixture
def settings(azurite: azurite_mod.Azurite, tmp_path) -> Settings:
    """Settings pointing at Azurite, with a container, table and queue of this test's own."""
    suffix = uuid.uuid4().hex[:10]
    return Settings(
        storage=azurite.connection_string,
        intake_container=f"datasets-{suffix}",
        runs_table=f"runs{suffix}",
        rollout_queue=f"rollout-{suffix}",
        events_queue=f"events-{suffix}",
        data_dir=tmp_path / "ftpilot",
        min_examples_warning=10,
        poll_interval_s=0,
        retry_base_s=0,
        idle_notice_s=0,  # one sweep deletes an idle endpoint; tests/test_idle_notice.py covers the notice
    )


@pytest.fixture
def clock() -> Iterator[list[datetime]]:
    """A settable clock the code reads through ``use_clock``: ``clock[0] += timedelta(...)`` moves time on."""
    from shared.runs import use_clock

    now = [datetime.now(UTC)]
    use_clock(lambda: now[0])
    yield now
    use_clock(None)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    store = Storage(settings)
    store.ensure()
    return store


@pytest.fixture
def fake_platform():
    from tests.fakes.platform import FakePlatform

    return FakePlatform()


@pytest.fixture
def services(settings: Settings, storage: Storage, fake_platform) -> Iterator[Services]:
    """Services as the functions see them, with the fake ML platform installed process-wide."""
    built = Services(settings, storage, fake_platform)
    use_services(built)
    yield built
    use_services(None)


@pytest.fixture(scope="session")
def app_functions() -> dict:
    """The functions the Python worker indexes, by name.

    ``get_functions()`` may run once per app (the worker calls it once; a second call
    re-registers the blueprints and fails on duplicate names), so the session shares it.
    """
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


@pytest.fixture
def cli_env(settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``shared.cli`` in this process sees the test's storage and nothing from the developer's shell or checkout."""
    from shared.config import get_settings
    from tests.cli_process import settings_env

    for key in [k for k in os.environ if k.startswith("FTPILOT_")]:
        monkeypatch.delenv(key)
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no local.settings.json
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()
