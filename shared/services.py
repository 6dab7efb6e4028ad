"""The composition root: settings, storage, run records and the ML platform, built once.

Function bodies call ``get_services()``; the local host and the tests install their own
with ``use_services()`` (e.g. a local workspace, or a fake platform where Azure ML cannot
exist), so the same entry points run everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from shared.config import Settings, get_settings
from shared.leases import Leases
from shared.platform.port import MLPlatform
from shared.runs import RunStore
from shared.sinks import Sink, configured
from shared.storage import Storage


def build_platform(settings: Settings) -> MLPlatform:
    """The adapter named by ``FTPILOT_PLATFORM``, imported only when chosen (Azure ML's SDK is slow to import)."""
    if settings.platform == "azureml":
        from shared.platform.azureml import AzureMLPlatform

        return AzureMLPlatform(settings)
    from shared.platform.local import LocalPlatform

    return LocalPlatform(settings)


@dataclass
class Services:
    settings: Settings
    storage: Storage
    _platform: MLPlatform | None = None

    @cached_property
    def sinks(self) -> list[Sink]:
        """Where lifecycle events go (``shared.sinks``); none configured, none are made."""
        return configured(self.settings)

    @cached_property
    def runs(self) -> RunStore:
        if not self.sinks:
            return RunStore(self.storage.table)
        from shared.lifecycle import Lifecycle
        from shared.publish import nudge

        return RunStore(self.storage.table, announcer=Lifecycle(lambda run_id: nudge(self, run_id)))

    @cached_property
    def leases(self) -> Leases:
        return Leases(self.storage.table)

    @property
    def platform(self) -> MLPlatform:
        if self._platform is None:
            self._platform = build_platform(self.settings)
        return self._platform

    @classmethod
    def create(cls, settings: Settings, platform: MLPlatform | None = None) -> Services:
        return cls(settings, Storage(settings), platform)


_current: Services | None = None


def get_services() -> Services:
    global _current  # noqa: PLW0603 - one per process, like the host's own bindings
    if _current is None:
        from shared.logs import telemetry

        telemetry()  # on the first invocation, not at import: it costs more than the whole cold start
        _current = Services.create(get_settings())
    return _current


def use_services(services: Services | None) -> None:
    """Install ``services`` for this process (None resets to the settings-built default)."""
    global _current  # noqa: PLW0603
    _current = services
