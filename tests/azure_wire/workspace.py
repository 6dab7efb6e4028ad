"""One emulated workspace with the real clients wired to it: what a wire test starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.config import Settings
from tests.azure_wire.emulator import BASE_MODEL, CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, WorkspaceEmulator
from tests.azure_wire.scoring import DataPlane
from tests.azure_wire.transport import JwtCredential, WireRecorder

# Retries as the SDKs do them, with the waits shortened so a test that exhausts them stays quick.
FAST_RETRIES = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


def wire_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "platform": "azureml",
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "workspace_name": WORKSPACE,
        "intake_container": "datasets",
        "datastore": "ftpilot_datasets",
        "compute_cluster": CLUSTER,
        "base_model": BASE_MODEL,
        "experiment_name": "ftpilot-chat-completion",
        "inference_instance_type": "Standard_NC24ads_A100_v4",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Wire:
    """The emulator, the loopback data plane, the recorder and the adapter built on real clients."""

    emulator: WorkspaceEmulator
    data_plane: DataPlane
    recorder: WireRecorder
    credential: JwtCredential
    settings: Settings
    clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, **settings: Any) -> Wire:
        data_plane = DataPlane()
        emulator = WorkspaceEmulator(scoring_base=data_plane.base)
        data_plane.serve(emulator)
        return cls(emulator, data_plane, WireRecorder(emulator), JwtCredential(), wire_settings(**settings))

    def platform(self, settings: Settings | None = None, retries: dict[str, Any] | None = None) -> Any:
        """``AzureMLPlatform`` whose clients are the real SDK clients over this wire (``retries``: policy kwargs)."""
        from azure.ai.ml import MLClient
        from azure.mgmt.monitor import MonitorManagementClient

        from shared.platform.azureml import AzureMLPlatform

        transport = self.recorder.transport()
        policy = {**FAST_RETRIES, **(retries or {})}
        workspace = MLClient(self.credential, SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, transport=transport, **policy)
        registry = MLClient(self.credential, registry_name="azureml", transport=transport, **policy)
        monitor = MonitorManagementClient(self.credential, SUBSCRIPTION, transport=transport, **policy)
        return AzureMLPlatform(
            settings or self.settings,
            ml_client=workspace,
            registry_client=registry,
            credential=self.credential,
            monitor_client=monitor,
        )

    def close(self) -> None:
        self.data_plane.close()
