"""Building the Azure clients, as the walkthrough does, only when first needed.

``import azure.ai.ml`` takes seconds, and the registry client resolves its registry over the network
when constructed, so nothing here runs at import time: the adapter calls these on first use. One
``DefaultAzureCredential`` (the Function App's managed identity in Azure, a developer's login
elsewhere) serves every client, so one RBAC assignment covers jobs, endpoints and metrics alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.config import Settings
from shared.platform.port import PlatformConfigError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential
    from azure.mgmt.monitor import MonitorManagementClient

# Settings the workspace client cannot do without, with the app setting that fills each.
_WORKSPACE_SETTINGS = (
    ("subscription_id", "FTPILOT_SUBSCRIPTION_ID"),
    ("resource_group", "FTPILOT_RESOURCE_GROUP"),
    ("workspace_name", "FTPILOT_WORKSPACE_NAME"),
)


def quiet_pollers() -> None:
    """Stop azure-ai-ml's pollers printing a '.' to stdout on every status check.

    ``AzureMLPolling.update_status`` does, from the poller's own thread, long after the call
    that started the operation returned: into the JSON that ``cleanup --json`` prints, and into
    the Function App's output. The polling itself is the base class's and stays as it is.
    """
    from azure.ai.ml._utils._azureml_polling import AzureMLPolling
    from azure.mgmt.core.polling.arm_polling import ARMPolling

    AzureMLPolling.update_status = ARMPolling.update_status  # type: ignore[method-assign]


def default_credential() -> TokenCredential:
    """Managed identity in Azure; environment, CLI or developer login elsewhere."""
    from shared.identity import credential

    return credential()


def check_workspace_settings(settings: Settings) -> None:
    """Fail before any client is built, naming every workspace setting that is missing."""
    missing = [setting for field, setting in _WORKSPACE_SETTINGS if not getattr(settings, field)]
    if missing:
        raise PlatformConfigError(f"FTPILOT_PLATFORM=azureml needs the Azure ML workspace: set {', '.join(missing)}")


def workspace_client(settings: Settings, credential: TokenCredential) -> MLClient:
    """The workspace that runs ftpilot's jobs and endpoints."""
    check_workspace_settings(settings)
    from azure.ai.ml import MLClient

    return MLClient(credential, settings.subscription_id, settings.resource_group, settings.workspace_name)


def registry_client(settings: Settings, credential: TokenCredential) -> MLClient:
    """The registry holding the foundation model and the fine-tuning pipeline (``azureml``)."""
    from azure.ai.ml import MLClient

    return MLClient(credential, registry_name=settings.registry_name)


def monitor_client(credential: TokenCredential, subscription_id: str) -> MonitorManagementClient:
    """Azure Monitor's ARM client, for endpoint request counts."""
    from azure.mgmt.monitor import MonitorManagementClient

    return MonitorManagementClient(credential, subscription_id)
