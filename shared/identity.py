"""The one Entra credential ftpilot's clients share (storage, Event Grid, Azure ML, Azure Monitor).

``DefaultAzureCredential`` is the app's managed identity in Azure (a user-assigned one when
``AZURE_CLIENT_ID`` or a client id is given) and a developer's login elsewhere. One instance per
identity, so every client reuses its token cache instead of fetching tokens of its own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


@lru_cache(maxsize=4)
def credential(client_id: str | None = None) -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()
